"""Layer 3: one cgroup per session: memory, pids and cpu limits, and a kill for the whole tree.

The kernel offers two interfaces and hosts mix them, so the layer has two small
implementations behind the same functions:

- cgroup v2, one unified tree: a single directory per session holding memory.max,
  memory.swap.max, pids.max, cpu.weight and cpu.max; ``cgroup.kill`` ends every process.
- cgroup v1, one tree per controller: a directory per session in each of the memory,
  pids and cpu trees, plus cpuacct (cpu time), freezer (a kill no fork can outrun) and
  cpuset (see ``sandbox/core_watch.py``) when those are mounted.

v2 is chosen when its tree offers the memory and pids controllers where the groups go,
else v1 when both are mounted; otherwise ``apply`` reports why the layer is inactive.

Where the groups go: ``<parent>/<session_key>`` in each tree.  A relative parent (the
default, ``codesherpa``) sits under the cgroup the calling process is in, so a service
that systemd or a container already limits keeps its sessions inside those limits.  The
worker and the service must then share a cgroup, as they do when the worker descends
from the service.  An absolute parent (``/codesherpa``) starts at the top of the mounted
tree; on a v2 host whose service group holds processes it is the way out, since v2 does
not let a group with processes hand controllers to its children.

At the end of a session read ``usage()`` and ``oom_killed()`` first, then call
``kill_and_remove()``: the counters live in the directories it removes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.policy import Policy

__all__ = [
    "CPU_QUOTA_CPUS",
    "PARENT_GROUP",
    "apply",
    "kill_and_remove",
    "oom_killed",
    "probe",
    "remove_all_sessions",
    "select_version",
    "session_paths",
    "usage",
]

PARENT_GROUP = "codesherpa"

# Every session weighs the same as any other group beside it.  These are the kernels'
# defaults, written anyway so a session never inherits another figure.
V1_CPU_SHARES = 1024
V2_CPU_WEIGHT = 100
# At most one full CPU per session: on a two-core host a CPU burner still leaves a core to
# its neighbours.  None keeps only the equal weight, letting a lone session use every core.
CPU_QUOTA_CPUS: float | None = 1.0
# A short period: a throttled burner runs in 10 ms slices rather than 100 ms ones, so a
# neighbour waits less for the CPU (the benchmark's neighbour p99 improved beside both a
# CPU burn and a fork bomb; the share over time is the same).
CPU_PERIOD_US = 10_000

# How long kill_and_remove waits for a killed session to empty before it reports failure.
KILL_WAIT_S = 2.0
# How long the v1 freezer may take to stop every process before the kill goes ahead anyway.
FREEZE_WAIT_S = 0.5
_POLL_S = 0.005
# Passes over a group's threads when switching their policy: enough for threads that
# fork while the first pass runs (a pass takes well under a millisecond).
_POLICY_PASSES = 5
_CAP_SYS_NICE = 23  # include/uapi/linux/capability.h

_MB = 1024 * 1024
_SESSION_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_REQUIRED_CONTROLLERS = ("memory", "pids")
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer", "cpuset")
_V2_CONTROLLERS = ("memory", "pids", "cpu")


@dataclass(frozen=True)
class SessionLimits:
    memory_bytes: int
    processes: int  # processes and threads, as the pids controller counts them

    @classmethod
    def from_policy(cls, policy: Policy) -> SessionLimits:
        return cls(policy.limits.memory_mb * _MB, policy.limits.processes)


_PROBE_LIMITS = SessionLimits(memory_bytes=64 * _MB, processes=8)


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


class Need(Enum):
    """What a missing or refused control file means for the layer."""

    REQUIRED = "required"  # missing or refused: the session would be unbounded; fail
    IF_PRESENT = "if present"  # missing: the kernel lacks the feature; refused: fail
    BEST_EFFORT = "best effort"  # missing or refused: skip it and say so


@dataclass(frozen=True)
class Setting:
    """One control file written into a new session group."""

    controller: str  # the controller (for v1, its tree) that owns the file
    filename: str
    value: Callable[[SessionLimits], str | None]  # None: keep the kernel's value
    need: Need


@dataclass(frozen=True)
class Reading:
    """One figure usage() reports, and the file it comes from."""

    controller: str
    filename: str
    key: str
    parse: Callable[[str], int | None]


def _memory(limits: SessionLimits) -> str:
    return str(limits.memory_bytes)


def _processes(limits: SessionLimits) -> str:
    return str(limits.processes)


def _quota_us() -> int | None:
    return None if CPU_QUOTA_CPUS is None else round(CPU_QUOTA_CPUS * CPU_PERIOD_US)


def _v1_period(_: SessionLimits) -> str | None:
    return None if _quota_us() is None else str(CPU_PERIOD_US)


def _v1_quota(_: SessionLimits) -> str | None:
    quota = _quota_us()
    return None if quota is None else str(quota)


def _v2_max(_: SessionLimits) -> str | None:
    quota = _quota_us()
    return None if quota is None else f"{quota} {CPU_PERIOD_US}"


def _keyed(name: str) -> Callable[[str], int | None]:
    """Parser for the 'name value' lines of files such as memory.events and cpu.stat."""

    def parse(text: str) -> int | None:
        for line in text.splitlines():
            field, _, value = line.partition(" ")
            if field == name:
                return int(value)
        return None

    return parse


def _usec_as_ns(text: str) -> int | None:
    usec = _keyed("usage_usec")(text)
    return None if usec is None else usec * 1000


def _constant(value: str) -> Callable[[SessionLimits], str]:
    return lambda _: value


# Order matters: a limit before the memory+swap limit that may not be below it; the cfs
# period before the quota measured against it.
V1_SETTINGS = (
    Setting("memory", "memory.limit_in_bytes", _memory, Need.REQUIRED),
    # memory+swap capped at the same figure, so swapping is no way round the limit.  The
    # file exists only when the kernel accounts swap.
    Setting("memory", "memory.memsw.limit_in_bytes", _memory, Need.IF_PRESENT),
    Setting("pids", "pids.max", _processes, Need.REQUIRED),
    Setting("cpu", "cpu.shares", _constant(str(V1_CPU_SHARES)), Need.BEST_EFFORT),
    # v1 refuses a quota above the parent's; the parent's smaller quota then rules anyway.
    Setting("cpu", "cpu.cfs_period_us", _v1_period, Need.BEST_EFFORT),
    Setting("cpu", "cpu.cfs_quota_us", _v1_quota, Need.BEST_EFFORT),
)
V2_SETTINGS = (
    Setting("memory", "memory.max", _memory, Need.REQUIRED),
    # Absent when the kernel does not account swap.
    Setting("memory", "memory.swap.max", _constant("0"), Need.IF_PRESENT),
    Setting("pids", "pids.max", _processes, Need.REQUIRED),
    # Absent when the tree does not offer the cpu controller.
    Setting("cpu", "cpu.weight", _constant(str(V2_CPU_WEIGHT)), Need.BEST_EFFORT),
    Setting("cpu", "cpu.max", _v2_max, Need.BEST_EFFORT),
)
V1_READINGS = (
    Reading("memory", "memory.usage_in_bytes", "memory_bytes", int),
    Reading("memory", "memory.max_usage_in_bytes", "memory_peak_bytes", int),
    Reading("pids", "pids.current", "pids", int),
    Reading("cpuacct", "cpuacct.usage", "cpu_ns", int),
)
V2_READINGS = (
    Reading("memory", "memory.current", "memory_bytes", int),
    Reading("memory", "memory.peak", "memory_peak_bytes", int),
    Reading("pids", "pids.current", "pids", int),
    Reading("cpu", "cpu.stat", "cpu_ns", _usec_as_ns),
)


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    # No O_CREAT: a control file the kernel does not provide must fail, not appear.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise OSError(exc.errno, f"writing {value!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


@dataclass(frozen=True)
class Tree:
    """One mounted cgroup hierarchy and where this service's groups sit in it.

    Paths named ``*_path`` are hierarchy paths, as /proc/<pid>/cgroup shows them.
    """

    mount_point: Path
    mount_root: str  # hierarchy path shown at mount_point: "/" unless a container shows a subtree
    proc_label: str  # how /proc/<pid>/cgroup names the hierarchy: "memory", "cpu,cpuacct", ""
    anchor_path: str  # where the parent group is rooted
    parent_path: str

    def directory(self, hierarchy_path: str) -> Path:
        return self.mount_point / posixpath.relpath(hierarchy_path, self.mount_root)

    def session_path(self, key: str) -> str:
        return posixpath.join(self.parent_path, key)

    def session_dir(self, key: str) -> Path:
        return self.directory(self.session_path(key))


def parse_oom_kills(text: str) -> int:
    return _keyed("oom_kill")(text) or 0


class OomKillCounter:
    """A session's OOM-kill count, read through one open descriptor.

    Every run reads it; a ``pread`` costs a microsecond where opening the file by path
    costs twenty.
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> int:
        if self._fd is None:
            return 0
        try:
            return parse_oom_kills(os.pread(self._fd, 4096, 0).decode())
        except OSError:
            return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CgroupVersion(ABC):
    """The session groups of one cgroup interface; subclasses supply the tables."""

    name: str
    settings: tuple[Setting, ...]
    readings: tuple[Reading, ...]
    swap_file: str
    weight_file: str
    weight: str  # what weight_file holds: every session weighs the same
    threads_file: str  # every thread of the group, by thread id
    quota_file: str

    def __init__(self, trees: Mapping[str, Tree]) -> None:
        self.trees = dict(trees)  # controller -> tree; co-mounted controllers share one

    def distinct_trees(self) -> list[Tree]:
        return list(dict.fromkeys(self.trees.values()))

    def session_dirs(self, key: str) -> list[Path]:
        return [tree.session_dir(key) for tree in self.distinct_trees()]

    def existing_session_dirs(self, key: str) -> list[Path]:
        return [directory for directory in self.session_dirs(key) if directory.is_dir()]

    @abstractmethod
    def make_parents(self) -> None: ...

    @abstractmethod
    def kill_all_at_once(self, key: str) -> None:
        """The version's fastest way to SIGKILL the whole session, if it has one."""

    @abstractmethod
    def oom_killed(self, key: str) -> bool: ...

    @abstractmethod
    def oom_kills_file(self, key: str) -> Path:
        """The file whose ``oom_kill`` line counts the session's OOM kills."""

    def oom_kills(self, key: str) -> int:
        """How many processes of the session the OOM killer has ended so far."""
        try:
            return parse_oom_kills(_read(self.oom_kills_file(key)))
        except OSError:
            return 0

    def kill_all_but(self, key: str, keep: int, timeout_s: float = 1.0) -> None:
        """SIGKILL every process of the session except ``keep`` (its worker)."""
        directories = self.existing_session_dirs(key)
        deadline = time.monotonic() + timeout_s
        while (strays := self.members(directories) - {keep}) and time.monotonic() < deadline:
            self.kill_members(key, strays)
            time.sleep(_POLL_S)

    def create(self, key: str, limits: SessionLimits) -> dict[str, str]:
        """Make the session's groups and write the settings; return what was written."""
        self.make_parents()
        for directory in self.session_dirs(key):
            directory.mkdir(exist_ok=True)
        written: dict[str, str] = {}
        for setting in self.settings:
            tree = self.trees.get(setting.controller)
            value = setting.value(limits)
            if tree is None or value is None:
                continue
            path = tree.session_dir(key) / setting.filename
            if setting.need is not Need.REQUIRED and not path.exists():
                continue
            try:
                _write(path, value)
            except OSError:
                if setting.need is not Need.BEST_EFFORT:
                    raise
                continue
            written[setting.filename] = value
        return written

    def enter(self, key: str, pid: int | None = None) -> None:
        # "0" names the writer itself, which works from inside a pid namespace too.
        for directory in self.session_dirs(key):
            _write(directory / "cgroup.procs", "0" if pid is None else str(pid))

    def discard(self, key: str) -> None:
        """Best effort after a failed apply: groups the caller already entered stay for
        kill_and_remove."""
        for directory in self.session_dirs(key):
            with contextlib.suppress(OSError):
                directory.rmdir()

    def describe(self, limits: SessionLimits, written: Mapping[str, str]) -> str:
        swap = "swap cannot extend it" if self.swap_file in written else "swap not limited"
        parts = [f"memory {limits.memory_bytes // _MB} MB ({swap})", f"pids {limits.processes}"]
        if self.weight_file in written:
            cpu = f"cpu equal weight ({self.weight_file}={written[self.weight_file]})"
            if self.quota_file in written and CPU_QUOTA_CPUS is not None:
                cpu += f", at most {CPU_QUOTA_CPUS:g} CPU"
            parts.append(cpu)
        return f"{self.name}: " + ", ".join(parts)

    def process_count(self, key: str) -> int:
        """How many processes the session has (its worker and what it started)."""
        try:
            return len(_read(self.trees["pids"].session_dir(key) / "cgroup.procs").split())
        except OSError:
            return 0

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
        narrowed = all_cores_but_the_first(_read(path.parent.parent / "cpuset.effective_cpus"))
        if narrowed is None:
            return None
        _write(path, narrowed if confined else everything)
        return _read(path.parent / "cpuset.effective_cpus").strip()

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
                _write(group / "cpu.idle", "1" if demoted else "0")
                if not demoted:
                    # Leaving idle sets the kernel's default weight, not the one written.
                    _write(group / self.weight_file, self.weight)
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
            listed = _read(self.trees["pids"].session_dir(key) / self.threads_file).split()
        except OSError:
            return 0
        runnable = 0
        for thread in listed:
            with contextlib.suppress(OSError, IndexError):  # ended since the list was read
                # The state follows the command name, which may itself hold ") ".
                stat = _read(Path(f"/proc/{int(thread)}/stat"))
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
        _write(parent / "cpu.idle", "1" if demoted else "0")
        return True

    def members(self, directories: Iterable[Path]) -> set[int]:
        pids: set[int] = set()
        for directory in directories:
            try:
                text = _read(directory / "cgroup.procs")
            except FileNotFoundError:
                continue
            # A reader in a pid namespace sees 0 for processes outside it: nothing to kill.
            pids.update(pid for pid in map(int, text.split()) if pid > 0)
        return pids

    def memberships(self, key: str) -> frozenset[tuple[str, str]]:
        return frozenset((tree.proc_label, tree.session_path(key)) for tree in self.trees.values())

    def kill_members(self, key: str, pids: Iterable[int]) -> None:
        memberships = self.memberships(key)
        for pid in pids:
            _kill_if_member(pid, memberships)

    def usage(self, key: str) -> dict[str, int]:
        figures: dict[str, int] = {}
        for reading in self.readings:
            tree = self.trees.get(reading.controller)
            if tree is None:
                continue
            try:
                text = _read(tree.session_dir(key) / reading.filename)
            except OSError:  # no such group, or an older kernel without that file
                continue
            value = reading.parse(text)
            if value is not None:
                figures[reading.key] = value
        return figures

    def kill_and_remove(self, key: str) -> None:
        directories = self.existing_session_dirs(key)
        if not directories:
            return
        deadline = time.monotonic() + KILL_WAIT_S
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another caller
            self.kill_all_at_once(key)
        # The sweep catches stragglers, and is the whole kill where the version has no
        # kill-all: each round takes what was forked since the last; pids.max bounds it.
        while survivors := self.members(directories):
            if time.monotonic() > deadline:
                raise OSError(
                    errno.EBUSY,
                    f"session {key}: processes {sorted(survivors)} alive "
                    f"{KILL_WAIT_S} s after SIGKILL",
                )
            self.kill_members(key, survivors)
            time.sleep(_POLL_S)
        for directory in directories:
            _remove_when_released(directory, deadline)


