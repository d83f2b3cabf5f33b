"""What one session may still do through the proxy: connections and bytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sandbox.egress.destinations import Refusal
from sandbox.policy.network import Network

# Name lookups one session may have in flight; the proxy's resolver has RESOLVER_THREADS.
# A lookup holds its slot until its thread returns, past its deadline too.
LOOKUPS_AT_ONCE = 2
RESOLVER_THREADS = 32
# Lookups past their deadline (their threads still blocked) the whole proxy tolerates
# before it refuses new ones: the other threads stay for names that do answer.
LOOKUPS_STUCK_MAX = RESOLVER_THREADS // 2


@dataclass
class SessionBudget:
    """One session's use of the proxy, over its whole life (all its workers)."""

    tenant: str
    session: str
    opened: int = 0
    open_now: int = 0
    bytes_moved: int = 0
    lookups: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(LOOKUPS_AT_ONCE), repr=False
    )
    lookups_stuck: int = 0  # of those, past their deadline

    def admit(self, limits: Network) -> Refusal | None:
        """Count a new connection in, or say which budget refuses it."""
        if self.opened >= limits.max_connections:
            return Refusal(
                "network.max_connections",
                f"this session has opened its {limits.max_connections} connections",
            )
        if self.open_now >= limits.max_open_connections:
            return Refusal(
                "network.max_open_connections",
                f"this session holds {limits.max_open_connections} open connections",
            )
        if self.bytes_moved >= limits.max_mb * 1024 * 1024:
            return Refusal("network.max_mb", f"this session has moved its {limits.max_mb} MiB")
        self.opened += 1
        self.open_now += 1
        return None

    def release(self) -> None:
        self.open_now -= 1

    def bytes_left(self, limits: Network) -> int:
        return max(0, limits.max_mb * 1024 * 1024 - self.bytes_moved)
