"""The ready workers a zygote holds, written down for whoever cleans up after it.

A ready worker has a workspace (its own tmpfs when the service runs as root) and
cgroups, and only its zygote knows them until it hands the worker to the service.
When a zygote dies, its ready workers exit with it but those stay.  So the zygote
records each ready worker here, in a directory of its own, and strikes it off before
it hands the worker over; what a dead zygote's directory still lists belongs to no
session, and the service removes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

from sandbox import workspaces
from sandbox.confine import cgroup

# Workspaces and session keys are hex tokens; an entry that is not one is never acted on.
_TOKEN = re.compile(r"[0-9a-f]{16,64}")


def ledgers_root(state_dir: str) -> str:
    return os.path.join(state_dir, "pool")


def ledger_dir(state_dir: str, zygote_pid: int) -> str:
    return os.path.join(ledgers_root(state_dir), str(zygote_pid))


def record(state_dir: str, zygote_pid: int, workspace: str, session_key: str) -> None:
    """Write down a ready worker before it exists, so that no crash can hide it."""
    directory = ledger_dir(state_dir, zygote_pid)
    # makedirs gives its mode to the leaf only; the root must be as private.
    os.makedirs(ledgers_root(state_dir), mode=0o700, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, os.path.basename(workspace)), "w") as entry:
        entry.write(session_key)


def strike(state_dir: str, zygote_pid: int, workspace: str) -> None:
    """Strike a worker off: it is about to be the service's, or is gone.

    Raises OSError if the entry stays, so that a worker is never handed to a session
    while the ledger still names its workspace for removal.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(ledger_dir(state_dir, zygote_pid), os.path.basename(workspace)))


def clear(state_dir: str, zygote_pid: int, cgroup_parent: str) -> int:
    """Remove the workspaces and cgroups a zygote left listed; return how many."""
    directory = ledger_dir(state_dir, zygote_pid)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    root = workspaces.workspaces_root(state_dir)
    cleared = 0
    for name in names:
        try:
            with open(os.path.join(directory, name)) as entry:
                session_key = entry.read()
        except OSError:
            continue
        if _TOKEN.fullmatch(name):
            workspaces.remove(os.path.join(root, name))
            cleared += 1
        if _TOKEN.fullmatch(session_key):
            with contextlib.suppress(OSError, ValueError):
                cgroup.kill_and_remove(session_key, cgroup_parent)
    shutil.rmtree(directory, ignore_errors=True)
    return cleared