class CgroupV1(CgroupVersion):
    name = "v1"
    settings = V1_SETTINGS
    readings = V1_READINGS
    swap_file = "memory.memsw.limit_in_bytes"
    weight_file = "cpu.shares"
    weight = str(V1_CPU_SHARES)
    threads_file = "tasks"
    quota_file = "cpu.cfs_quota_us"

    def make_parents(self) -> None:
        for tree in self.distinct_trees():
            tree.directory(tree.parent_path).mkdir(parents=True, exist_ok=True)
        cpuset = self.trees.get("cpuset")
        if cpuset is not None:
            try:
                _prepare_v1_cpuset(cpuset)
            except OSError:
                # Optional: without it sessions keep every core; nothing else changes.
                del self.trees["cpuset"]

    def enter(self, key: str, pid: int | None = None) -> None:
        cpuset = self.trees.get("cpuset")
        for tree in self.distinct_trees():
            if tree is not cpuset:
                _write(tree.session_dir(key) / "cgroup.procs", "0" if pid is None else str(pid))
        if cpuset is not None:
            try:
                _write(cpuset.session_dir(key) / "cgroup.procs", "0" if pid is None else str(pid))
            except OSError:
                del self.trees["cpuset"]

    def cpu_pressure(self, key: str) -> CpuPressure | None:
        cpu, cpuacct = self.trees.get("cpu"), self.trees.get("cpuacct")
        if cpu is None or cpuacct is None:
            return None
        try:
            throttled = _keyed("throttled_time")(_read(cpu.session_dir(key) / "cpu.stat"))
            used = int(_read(cpuacct.session_dir(key) / "cpuacct.usage"))
        except (OSError, ValueError):
            return None
        return None if throttled is None else CpuPressure(used, throttled)

    def cpuset_file(self, key: str) -> Path | None:
        cpuset = self.trees.get("cpuset")
        if cpuset is None:
            return None
        path = cpuset.session_dir(key) / "cpuset.cpus"
        return path if path.exists() else None

    def all_cores(self, key: str) -> str:
        return _read(
            self.trees["cpuset"].directory(self.trees["cpuset"].parent_path) / "cpuset.cpus"
        ).strip()

    def create(self, key: str, limits: SessionLimits) -> dict[str, str]:
        written = super().create(key, limits)
        # A group inherits oom_kill_disable from its parent and would then hang at its limit
        # instead of being killed.  Written only when needed: the file is deprecated and a
        # write puts a warning in the kernel log.
        oom_control = self.trees["memory"].session_dir(key) / "memory.oom_control"
        if oom_control.exists() and _keyed("oom_kill_disable")(_read(oom_control)) == 1:
            _write(oom_control, "0")
        return written

    def kill_all_at_once(self, key: str) -> None:
        freezer = self.trees.get("freezer")
        if freezer is None:
            return
        state = freezer.session_dir(key) / "freezer.state"
        if not state.exists():
            return
        # Frozen processes can neither fork nor exit, so the list read next is complete
        # and no pid in it can be recycled before the signal lands.
        _write(state, "FROZEN")
        try:
            _wait_until(lambda: _read(state).strip() == "FROZEN", FREEZE_WAIT_S)
            self.kill_members(key, self.members(self.existing_session_dirs(key)))
        finally:
            # SIGKILL takes effect once the processes run again.
            _write(state, "THAWED")

    def oom_killed(self, key: str) -> bool:
        memory = self.trees["memory"].session_dir(key)
        try:
            kills = _keyed("oom_kill")(_read(memory / "memory.oom_control"))
            if kills is not None:
                return kills > 0
            # Kernels before 4.13 do not count kills; reaching the limit is the nearest sign.
            return int(_read(memory / "memory.failcnt")) > 0
        except OSError:
            return False

    def oom_kills_file(self, key: str) -> Path:
        return self.trees["memory"].session_dir(key) / "memory.oom_control"


