"""Per-tenant fairness: a request rate, and a cap on runs at once."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from service.errors import ApiError


class TenantQuotas:
    def __init__(self, rate: str, runs_at_once: int) -> None:
        self._rate = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._runs_at_once = runs_at_once
        self._running: Counter[str] = Counter()

    def admit_request(self, tenant: str) -> None:
        if self._limiter.hit(self._rate, tenant):
            return
        reset_at = self._limiter.get_window_stats(self._rate, tenant).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise ApiError(
            429,
            f"rate limit of {self._rate} requests reached for this tenant",
            f"Wait {retry_after} s before the next request.",
            headers={"Retry-After": str(retry_after)},
        )

    @contextmanager
    def run_slot(self, tenant: str) -> Iterator[None]:
        if self._running[tenant] >= self._runs_at_once:
            raise ApiError(
                429,
                f"this tenant already has {self._runs_at_once} runs in progress",
                "Wait for a run to finish before starting another.",
                headers={"Retry-After": "2"},
            )
        self._running[tenant] += 1
        try:
            yield
        finally:
            self._running[tenant] -= 1
            if not self._running[tenant]:
                del self._running[tenant]
