"""The ready workers a zygote holds, written down for whoever cleans up after it.

A ready worker has a workspace (its own tmpfs when the service runs as root) and
cgroups, and only its zygote knows them until it hands the worker to the service.
When a zygote dies, its ready workers exit with it but those stay.  So the zygote
records each ready worker here, in a directory of its own, and strikes it off before
it hands the worker over; what a dead zygote's directory still lists belongs to no
session, and the service removes it.  The directory is named by a token the service
draws for each zygote it starts, never by the zygote's pid, which a later zygote may
get again.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil

from sandbox import workspaces
from sandbox.confine import cgroup

# Workspace names and session keys are hex tokens (workspaces.new_path, secrets.token_hex(8)
# in the zygote); an entry that is not one is never acted on.
_WORKSPACE_NAME = re.compile(r"[0-9a-f]{32}")
_SESSION_KEY = re.compile(r"[0-9a-f]{16}")
_LEDGER = re.compile(r"[0-9a-f]{16}")


def new_ledger() -> str:
    """A name for the ledger of a zygote about to start."""
    return secrets.token_hex(8)


def ledgers_root(state_dir: str) -> str:
    return os.path.join(state_dir, "pool")


def ledger_dir(state_dir: str, ledger: str) -> str:
    if not _LEDGER.fullmatch(ledger):
        raise ValueError(f"not a ledger name: {ledger!r}")
    return os.path.join(ledgers_root(state_dir), ledger)


def record(state_dir: str, ledger: str, workspace: str, session_key: str) -> None:
    """Write down a ready worker before it exists, so that no crash can hide it."""
    directory = ledger_dir(state_dir, ledger)
    # makedirs gives its mode to the leaf only; the root must be as private.
    os.makedirs(ledgers_root(state_dir), mode=0o700, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, os.path.basename(workspace)), "w") as entry:
        entry.write(session_key)


def strike(state_dir: str, ledger: str, workspace: str) -> None:
    """Strike a worker off: it is about to be the service's, or is gone.

    Raises OSError if the entry stays, so that a worker is never handed to a session
    while the ledger still names its workspace for removal.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(ledger_dir(state_dir, ledger), os.path.basename(workspace)))


def clear(state_dir: str, ledger: str, cgroup_parent: str) -> int:
    """Remove the workspaces and cgroups a zygote left listed; return how many."""
    directory = ledger_dir(state_dir, ledger)
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
        if _WORKSPACE_NAME.fullmatch(name):
            workspaces.remove(os.path.join(root, name))
            cleared += 1
        if _SESSION_KEY.fullmatch(session_key):
            with contextlib.suppress(OSError, ValueError):
                cgroup.kill_and_remove(session_key, cgroup_parent)
    shutil.rmtree(directory, ignore_errors=True)
    return cleared
