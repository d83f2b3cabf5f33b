"""One session's groups, whichever the version: made, entered, read, killed and removed.

``CgroupVersion`` holds what v1 and v2 do alike; ``v1.py`` and ``v2.py`` supply each
version's tables and the few steps that differ.  The CPU switches that hold a busy
session come from ``sandbox/cpu_demotion.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path

from sandbox.confine.cgroup.files import POLL_S, keyed, read_file, write_file
from sandbox.confine.cgroup.limits import (
    CPU_QUOTA_CPUS,
    MB,
    Need,
    Reading,
    SessionLimits,
    Setting,
)
from sandbox.confine.cgroup.tree import Tree
from sandbox.cpu_demotion import CpuDemotion

# How long kill_and_remove waits for a killed session to empty before it reports failure.
KILL_WAIT_S = 2.0


def parse_oom_kills(text: str) -> int:
    return keyed("oom_kill")(text) or 0


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


class CgroupVersion(CpuDemotion):
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
            return parse_oom_kills(read_file(self.oom_kills_file(key)))
        except OSError:
            return 0

    def kill_all_but(self, key: str, keep: int, timeout_s: float = 1.0) -> None:
        """SIGKILL every process of the session except ``keep`` (its worker)."""
        directories = self.existing_session_dirs(key)
        deadline = time.monotonic() + timeout_s
        while (strays := self.members(directories) - {keep}) and time.monotonic() < deadline:
            self.kill_members(key, strays)
            time.sleep(POLL_S)

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
                write_file(path, value)
            except OSError:
                if setting.need is not Need.BEST_EFFORT:
                    raise
                continue
            written[setting.filename] = value
        return written

    def enter(self, key: str, pid: int | None = None) -> None:
        # "0" names the writer itself, which works from inside a pid namespace too.
        for directory in self.session_dirs(key):
            write_file(directory / "cgroup.procs", "0" if pid is None else str(pid))

    def discard(self, key: str) -> None:
        """Best effort after a failed apply: groups the caller already entered stay for
        kill_and_remove."""
        for directory in self.session_dirs(key):
            with contextlib.suppress(OSError):
                directory.rmdir()

    def describe(self, limits: SessionLimits, written: Mapping[str, str]) -> str:
        swap = "swap cannot extend it" if self.swap_file in written else "swap not limited"
        parts = [f"memory {limits.memory_bytes // MB} MB ({swap})", f"pids {limits.processes}"]
        if self.weight_file in written:
            cpu = f"cpu equal weight ({self.weight_file}={written[self.weight_file]})"
            if self.quota_file in written and CPU_QUOTA_CPUS is not None:
                cpu += f", at most {CPU_QUOTA_CPUS:g} CPU"
            parts.append(cpu)
        return f"{self.name}: " + ", ".join(parts)

    def process_count(self, key: str) -> int:
        """How many processes the session has (its worker and what it started)."""
        try:
            return len(read_file(self.trees["pids"].session_dir(key) / "cgroup.procs").split())
        except OSError:
            return 0

    def members(self, directories: Iterable[Path]) -> set[int]:
        pids: set[int] = set()
        for directory in directories:
            try:
                text = read_file(directory / "cgroup.procs")
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
                text = read_file(tree.session_dir(key) / reading.filename)
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
            time.sleep(POLL_S)
        for directory in directories:
            remove_when_released(directory, deadline)


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
        text = read_file(Path(f"/proc/{pid}/cgroup"))
    except (FileNotFoundError, ProcessLookupError):
        return set()
    found: set[tuple[str, str]] = set()
    for line in text.splitlines():
        _hierarchy_id, label, path = line.split(":", 2)
        found.add((label, path))
    return found


def remove_when_released(directory: Path, deadline: float) -> None:
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
            time.sleep(POLL_S)