class CgroupV2(CgroupVersion):
    name = "v2"
    settings = V2_SETTINGS
    readings = V2_READINGS
    swap_file = "memory.swap.max"
    weight_file = "cpu.weight"
    weight = str(V2_CPU_WEIGHT)
    threads_file = "cgroup.threads"
    quota_file = "cpu.max"

    @property
    def tree(self) -> Tree:
        return self.trees["memory"]

    def make_parents(self) -> None:
        # Each group from the anchor down to the parent must hand the controllers on.
        tree = self.tree
        anchor = tree.directory(tree.anchor_path)
        offered = _read(anchor / "cgroup.controllers").split()
        wanted = [controller for controller in _V2_CONTROLLERS if controller in offered]
        _enable_controllers(anchor, wanted)
        path = tree.anchor_path
        for name in posixpath.relpath(tree.parent_path, tree.anchor_path).split("/"):
            path = posixpath.join(path, name)
            tree.directory(path).mkdir(exist_ok=True)
            _enable_controllers(tree.directory(path), wanted)

    def cpu_pressure(self, key: str) -> CpuPressure | None:
        try:
            stat = _read(self.tree.session_dir(key) / "cpu.stat")
        except OSError:
            return None
        used, throttled = _keyed("usage_usec")(stat), _keyed("throttled_usec")(stat)
        if used is None or throttled is None:
            return None
        return CpuPressure(used * 1000, throttled * 1000)

    def cpuset_file(self, key: str) -> Path | None:
        # Only where the host already hands the cpuset controller down to the sessions.
        path = self.tree.session_dir(key) / "cpuset.cpus"
        return path if path.exists() else None

    def all_cores(self, key: str) -> str:
        return "\n"  # empty: the parent's cores (a write of no bytes would not reach it)

    def kill_all_at_once(self, key: str) -> None:
        kill = self.tree.session_dir(key) / "cgroup.kill"
        if kill.exists():  # Linux 5.14+
            _write(kill, "1")

    def oom_killed(self, key: str) -> bool:
        return self.oom_kills(key) > 0

    def oom_kills_file(self, key: str) -> Path:
        return self.tree.session_dir(key) / "memory.events"


