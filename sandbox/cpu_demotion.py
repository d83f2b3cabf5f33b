"""Holding a busy session: fewer cores (a cpuset), and behind every other task (cpu.idle
and SCHED_IDLE).

``sandbox/core_watch.py`` decides when a session is held and released; this module is
how.  ``CpuDemotion`` is what every cgroup version (``sandbox/confine/cgroup``) offers
for it: each version supplies its trees and files, and its own ``cpu_pressure``,
``cpuset_file`` and ``all_cores``.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

# Leaf modules only: the cgroup package's own classes are built on CpuDemotion.
from sandbox.confine.cgroup.files import read_file, write_file
from sandbox.confine.cgroup.tree import Tree

__all__ = [
    "CpuDemotion",
    "CpuPressure",
    "all_cores_but_the_first",
    "may_restore_policies",
    "parse_cpu_list",
]

# Passes over a group's threads when switching their policy: enough for threads that
# fork while the first pass runs (a pass takes well under a millisecond).
_POLICY_PASSES = 5
_CAP_SYS_NICE = 23  # include/uapi/linux/capability.h


@dataclass(frozen=True)
class CpuPressure:
    """A session's CPU counters since its group was made (nanoseconds)."""

    used_ns: int
    throttled_ns: int  # summed over the cores: how long its quota held it back


def parse_cpu_list(text: str) -> list[int]:
    """The cores of a cpuset list such as ``0-3,6``."""
    cores: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cores.extend(range(int(first), int(last or first) + 1))
    return cores


def all_cores_but_the_first(cpus: str) -> str | None:
    """The cpuset list that leaves the first of ``cpus`` free; None with one core."""
    cores = parse_cpu_list(cpus)
    if len(cores) < 2:
        return None
    return ",".join(str(core) for core in cores[1:])


