"""The pure parts of the slow-client defences: the connection budget, the table that
decides whom to evict, and the filter that bounds the accept loop's EMFILE storm."""

from __future__ import annotations

import errno
import logging
import resource

import pytest

from service.connection_guard import ConnectionTable, Waiting
from service.descriptors import (
    BASE_RESERVE,
    FDS_PER_SESSION,
    MAX_ACCEPT_BATCH,
    REFUSED_POOL,
    connection_budget,
    raise_open_files_limit,
)
from service.log_limits import RateLimitedFilter


class FakeConnection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_default_cap_leaves_the_reserve_and_the_accept_batch() -> None:
    budget = connection_budget(fd_limit=1_048_576, max_sessions=64)
    assert budget.reserve == BASE_RESERVE + FDS_PER_SESSION * 64 == 512
    assert budget.accept_batch == MAX_ACCEPT_BATCH
    assert budget.max_connections == 1_048_576 - 512 - MAX_ACCEPT_BATCH - REFUSED_POOL
    assert not budget.overcommitted()


def test_small_limit_shrinks_the_accept_batch_with_it() -> None:
    budget = connection_budget(fd_limit=4096, max_sessions=64)
    assert budget.accept_batch == 512
    assert budget.max_connections == 4096 - 512 - 512 - REFUSED_POOL


def test_a_limit_that_leaves_no_connections_is_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match=r"descriptor limit \(600\).*CODESHERPA_FD_RESERVE"):
        connection_budget(fd_limit=600, max_sessions=64)


def test_explicit_cap_is_kept_and_judged() -> None:
    budget = connection_budget(fd_limit=1024, max_sessions=12, max_connections=5000)
    assert budget.max_connections == 5000
    assert budget.overcommitted()
    assert budget.reserve == BASE_RESERVE + FDS_PER_SESSION * 12
    assert connection_budget(1024, 12, reserve=100).reserve == 100


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        raised = raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        if hard != resource.RLIM_INFINITY:
            assert raised == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_table_evicts_the_oldest_head_first_then_stalled_clients_never_the_served() -> None:
    table = ConnectionTable(max_connections=3)
    served, stalled, heading = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
    for connection in (served, stalled, heading):
        assert table.admit(connection, 0.0)
    table.move(served, Waiting.SERVICE, 1.0)
    table.move(stalled, Waiting.CLIENT, 1.0)
    newcomer = FakeConnection("d")
    assert table.admit(newcomer, 5.0)
    assert heading.evicted
    assert not stalled.evicted
    table.move(newcomer, Waiting.SERVICE, 1.0)
    assert table.admit(FakeConnection("e"), 5.0)
    assert stalled.evicted
    assert not served.evicted
    assert len(table) == 3
    assert table.evicted == 2


def test_table_refuses_when_all_are_served_and_bounds_the_refused() -> None:
    table = ConnectionTable(max_connections=2, refused_pool=2)
    for name in "ab":
        connection = FakeConnection(name)
        assert table.admit(connection, 0.0)
        table.move(connection, Waiting.SERVICE, 1.0)
    refused = [FakeConnection(name) for name in "xyz"]
    assert [table.admit(connection, 0.0) for connection in refused] == [False, False, False]
    # Only two may wait for their 503 at a time: the oldest made way.
    assert [connection.evicted for connection in refused] == [True, False, False]
    assert len(table) == 2
    # A refused connection never counts against the cap, nor moves into it.
    table.move(refused[1], Waiting.HEAD, 1.0)
    assert table.count(Waiting.HEAD) == 0


def test_a_connection_that_left_frees_its_place() -> None:
    table = ConnectionTable(max_connections=1)
    first = FakeConnection("a")
    assert table.admit(first, 0.0)
    table.move(first, Waiting.SERVICE, 1.0)
    table.discard(first)
    table.discard(first)  # connection_lost after an eviction: a second discard is harmless
    assert table.admit(FakeConnection("b"), 0.0)
    assert not first.evicted


def _accept_failure(message: str = "socket.accept() out of system resource") -> logging.LogRecord:
    error = OSError(errno.EMFILE, "Too many open files")
    return logging.LogRecord(
        "asyncio",
        logging.ERROR,
        __file__,
        1,
        message + "\nsocket: <fd=7>",
        (),
        (OSError, error, None),
    )


def test_filter_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    limiter = RateLimitedFilter(interval_s=5, clock=lambda: now[0])
    first = _accept_failure()
    assert limiter.filter(first)
    assert first.getMessage() == (
        "socket.accept() out of system resource: [Errno 24] Too many open files"
    )
    assert first.exc_info is None  # one line, no traceback
    kept = 0
    for _ in range(10_000):
        now[0] += 0.0001
        kept += limiter.filter(_accept_failure())
    assert kept == 0
    now[0] = 105.5
    summary = _accept_failure()
    assert limiter.filter(summary)
    assert "10000 more like it in the last 6 s not logged" in summary.getMessage()
    assert limiter.suppressed == 0


def test_filter_leaves_other_records_alone() -> None:
    limiter = RateLimitedFilter(interval_s=5, clock=lambda: 0.0)
    assert limiter.filter(_accept_failure())
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception", (), None)
    assert limiter.filter(other)
    assert limiter.filter(other)
    refused = OSError(errno.ECONNREFUSED, "refused")
    unrelated = logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, "x", (), (OSError, refused, None)
    )
    assert limiter.filter(unrelated)
    assert unrelated.exc_info is not None


def test_a_body_just_begun_is_not_evicted_before_its_grace() -> None:
    table = ConnectionTable(max_connections=1, client_grace_s=1.0)
    uploading = FakeConnection("a")
    assert table.admit(uploading, 0.0)
    table.move(uploading, Waiting.CLIENT, 10.0)
    assert not table.admit(FakeConnection("b"), 10.5)
    assert not uploading.evicted
    assert table.admit(FakeConnection("c"), 11.0)
    assert uploading.evicted
