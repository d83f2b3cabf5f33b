"""Put a session that keeps a core busy behind the rest, and keep one core free of it.

Once one session keeps every core busy (a busy process per core, a fork bomb), a task
that wakes waits for the next scheduler tick.  The session's one-CPU quota does not
prevent that: the session spends its quota on every core at once, then is throttled.
A single busy process delays its neighbours too, if less often: a neighbour's worker
woken on the burner's core waits out the burner's slice while the service holds the
other core.  The traces and figures behind each step are in docs/cpu-scheduling.md.

So while a session runs, or has processes besides its worker (a run may leave some
running), its group's counters are read every ``CHECK_INTERVAL_S``, from the end of
the first interval on.  A session that used more than ``BUSY_CPUS`` of a core over that
time, or was throttled for more than ``THROTTLED_SHARE`` of it (its quota may be below
a core), is held to every core but the first (a cpuset), and is made idle: its group
through cpu.idle, its threads through the SCHED_IDLE policy (``CgroupVersion.demote``).
Any task that wakes preempts it, and a core running only idle tasks counts as free when
the kernel places a woken task.  While a held session has as many runnable threads as
the service has cores, the sessions' parent group is idle too (``HeldSessions``); one
held for less is looked at every interval for whether it now fills them.  A
held session still gets what CPU nobody else wants: alone on the host, it runs as fast.

Each step closes a way to wait:
  1. A neighbour's worker that last ran on the held core is woken there: a task of a
     sibling group preempts an idle group's task on wakeup.
  2. The service, woken on that core, would not preempt a group that is idle only
     among its siblings: the kernel compares a task outside the sessions' parent group
     with the parent.  Any task preempts a SCHED_IDLE one.
  3. The service would still lose the core to the parent group once its own short
     slice was used.  An idle parent yields to every task outside it.

The session gets every core and its weight back once it uses less than
``RELEASE_BELOW_CPUS`` over ``RELEASE_WINDOW_S``, even after its run has ended; the long
window keeps a session that bursts and pauses from winning them back between bursts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sandbox.confine.cgroup import CgroupVersion
from sandbox.cpu_demotion import CpuPressure, may_restore_policies

log = logging.getLogger("codesherpa")

CHECK_INTERVAL_S = 0.1
# One busy thread uses about 0.93 of a core here (its one-CPU quota throttles the rest).
BUSY_CPUS = 0.8
THROTTLED_SHARE = 0.3
RELEASE_WINDOW_S = 2.0
RELEASE_BELOW_CPUS = 0.25

_Result = TypeVar("_Result")


def _core_count() -> int:
    return len(os.sched_getaffinity(0))


class HeldSessions:
    """Sessions that fill every core, by parent group: a parent is idle while it has any.

    A held session's group is idle among its siblings, but the kernel compares tasks
    outside the sessions' parent with the parent as a whole (CgroupVersion.
    demote_all_sessions).  Only while a held session would still fill every core,
    because an idle parent makes every core that runs only session code look free to
    the scheduler, and a woken neighbour's worker placed beside a busy sibling that is
    not held waits out that sibling's slice (docs/cpu-scheduling.md).  A session that
    stays busy stays held, so CoreWatch counts it here only while it has as many
    runnable threads as the service has cores.
    """

    def __init__(self) -> None:
        self._held: dict[Path, set[str]] = {}

    def hold(self, version: CgroupVersion, key: str) -> Path | None:
        """Count the session in; returns its parent group, to release it by later."""
        parent = version.sessions_cpu_group()
        if parent is None:
            return None
        held = self._held.setdefault(parent, set())
        if not held:
            try:
                version.demote_all_sessions(True)
            except OSError as exc:
                log.warning("cannot make the sessions' group %s idle: %s", parent, exc)
        held.add(key)
        return parent

    def release(self, version: CgroupVersion | None, parent: Path, key: str) -> None:
        held = self._held.get(parent)
        if held is None or key not in held:
            return
        held.discard(key)
        if held:
            return
        del self._held[parent]
        if version is not None:
            try:
                version.demote_all_sessions(False)
            except OSError as exc:
                log.warning("cannot make the sessions' group %s normal again: %s", parent, exc)


HELD_SESSIONS = HeldSessions()


class CoreWatch:
    """Watches one session's group while it runs, and while it is held to fewer cores."""

    def __init__(self, version: CgroupVersion | None, session_key: str) -> None:
        self._version = version
        self._key = session_key
        self._timer: asyncio.TimerHandle | None = None
        self._last: tuple[float, CpuPressure] | None = None
        self._running = False
        self.confined = False
        self._held_under: Path | None = None  # the parent group it is counted in as held
        self._releaser: CgroupVersion | None = version

    def run_started(self) -> None:
        self._running = True
        if self._timer is None and self._version is not None:
            self._schedule(CHECK_INTERVAL_S)

    def run_ended(self) -> None:
        self._running = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unhold()

    def _hold(self, version: CgroupVersion) -> None:
        if self._held_under is None:
            self._held_under = HELD_SESSIONS.hold(version, self._key)

    def _unhold(self) -> None:
        if self._held_under is not None:
            HELD_SESSIONS.release(self._releaser, self._held_under, self._key)
            self._held_under = None

    def _schedule(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _read(self) -> tuple[float, CpuPressure] | None:
        assert self._version is not None
        pressure = self._version.cpu_pressure(self._key)
        return None if pressure is None else (time.monotonic(), pressure)

    def _check(self) -> None:
        self._timer = None
        assert self._version is not None
        busy = self._running or self._version.process_count(self._key) > 1
        if self._last is None and not busy:
            return  # a run that ended within the interval and left nothing running
        now = self._read()
        if now is None:
            # This host does not count both, or no longer can: nothing to watch, and
            # nothing to judge a release by, so a held session gets its place back.
            if self.confined:
                self._confine(False, "its CPU counters could not be read")
            self._version = None
            return
        if self._between_release_checks(now):
            # Held for less than filling every core: whether it now does is looked at
            # every interval, so that the other sessions are put behind the tasks
            # outside them within one (a fork bomb after a busy loop, say).
            if self._version.runnable_threads(self._key) >= _core_count():
                self._hold(self._version)
            self._schedule(RELEASE_WINDOW_S if self._held_under else CHECK_INTERVAL_S)
            return
        # A request's own path only sets a timer; the first check takes the counters,
        # the ones after it judge.
        if self._last is not None:
            self._judge(self._last, now)
        self._last = now
        if self._version is None:
            return
        if self.confined:
            self._schedule(RELEASE_WINDOW_S if self._held_under else CHECK_INTERVAL_S)
        elif busy:
            self._schedule(CHECK_INTERVAL_S)
        else:
            self._last = None

    def _between_release_checks(self, now: tuple[float, CpuPressure]) -> bool:
        if not self.confined or self._held_under is not None or self._last is None:
            return False
        return now[0] - self._last[0] < RELEASE_WINDOW_S - CHECK_INTERVAL_S / 2

    def _judge(self, last: tuple[float, CpuPressure], now: tuple[float, CpuPressure]) -> None:
        (then, before), (at, after) = last, now
        elapsed_ns = max((at - then) * 1e9, 1.0)
        throttled = (after.throttled_ns - before.throttled_ns) / elapsed_ns
        used = (after.used_ns - before.used_ns) / elapsed_ns
        if not self.confined and (used > BUSY_CPUS or throttled > THROTTLED_SHARE):
            self._confine(
                True, f"used {used:.2f} CPU, throttled {throttled:.0%}, over {at - then:.2f} s"
            )
        elif self.confined and used < RELEASE_BELOW_CPUS:
            self._confine(False, f"used {used:.2f} CPU over the last {at - then:.2f} s")
        elif self.confined:
            # Still held: threads a lineage forking without pause kept out of SCHED_IDLE
            # get it now.
            version, key = self._version, self._key
            if version is not None:
                self._attempt(lambda: version.demote(key, True))
                # The parent stays idle only while the session would still fill every
                # core: a held session down to one busy process must not keep the other
                # sessions idle for as long as it likes (see HeldSessions).  Its quota no
                # longer tells, once it is held to fewer cores than that quota covers.
                if version.runnable_threads(key) >= _core_count():
                    self._hold(version)
                else:
                    self._unhold()

    def _confine(self, confined: bool, why: str) -> None:
        assert self._version is not None
        version, key = self._version, self._key
        # Each separately: a release that fails on one must still undo the other.
        cores = self._attempt(lambda: version.confine_cores(key, confined))
        demoted = self._attempt(lambda: version.demote(key, confined))
        if cores is None and not demoted:
            self._version = None  # neither a cpuset nor cpu.idle here: stop trying
            self.confined = False
            self._unhold()
            return
        self.confined = confined
        if confined:
            if version.runnable_threads(key) >= _core_count():  # see HeldSessions
                self._hold(version)
            if not may_restore_policies():
                log.warning(
                    "the service lacks CAP_SYS_NICE: session group %s keeps its threads' "
                    "scheduling policy (SCHED_IDLE could not be taken back)",
                    key,
                )
        else:
            self._unhold()
        where = "keeps its cores" if cores is None else f"runs on cores {cores}"
        rank = "weight unchanged" if not demoted else "idle" if confined else "equal weight"
        log.info("session group %s now %s, %s (%s)", key, where, rank, why)

    def _attempt(self, change: Callable[[], _Result]) -> _Result | None:
        try:
            return change()
        except OSError as exc:
            log.warning("cannot change the scheduling of session group %s: %s", self._key, exc)
            return None