class CpuDemotion(ABC):
    """A session group's CPU switches, for the cgroup versions to inherit."""

    trees: dict[str, Tree]  # controller -> tree; co-mounted controllers share one
    weight_file: str
    weight: str  # what weight_file holds: every session weighs the same
    threads_file: str  # every thread of the group, by thread id

    @abstractmethod
    def cpu_pressure(self, key: str) -> CpuPressure | None:
        """The session's CPU use and throttling, if this host counts both."""

    @abstractmethod
    def cpuset_file(self, key: str) -> Path | None:
        """The session's cpuset.cpus, if its cores can be narrowed here."""

    @abstractmethod
    def all_cores(self, key: str) -> str:
        """What the session's cpuset.cpus holds when it is not confined."""

    def confine_cores(self, key: str, confined: bool) -> str | None:
        """Hold the session to every core but the first (or give them all back).

        Returns the cores it may now use, or None if this host cannot narrow them.
        """
        path = self.cpuset_file(key)
        if path is None:
            return None
        everything = self.all_cores(key)
        narrowed = all_cores_but_the_first(read_file(path.parent.parent / "cpuset.effective_cpus"))
        if narrowed is None:
            return None
        write_file(path, narrowed if confined else everything)
        return read_file(path.parent / "cpuset.effective_cpus").strip()

    def demote(self, key: str, demoted: bool) -> bool:
        """Let any other task take a core from the session's at once (or stop).

        Two switches, each where the host has it.  cpu.idle (Linux 5.15+) drops the
        group's weight to the minimum, and a task of a sibling group that wakes on its
        core preempts it instead of waiting out its time slice.  That leaves tasks
        outside the sessions' parent, the service among them, which the kernel compares
        with the parent group; so each of the session's threads also gets the SCHED_IDLE
        policy, which any other task preempts.  Threads started later inherit it, and
        without CAP_SYS_NICE none can leave it (RLIMIT_NICE is 0).
        Returns False if this host has neither switch.
        """
        switched = False
        threads = self.trees["pids"].session_dir(key) / self.threads_file
        cpu = self.trees.get("cpu")
        try:
            if cpu is not None and (cpu.session_dir(key) / "cpu.idle").exists():
                group = cpu.session_dir(key)
                write_file(group / "cpu.idle", "1" if demoted else "0")
                if not demoted:
                    # Leaving idle sets the kernel's default weight, not the one written.
                    write_file(group / self.weight_file, self.weight)
                switched = True
        finally:
            # Even when the group's switch failed: a release must not leave threads idle.
            # Only what the service can undo: giving a thread SCHED_OTHER back takes
            # CAP_SYS_NICE, since the session's own RLIMIT_NICE is 0.
            if threads.exists() and (not demoted or may_restore_policies()):
                switched = (
                    _set_policy(threads, os.SCHED_IDLE if demoted else os.SCHED_OTHER) or switched
                )
        return switched

    def runnable_threads(self, key: str) -> int:
        """How many of the session's threads are running or waiting for a CPU now."""
        try:
            listed = read_file(self.trees["pids"].session_dir(key) / self.threads_file).split()
        except OSError:
            return 0
        runnable = 0
        for thread in listed:
            with contextlib.suppress(OSError, IndexError):  # ended since the list was read
                # The state follows the command name, which may itself hold ") ".
                stat = read_file(Path(f"/proc/{int(thread)}/stat"))
                runnable += stat[stat.rindex(")") + 2] == "R"
        return runnable

    def sessions_cpu_group(self) -> Path | None:
        """The sessions' parent group in the cpu tree, if this host has one."""
        cpu = self.trees.get("cpu")
        return None if cpu is None else cpu.directory(cpu.parent_path)

    def demote_all_sessions(self, demoted: bool) -> bool:
        """Put every session behind the tasks outside them, or stop; False if impossible.

        The kernel weighs a task outside the sessions' parent group, the service among
        them, against the parent as a whole, at the parent's full weight however idle
        a session group inside it is.  A trace showed the service woken on the core of
        a held fork bomb and losing it to the parent group for 3 ms once its own slice
        was used.  With the parent's cpu.idle set, any task outside the sessions takes
        their cores first; among themselves they keep equal weights.  Leaving idle
        gives the parent the kernel's default weight, which is the one it was made with.
        """
        parent = self.sessions_cpu_group()
        if parent is None or not (parent / "cpu.idle").exists():
            return False
        write_file(parent / "cpu.idle", "1" if demoted else "0")
        return True


def may_restore_policies() -> bool:
    """Whether this process holds CAP_SYS_NICE, which a thread's way out of SCHED_IDLE
    takes when its own RLIMIT_NICE is 0."""
    try:
        for line in read_file(Path("/proc/self/status")).splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _set_policy(threads: Path, policy: int) -> bool:
    """Give every thread listed in a group's threads file the scheduling policy.

    Returns False if the kernel refused a switch (the caller lacks the privilege).
    A thread started from one not yet switched keeps the old policy, so the list is
    read again until a pass finds nothing left to switch, nor a thread that ended
    under it; a lineage that forks and exits without pause may still keep a few
    threads out, which every later check switches again.  A listed 0 (a thread exiting
    as v2 lists it) is skipped: to the scheduler calls it means the service's own
    thread.  Ids are read and used in the service's pid namespace; reusing one for a
    thread elsewhere between the read and the switch would take the pid space to wrap.
    """
    for _ in range(_POLICY_PASSES):
        changing = 0
        try:
            listed = read_file(threads).split()
        except OSError:  # the group is gone, and its threads with it
            return True
        for thread in map(int, listed):
            if thread <= 0:
                continue
            try:
                if os.sched_getscheduler(thread) != policy:
                    os.sched_setscheduler(thread, policy, os.sched_param(0))
                    changing += 1
            except ProcessLookupError:  # ended since the list was read: look again
                changing += 1
            except PermissionError:
                return False
        if not changing:
            return True
    return True
