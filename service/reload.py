"""Reload the policy: validate first, then serve new sessions from a fresh zygote.

Running sessions keep the policy they started with (and the zygote that restarts
their workers); a broken file changes nothing and the reason is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sandbox import Policy, PolicyError, ZygoteClient, load_policy, workspaces
from sandbox.errors import SandboxError
from service.registry import SessionRegistry

log = logging.getLogger("codesherpa.reload")


@dataclass(frozen=True)
class ReloadResult:
    applied: bool
    policy: str  # the digest now serving new sessions
    message: str


class PolicyReloader:
    def __init__(
        self,
        registry: SessionRegistry,
        policy_path: str,
        state_dir: str,
        on_applied: Callable[[Policy], None] | None = None,
    ) -> None:
        self._registry = registry
        self._policy_path = policy_path
        self._state_dir = state_dir
        self._on_applied = on_applied
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadResult:
        async with self._lock:
            current = self._registry.zygote.policy
            try:
                policy = load_policy(self._policy_path)
            except PolicyError as exc:
                log.error("policy reload refused, keeping %s:\n%s", current.digest(), exc)
                return ReloadResult(False, current.digest(), str(exc))
            current_ports = self._registry.zygote.service_ports
            if policy == current:
                return ReloadResult(False, current.digest(), "the policy did not change")
            zygote = ZygoteClient(policy, self._state_dir, current_ports)
            try:
                # Not a fresh start: the running sessions' workspaces and cgroups stay.
                await asyncio.to_thread(zygote.start, False)
                # The same check as at startup: a worker must start and hold every
                # layer the new policy requires.
                probe = await zygote.spawn()
                await probe.cleanup()
                workspaces.remove(probe.workspace)
            except SandboxError as exc:
                await asyncio.to_thread(zygote.stop)
                log.error("policy reload refused, keeping %s: %s", current.digest(), exc)
                return ReloadResult(False, current.digest(), f"the new policy cannot start: {exc}")
            await self._registry.replace_zygote(zygote)
            if self._on_applied is not None:
                self._on_applied(policy)
            log.info(
                "policy %s now serves new sessions (was %s)", policy.digest(), current.digest()
            )
            return ReloadResult(True, policy.digest(), "new sessions get the new policy")
