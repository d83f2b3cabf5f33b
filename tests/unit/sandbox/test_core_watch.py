"""When a session is put behind the rest: a core kept busy, or a quota spent, for a whole
check interval; and when it gets its cores and its weight back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandbox import core_watch
from sandbox.confine.cgroup import CpuPressure
from sandbox.core_watch import CHECK_INTERVAL_S, RELEASE_WINDOW_S, CoreWatch

KEY = "0123456789abcdef"
PARENT = Path("/sys/fs/cgroup/cpu/sessions-parent")
SECOND_NS = 1_000_000_000


class RecordingGroups:
    """Stands in for CgroupVersion: counters the test sets, and every change it is asked."""

    def __init__(self) -> None:
        self.used_ns = 0
        self.throttled_ns = 0
        self.runnable = 1
        self.unreadable = False
        self.changes: list[tuple[str, bool]] = []

    def cpu_pressure(self, key: str) -> CpuPressure | None:
        return None if self.unreadable else CpuPressure(self.used_ns, self.throttled_ns)

    def process_count(self, key: str) -> int:
        return 1

    def runnable_threads(self, key: str) -> int:
        return self.runnable

    def confine_cores(self, key: str, confined: bool) -> str:
        self.changes.append(("cores", confined))
        return "1" if confined else "0-1"

    def demote(self, key: str, demoted: bool) -> bool:
        self.changes.append(("idle", demoted))
        return True

    def sessions_cpu_group(self) -> Path:
        return PARENT

    def demote_all_sessions(self, demoted: bool) -> bool:
        self.changes.append(("parent idle", demoted))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    ticking = Clock()
    # The module's clock only: the event loop's own timers keep the real one.
    monkeypatch.setattr(core_watch, "time", SimpleNamespace(monotonic=ticking))
    monkeypatch.setattr(core_watch, "_core_count", lambda: 2)
    return ticking


def _watched(groups: RecordingGroups) -> CoreWatch:
    """A watch over a run that has just started (call it within an event loop)."""
    watched = CoreWatch(groups, KEY)  # type: ignore[arg-type]  # a stand-in
    watched.run_started()
    watched._check()  # the first check takes the counters
    return watched


def _spend(
    groups: RecordingGroups, clock: Clock, seconds: float, cpus: float, throttled: float = 0.0
) -> None:
    clock.now += seconds
    groups.used_ns += int(cpus * seconds * SECOND_NS)
    groups.throttled_ns += int(throttled * seconds * SECOND_NS)


def _watch_over(
    groups: RecordingGroups, clock: Clock, intervals: list[tuple[float, float, float]]
) -> None:
    """Start a run, then one check per (seconds, CPUs used, share throttled) interval."""

    async def watch() -> None:
        watched = _watched(groups)
        try:
            for seconds, cpus, throttled in intervals:
                _spend(groups, clock, seconds, cpus, throttled)
                watched._check()
        finally:
            watched.close()

    asyncio.run(watch())


def test_a_session_keeping_one_core_busy_is_held_and_made_idle_but_not_its_parent(
    clock: Clock,
) -> None:
    # One spinning thread: 0.93 of a core, throttled 7% by its one-CPU quota.
    groups = RecordingGroups()
    _watch_over(groups, clock, [(CHECK_INTERVAL_S, 0.93, 0.07)])
    assert groups.changes == [("cores", True), ("idle", True)]


def test_a_session_spending_a_quota_below_one_core_is_held(clock: Clock) -> None:
    groups = RecordingGroups()
    _watch_over(groups, clock, [(CHECK_INTERVAL_S, 0.5, 0.5)])
    assert groups.changes == [("cores", True), ("idle", True)]


def test_a_session_using_part_of_a_core_keeps_its_cores_and_weight(clock: Clock) -> None:
    groups = RecordingGroups()
    _watch_over(groups, clock, [(CHECK_INTERVAL_S, 0.5, 0.0)] * 5)
    assert groups.changes == []


def test_a_session_filling_every_core_makes_the_sessions_parent_idle_too(
    clock: Clock,
) -> None:
    groups = RecordingGroups()
    groups.runnable = 4
    _watch_over(groups, clock, [(CHECK_INTERVAL_S, 1.0, 1.0)])
    # The session's end (closing its watch) gives the parent its weight back.
    assert groups.changes == [
        ("cores", True),
        ("idle", True),
        ("parent idle", True),
        ("parent idle", False),
    ]


def test_a_held_session_gets_its_cores_back_once_it_goes_quiet(clock: Clock) -> None:
    groups = RecordingGroups()
    _watch_over(groups, clock, [(CHECK_INTERVAL_S, 0.93, 0.07), (RELEASE_WINDOW_S, 0.1, 0.0)])
    assert groups.changes == [("cores", True), ("idle", True), ("cores", False), ("idle", False)]


def test_a_session_held_for_one_busy_thread_is_looked_at_again_within_an_interval(
    clock: Clock,
) -> None:
    # Held for one busy thread, the session is not holding the other sessions back; if
    # it forks and fills every core, that must be seen within an interval, not at the
    # next release check two seconds on.
    groups = RecordingGroups()

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        watched = _watched(groups)
        try:
            _spend(groups, clock, CHECK_INTERVAL_S, 0.93)
            watched._check()
            assert groups.changes == [("cores", True), ("idle", True)]
            assert watched._timer is not None
            assert watched._timer.when() - loop.time() <= CHECK_INTERVAL_S
            groups.runnable = 4  # it forks: four busy threads
            _spend(groups, clock, CHECK_INTERVAL_S, 1.0)
            watched._check()
            assert groups.changes[-1] == ("parent idle", True)
            # Holding them, it is looked at again at the release check only.
            assert watched._timer is not None
            assert watched._timer.when() - loop.time() > CHECK_INTERVAL_S
        finally:
            watched.close()

    asyncio.run(watch())


def test_a_held_session_whose_counters_can_no_longer_be_read_gets_its_place_back(
    clock: Clock,
) -> None:
    groups = RecordingGroups()

    async def watch() -> None:
        watched = _watched(groups)
        try:
            _spend(groups, clock, CHECK_INTERVAL_S, 0.93)
            watched._check()
            groups.unreadable = True
            _spend(groups, clock, RELEASE_WINDOW_S, 0.0)
            watched._check()
        finally:
            watched.close()

    asyncio.run(watch())
    assert groups.changes == [("cores", True), ("idle", True), ("cores", False), ("idle", False)]
