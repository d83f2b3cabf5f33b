"""Where a mounted cgroup hierarchy is, and where this service's groups sit in it."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path


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
