"""Finding the trees, and choosing v1 or v2.

/proc/self/mountinfo says what is mounted where, /proc/self/cgroup where the caller sits
in each hierarchy.  v2 is chosen when its tree offers the memory and pids controllers
where the groups go, else v1 when both are mounted.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from sandbox.confine.cgroup.files import read_file
from sandbox.confine.cgroup.groups import CgroupVersion
from sandbox.confine.cgroup.tree import Tree
from sandbox.confine.cgroup.v1 import CgroupV1
from sandbox.confine.cgroup.v2 import V2_CONTROLLERS, CgroupV2

PARENT_GROUP = "codesherpa"

_GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_REQUIRED_CONTROLLERS = ("memory", "pids")
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer", "cpuset")


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
        offered = read_file(tree.directory(tree.anchor_path) / "cgroup.controllers").split()
    except OSError as exc:
        return f"cgroup v2: {exc}"
    missing = [name for name in _REQUIRED_CONTROLLERS if name not in offered]
    if missing:
        return (
            f"cgroup v2 at {mount.point} offers no {' or '.join(missing)} controller "
            f"at {tree.anchor_path}"
        )
    return CgroupV2(dict.fromkeys(V2_CONTROLLERS, tree))


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
            mountinfo = read_file(Path("/proc/self/mountinfo"))
        if proc_cgroup is None:
            proc_cgroup = read_file(Path("/proc/self/cgroup"))
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
