"""Tenant quotas: the rate limit refuses what it should, without a thread per hit."""

from __future__ import annotations

import math
import threading
import time

import pytest
from limits.storage.memory import Entry

from service.errors import RateLimited
from service.http_errors import http_status
from service.quotas import RequestDrivenMemoryStorage, TenantQuotas


def test_the_rate_limit_refuses_the_hit_beyond_it_and_says_when_to_retry() -> None:
    quotas = TenantQuotas("5/minute", runs_at_once=4)
    for _ in range(5):
        quotas.admit_request("tenant-a")
    with pytest.raises(RateLimited) as refused:
        quotas.admit_request("tenant-a")
    assert http_status(refused.value) == 429
    assert refused.value.retry_after_s is not None
    assert 1 <= refused.value.retry_after_s <= 60
    quotas.admit_request("tenant-b")  # another tenant's budget is its own


def test_hits_start_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # limits' MemoryStorage starts a Timer thread from each hit that finds none running;
    # only the constructor's may start here.
    started: list[threading.Timer] = []
    original_start = threading.Timer.start

    def counting_start(timer: threading.Timer) -> None:
        started.append(timer)
        original_start(timer)

    monkeypatch.setattr(threading.Timer, "start", counting_start)
    quotas = TenantQuotas("100000/second", runs_at_once=4)
    assert len(started) == 1
    for index in range(2000):
        quotas.admit_request(f"tenant-{index % 3}")
    assert len(started) == 1


def _stale_entry() -> Entry:
    entry = Entry(1)
    entry.atime -= 120
    entry.expiry -= 120
    return entry


def test_a_hit_drops_expired_entries_when_the_expiry_is_due() -> None:
    storage = RequestDrivenMemoryStorage()
    storage.events["tenant"] = [_stale_entry() for _ in range(50)]
    storage._next_expiry = math.inf  # not due: nothing is dropped
    assert storage.acquire_entry("tenant", limit=600, expiry=60)
    assert len(storage.events["tenant"]) == 51
    storage._next_expiry = 0.0  # due
    assert storage.acquire_entry("tenant", limit=600, expiry=60)
    assert len(storage.events["tenant"]) == 2
    assert storage._next_expiry > time.monotonic()