def _enable_controllers(group: Path, controllers: Iterable[str]) -> None:
    enabled = _read(group / "cgroup.subtree_control").split()
    missing = [controller for controller in controllers if controller not in enabled]
    if not missing:
        return
    try:
        _write(group / "cgroup.subtree_control", " ".join(f"+{name}" for name in missing))
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        raise OSError(
            errno.EBUSY,
            f"{group} holds processes, so cgroup v2 will not give its children the "
            f"{', '.join(missing)} controllers; run the service in a leaf group and use an "
            "absolute parent group",
        ) from exc


def _prepare_v1_cpuset(tree: Tree) -> None:
    """Give each group from the anchor down to the parent its cores and memory nodes.

    A v1 cpuset group starts with none, and takes no process until it has both;
    clone_children makes the parent hand its own to every session group made in it.
    """
    path = tree.anchor_path
    for name in posixpath.relpath(tree.parent_path, tree.anchor_path).split("/"):
        above = tree.directory(path)
        path = posixpath.join(path, name)
        group = tree.directory(path)
        for filename in ("cpuset.cpus", "cpuset.mems"):
            if not _read(group / filename).strip():
                _write(group / filename, _read(above / filename).strip())
    _write(tree.directory(tree.parent_path) / "cgroup.clone_children", "1")


