"""The layer's functions: each finds the version for the parent, then acts on one session."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.confine.cgroup.discovery import PARENT_GROUP, select_version
from sandbox.confine.cgroup.groups import KILL_WAIT_S, CgroupVersion, remove_when_released
from sandbox.confine.cgroup.limits import MB, SessionLimits

_SESSION_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PROBE_LIMITS = SessionLimits(memory_bytes=64 * MB, processes=8)


def _check_key(key: str) -> str:
    if not _SESSION_KEY.fullmatch(key):
        raise ValueError(f"session key must match {_SESSION_KEY.pattern}: {key!r}")
    return key


def _explain(version: CgroupVersion, exc: OSError) -> str:
    reason = f"{version.name}: {exc}"
    if isinstance(exc, PermissionError) and os.geteuid() != 0:
        reason += " (not root, and no cgroup was delegated to this user)"
    return reason


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
        remove_when_released(directory, deadline)
