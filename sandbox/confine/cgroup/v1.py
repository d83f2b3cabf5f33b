"""cgroup v1: one tree per controller, a directory per session in each.

The memory, pids and cpu trees, plus cpuacct (cpu time), freezer (a kill no fork can
outrun) and cpuset (see ``sandbox/core_watch.py``) when those are mounted.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from sandbox.confine.cgroup.files import keyed, read_file, wait_until, write_file
from sandbox.confine.cgroup.groups import CgroupVersion
from sandbox.confine.cgroup.limits import V1_CPU_SHARES, V1_READINGS, V1_SETTINGS, SessionLimits
from sandbox.confine.cgroup.tree import Tree
from sandbox.cpu_demotion import CpuPressure

# How long the v1 freezer may take to stop every process before the kill goes ahead anyway.
FREEZE_WAIT_S = 0.5


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
                write_file(tree.session_dir(key) / "cgroup.procs", "0" if pid is None else str(pid))
        if cpuset is not None:
            try:
                write_file(
                    cpuset.session_dir(key) / "cgroup.procs", "0" if pid is None else str(pid)
                )
            except OSError:
                del self.trees["cpuset"]

    def cpu_pressure(self, key: str) -> CpuPressure | None:
        cpu, cpuacct = self.trees.get("cpu"), self.trees.get("cpuacct")
        if cpu is None or cpuacct is None:
            return None
        try:
            throttled = keyed("throttled_time")(read_file(cpu.session_dir(key) / "cpu.stat"))
            used = int(read_file(cpuacct.session_dir(key) / "cpuacct.usage"))
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
        return read_file(
            self.trees["cpuset"].directory(self.trees["cpuset"].parent_path) / "cpuset.cpus"
        ).strip()

    def create(self, key: str, limits: SessionLimits) -> dict[str, str]:
        written = super().create(key, limits)
        # A group inherits oom_kill_disable from its parent and would then hang at its limit
        # instead of being killed.  Written only when needed: the file is deprecated and a
        # write puts a warning in the kernel log.
        oom_control = self.trees["memory"].session_dir(key) / "memory.oom_control"
        if oom_control.exists() and keyed("oom_kill_disable")(read_file(oom_control)) == 1:
            write_file(oom_control, "0")
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
        write_file(state, "FROZEN")
        try:
            wait_until(lambda: read_file(state).strip() == "FROZEN", FREEZE_WAIT_S)
            self.kill_members(key, self.members(self.existing_session_dirs(key)))
        finally:
            # SIGKILL takes effect once the processes run again.
            write_file(state, "THAWED")

    def oom_killed(self, key: str) -> bool:
        memory = self.trees["memory"].session_dir(key)
        try:
            kills = keyed("oom_kill")(read_file(memory / "memory.oom_control"))
            if kills is not None:
                return kills > 0
            # Kernels before 4.13 do not count kills; reaching the limit is the nearest sign.
            return int(read_file(memory / "memory.failcnt")) > 0
        except OSError:
            return False

    def oom_kills_file(self, key: str) -> Path:
        return self.trees["memory"].session_dir(key) / "memory.oom_control"


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
            if not read_file(group / filename).strip():
                write_file(group / filename, read_file(above / filename).strip())
    write_file(tree.directory(tree.parent_path) / "cgroup.clone_children", "1")
