"""Per-tenant fairness: a request rate, and a cap on runs at once."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from service.errors import QuotaExceeded, RateLimited

# How often the request that finds it due drops the limiter's expired entries.
EXPIRY_INTERVAL_S = 1.0


class RequestDrivenMemoryStorage(MemoryStorage):
    """limits' MemoryStorage, whose expired entries the requests drop, not a timer thread.

    MemoryStorage starts a ``threading.Timer`` 10 ms after any hit that finds none
    running, so up to 100 threads a second while requests flow, each started with the
    event loop waiting for it and then contending for the GIL: a measurable share of a
    trivial /repl's CPU and latency (docs/decisions.md).

    The moving window never needs the expiry to be right: a hit compares the entry
    ``limit`` places back with the window.  Expiry only bounds memory, so here it
    runs at most once per EXPIRY_INTERVAL_S, inside a hit.  The hook is a private
    method of MemoryStorage: tests/unit/service/test_quotas.py fails if a version of
    `limits` renames it.
    """

    def __init__(self) -> None:
        self._next_expiry = 0.0
        super().__init__()
        # The constructor's one timer has started; later hits start none.
        self.timer.cancel()

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_INTERVAL_S
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class TenantQuotas:
    def __init__(self, rate: str, runs_at_once: int) -> None:
        self._rate = parse(rate)
        self._limiter = MovingWindowRateLimiter(RequestDrivenMemoryStorage())
        self._runs_at_once = runs_at_once
        self._running: Counter[str] = Counter()

    def admit_request(self, tenant: str) -> None:
        if self._limiter.hit(self._rate, tenant):
            return
        reset_at = self._limiter.get_window_stats(self._rate, tenant).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(
            f"rate limit of {self._rate} requests reached for this tenant",
            f"Wait {retry_after} s before the next request.",
            retry_after_s=retry_after,
        )

    def take_run_slot(self, tenant: str) -> RunSlot:
        """One of the tenant's runs at once, or a 429; the run hands it back when it ends.

        A run outlives a caller that went away (it is being interrupted, or killed after
        the grace period): the slot goes with the run, so cancelling calls cannot keep
        more of a tenant's runs going than its share.
        """
        if self._running[tenant] >= self._runs_at_once:
            raise QuotaExceeded(
                f"this tenant already has {self._runs_at_once} runs in progress",
                "Wait for a run to finish before starting another.",
                retry_after_s=2,
            )
        self._running[tenant] += 1
        return RunSlot(lambda: self._free_slot(tenant))

    def _free_slot(self, tenant: str) -> None:
        self._running[tenant] -= 1
        if not self._running[tenant]:
            del self._running[tenant]


class RunSlot:
    """A tenant's run slot, given back once, however many times it is released."""

    def __init__(self, free: Callable[[], None]) -> None:
        self._free: Callable[[], None] | None = free

    def release(self) -> None:
        free, self._free = self._free, None
        if free is not None:
            free()