def may_restore_policies() -> bool:
    """Whether this process holds CAP_SYS_NICE, which a thread's way out of SCHED_IDLE
    takes when its own RLIMIT_NICE is 0."""
    try:
        for line in _read(Path("/proc/self/status")).splitlines():
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
            listed = _read(threads).split()
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


def _kill_if_member(pid: int, memberships: frozenset[tuple[str, str]]) -> None:
    """SIGKILL pid if that process is still in the session.

    The pidfd pins one process: if the pid was recycled after cgroup.procs was read, the
    membership check sees the newcomer and spares it; if the process then exits, the
    signal fails rather than reach a successor.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if _memberships_of(pid) & memberships:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _memberships_of(pid: int) -> set[tuple[str, str]]:
    try:
        text = _read(Path(f"/proc/{pid}/cgroup"))
    except (FileNotFoundError, ProcessLookupError):
        return set()
    found: set[tuple[str, str]] = set()
    for line in text.splitlines():
        _hierarchy_id, label, path = line.split(":", 2)
        found.add((label, path))
    return found


def _remove_when_released(directory: Path, deadline: float) -> None:
    # An emptied group can stay busy for a moment while the kernel finishes the exits.
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(_POLL_S)


# ---------------------------------------------------------------------------------------
# Finding the trees: /proc/self/mountinfo says what is mounted where, /proc/self/cgroup
# where the caller sits in each hierarchy.


@dataclass(frozen=True)
class _Mount:
    point: Path
    root: str
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: frozenset[str]  # super options; for v1 they name the tree's controllers


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _cgroup_mounts(mountinfo: str) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or not tail or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(",")) if len(tail) > 2 else frozenset()
        mounts.append(_Mount(Path(_unescape(fields[4])), _unescape(fields[3]), tail[0], options))
    return mounts


def _own_groups(proc_cgroup: str) -> dict[str, tuple[str, str]]:
    """controller -> (hierarchy label, path) of the caller; v2 under the controller ''."""
    groups: dict[str, tuple[str, str]] = {}
    for line in proc_cgroup.splitlines():
        _hierarchy_id, label, path = line.split(":", 2)
        for controller in label.split(",") if label else [""]:
            groups[controller] = (label, path)
    return groups


def _is_within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def _tree(mount: _Mount, own: tuple[str, str] | None, parent: str) -> Tree | str:
    if own is None:
        return f"this process has no group in the tree at {mount.point}"
    label, own_path = own
    if parent.startswith("/"):
        anchor = mount.root
    elif _is_within(own_path, mount.root):
        anchor = own_path
    else:
        return f"this process's group {own_path} is outside the tree shown at {mount.point}"
    parent_path = posixpath.normpath(posixpath.join(anchor, parent.strip("/")))
    return Tree(mount.point, mount.root, label, anchor, parent_path)


def _v2_if_usable(
    mounts: list[_Mount], own: dict[str, tuple[str, str]], parent: str
) -> CgroupV2 | str:
    mount = next((mount for mount in mounts if mount.fstype == "cgroup2"), None)
    if mount is None:
        return "cgroup v2: not mounted"
    tree = _tree(mount, own.get(""), parent)
    if isinstance(tree, str):
        return f"cgroup v2: {tree}"
    try:
        offered = _read(tree.directory(tree.anchor_path) / "cgroup.controllers").split()
    except OSError as exc:
        return f"cgroup v2: {exc}"
    missing = [name for name in _REQUIRED_CONTROLLERS if name not in offered]
    if missing:
        return (
            f"cgroup v2 at {mount.point} offers no {' or '.join(missing)} controller "
            f"at {tree.anchor_path}"
        )
    return CgroupV2(dict.fromkeys(_V2_CONTROLLERS, tree))


def _v1_if_usable(
    mounts: list[_Mount], own: dict[str, tuple[str, str]], parent: str
) -> CgroupV1 | str:
    trees: dict[str, Tree] = {}
    for controller in _V1_CONTROLLERS:
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        if mount is None:
            continue
        if controller == "cpuset" and mount.options & (set(_V1_CONTROLLERS) - {"cpuset"}):
            continue  # optional, so only in a tree of its own: its set-up may fail alone
        tree = _tree(mount, own.get(controller), parent)
        if isinstance(tree, Tree):
            trees[controller] = tree
        elif controller in _REQUIRED_CONTROLLERS:
            return f"cgroup v1: {tree}"
    missing = [name for name in _REQUIRED_CONTROLLERS if name not in trees]
    if missing:
        return f"cgroup v1: no {' or '.join(missing)} controller mounted"
    return CgroupV1(trees)


def _check_parent(parent: str) -> None:
    names = parent.strip("/").split("/")
    if not all(_GROUP_NAME.fullmatch(name) and name not in (".", "..") for name in names):
        raise ValueError(f"not a cgroup parent path: {parent!r}")


def _check_key(key: str) -> str:
    if not _SESSION_KEY.fullmatch(key):
        raise ValueError(f"session key must match {_SESSION_KEY.pattern}: {key!r}")
    return key


def select_version(
    parent: str = PARENT_GROUP,
    *,
    mountinfo: str | None = None,
    proc_cgroup: str | None = None,
) -> CgroupVersion | str:
    """The cgroup interface to use for parent, or why there is none.

    The texts default to this process's /proc/self/mountinfo and /proc/self/cgroup.
    """
    _check_parent(parent)
    try:
        if mountinfo is None:
            mountinfo = _read(Path("/proc/self/mountinfo"))
        if proc_cgroup is None:
            proc_cgroup = _read(Path("/proc/self/cgroup"))
    except OSError as exc:
        return f"cannot read /proc: {exc}"
    mounts, own = _cgroup_mounts(mountinfo), _own_groups(proc_cgroup)
    v2 = _v2_if_usable(mounts, own, parent)
    if isinstance(v2, CgroupV2):
        return v2
    v1 = _v1_if_usable(mounts, own, parent)
    if isinstance(v1, CgroupV1):
        return v1
    return f"{v2}; {v1}"


def _explain(version: CgroupVersion, exc: OSError) -> str:
    reason = f"{version.name}: {exc}"
    if isinstance(exc, PermissionError) and os.geteuid() != 0:
        reason += " (not root, and no cgroup was delegated to this user)"
    return reason


# ---------------------------------------------------------------------------------------
# The layer's functions.


def apply(spec: WorkerSpec, parent: str = PARENT_GROUP, pid: int | None = None) -> LayerStatus:
    """Make the session's groups, set limits, and move the worker in (as root).

    ``pid`` names the worker from outside (the intermediate process does this before it
    lets the worker start); None moves the calling process.
    """
    key = _check_key(spec.session_key)
    version = select_version(parent)
    if isinstance(version, str):
        return LayerStatus("cgroup", False, version)
    limits = SessionLimits.from_policy(spec.policy)
    try:
        written = version.create(key, limits)
        version.enter(key, pid)
    except OSError as exc:
        version.discard(key)
        return LayerStatus("cgroup", False, _explain(version, exc))
    return LayerStatus("cgroup", True, version.describe(limits, written))


def probe(parent: str = PARENT_GROUP) -> str | None:
    """None if a session group with memory and pids limits can be made here, else why not."""
    version = select_version(parent)
    if isinstance(version, str):
        return version
    # '.' never occurs in a session key, so the probe group cannot meet a real session.
    probe_key = f"probe.{os.getpid()}"
    try:
        version.create(probe_key, _PROBE_LIMITS)
    except OSError as exc:
        return _explain(version, exc)
    finally:
        version.discard(probe_key)
    return None


def kill_and_remove(session_key: str, parent: str = PARENT_GROUP) -> None:
    """SIGKILL every process of the session, wait until its groups are empty, remove them.

    Idempotent: a group already gone is nothing to do.  Raises OSError only if processes
    outlive SIGKILL by KILL_WAIT_S (a task stuck in the kernel) or a group cannot be
    removed.  Read usage() and oom_killed() before: their figures go with the groups.
    """
    version = select_version(parent)
    if isinstance(version, CgroupVersion):
        version.kill_and_remove(_check_key(session_key))


def usage(session_key: str, parent: str = PARENT_GROUP) -> dict[str, int]:
    """Current memory_bytes, memory_peak_bytes, pids and cpu_ns, as far as the kernel
    reports them; {} when the session has no group."""
    version = select_version(parent)
    if isinstance(version, str):
        return {}
    return version.usage(_check_key(session_key))


def oom_killed(session_key: str, parent: str = PARENT_GROUP) -> bool:
    """Whether the kernel killed a process of the session for exceeding its memory limit.

    Call it before kill_and_remove(), which removes the counter with the group.
    """
    version = select_version(parent)
    if isinstance(version, str):
        return False
    return version.oom_killed(_check_key(session_key))


def session_paths(session_key: str, parent: str = PARENT_GROUP) -> list[Path]:
    """The session's group directories that exist now, one per tree."""
    version = select_version(parent)
    if isinstance(version, str):
        return []
    return version.existing_session_dirs(_check_key(session_key))


def remove_all_sessions(parent: str = PARENT_GROUP) -> None:
    """End every session under parent and remove the parent group itself.

    For a service starting after a crash, and for tests that used a parent of their own.
    Only for a parent no one else uses: in a tree where the caller sits at the top (here
    pids, cpu and freezer), every service on the host that keeps the default parent
    shares the same ``codesherpa`` group.
    """
    version = select_version(parent)
    if isinstance(version, str):
        return
    parents = [tree.directory(tree.parent_path) for tree in version.distinct_trees()]
    keys = {
        entry.name
        for directory in parents
        if directory.is_dir()
        for entry in directory.iterdir()
        if entry.is_dir()
    }
    for key in sorted(keys):
        version.kill_and_remove(key)
    deadline = time.monotonic() + KILL_WAIT_S
    for directory in parents:
        _remove_when_released(directory, deadline)
