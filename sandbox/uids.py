"""Per-session uids, when the service runs as root.

A new worker gets a uid from the session range that no running process uses and no
workspace belongs to, so no two sessions share one.  A worker replacing another in
a kept workspace (a restart, a worker lost) takes the workspace's owner back once
nothing runs under it any more: its files are already that uid's, and nothing needs
re-owning.  Re-owning is the fallback, for a uid still in use, and is bounded.
"""

from __future__ import annotations

import os
import random

UID_RANGE_START = 200_000
UID_RANGE_SIZE = 65_536


def in_session_range(uid: int) -> bool:
    return UID_RANGE_START <= uid < UID_RANGE_START + UID_RANGE_SIZE


class UidAllocator:
    def __init__(self, workspaces_root: str) -> None:
        self._workspaces_root = workspaces_root
        self._next = random.randrange(UID_RANGE_SIZE)  # noqa: S311 - a start point, not a secret

    def allocate(self) -> int | None:
        if os.geteuid() != 0:
            return None
        busy = uids_in_use() | self._workspace_owners()
        for _ in range(UID_RANGE_SIZE):
            uid = UID_RANGE_START + self._next
            self._next = (self._next + 1) % UID_RANGE_SIZE
            if uid not in busy:
                return uid
        raise RuntimeError("no free uid left in the session range")

    def reclaim(self, workspace: str) -> int | None:
        """The owner of a kept workspace, if a session uid that no process runs as."""
        if os.geteuid() != 0:
            return None
        owner = os.lstat(workspace).st_uid
        if not in_session_range(owner) or owner in uids_in_use():
            return None
        return owner

    def _workspace_owners(self) -> set[int]:
        owners: set[int] = set()
        try:
            entries = os.listdir(self._workspaces_root)
        except OSError:
            return owners
        for name in entries:
            try:
                owners.add(os.lstat(os.path.join(self._workspaces_root, name)).st_uid)
            except OSError:
                continue
        return owners


def uids_in_use() -> set[int]:
    """Every uid a process on the host runs as (real, effective, saved or filesystem).

    Read from /proc/<pid>/status: a worker is not dumpable, and the owner of its
    /proc/<pid> directory is then root, whatever uid it runs as.
    """
    uids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        uids.update(int(field) for field in line.split()[1:])
                        break
        except (OSError, ValueError):
            continue
    return uids
