"""cgroup v2, one unified tree: a single directory per session.

It holds memory.max, memory.swap.max, pids.max, cpu.weight and cpu.max; ``cgroup.kill``
ends every process.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Iterable
from pathlib import Path

from sandbox.confine.cgroup.files import keyed, read_file, write_file
from sandbox.confine.cgroup.groups import CgroupVersion
from sandbox.confine.cgroup.limits import V2_CPU_WEIGHT, V2_READINGS, V2_SETTINGS
from sandbox.confine.cgroup.tree import Tree
from sandbox.cpu_demotion import CpuPressure

V2_CONTROLLERS = ("memory", "pids", "cpu")


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
        offered = read_file(anchor / "cgroup.controllers").split()
        wanted = [controller for controller in V2_CONTROLLERS if controller in offered]
        _enable_controllers(anchor, wanted)
        path = tree.anchor_path
        for name in posixpath.relpath(tree.parent_path, tree.anchor_path).split("/"):
            path = posixpath.join(path, name)
            tree.directory(path).mkdir(exist_ok=True)
            _enable_controllers(tree.directory(path), wanted)

    def cpu_pressure(self, key: str) -> CpuPressure | None:
        try:
            stat = read_file(self.tree.session_dir(key) / "cpu.stat")
        except OSError:
            return None
        used, throttled = keyed("usage_usec")(stat), keyed("throttled_usec")(stat)
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
            write_file(kill, "1")

    def oom_killed(self, key: str) -> bool:
        return self.oom_kills(key) > 0

    def oom_kills_file(self, key: str) -> Path:
        return self.tree.session_dir(key) / "memory.events"


def _enable_controllers(group: Path, controllers: Iterable[str]) -> None:
    enabled = read_file(group / "cgroup.subtree_control").split()
    missing = [controller for controller in controllers if controller not in enabled]
    if not missing:
        return
    try:
        write_file(group / "cgroup.subtree_control", " ".join(f"+{name}" for name in missing))
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        raise OSError(
            errno.EBUSY,
            f"{group} holds processes, so cgroup v2 will not give its children the "
            f"{', '.join(missing)} controllers; run the service in a leaf group and use an "
            "absolute parent group",
        ) from exc
