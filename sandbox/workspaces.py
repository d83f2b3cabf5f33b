"""Session workspaces on the host: create, hand to another uid, remove.

When the service runs as root each workspace is its own size- and inode-bounded
tmpfs, so a session that fills its disk fills only its quota.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
MS_NOSUID = 0x2
MS_NODEV = 0x4
# One inode per 16 KiB of quota: many small files are fine, an inode flood is not.
BYTES_PER_INODE = 16 * 1024
# Entries re-owned at most when a kept workspace changes uid (see hand_over).
MAX_HANDED_OVER = 50_000


def workspaces_root(state_dir: str) -> str:
    return os.path.join(state_dir, "workspaces")


def prepare_root(state_dir: str) -> str:
    root = workspaces_root(state_dir)
    os.makedirs(root, mode=0o711, exist_ok=True)
    # Traversable, not listable: a session's uid reaches its own workspace by name
    # and cannot enumerate the others.
    os.chmod(state_dir, 0o711)  # noqa: S103
    os.chmod(root, 0o711)  # noqa: S103
    return root


def new_path(state_dir: str) -> str:
    """Where a fresh workspace goes: a name no other workspace has, or can guess."""
    return os.path.join(workspaces_root(state_dir), secrets.token_hex(16))


def create(path: str, uid: int | None, quota_mb: int) -> bool:
    """Make a fresh workspace at ``path`` (from new_path); return whether a quota holds it."""
    os.mkdir(path, 0o700)
    bounded = False
    if os.geteuid() == 0:
        inodes = max(quota_mb * 1024 * 1024 // BYTES_PER_INODE, 1024)
        options = f"size={quota_mb}m,nr_inodes={inodes},mode=0700"
        if uid is not None:
            options += f",uid={uid},gid={uid}"
        result = _libc.mount(
            b"tmpfs",
            path.encode(),
            b"tmpfs",
            ctypes.c_ulong(MS_NOSUID | MS_NODEV),
            options.encode(),
        )
        bounded = result == 0
    if uid is not None and not bounded:
        os.chown(path, uid, uid)
    return bounded


def hand_over(path: str, uid: int) -> None:
    """Give the files of a kept workspace to another uid: at most MAX_HANDED_OVER.

    Only when the workspace's own uid cannot be taken back (a process still runs
    under it); the zygote serves every spawn in turn, so this work is bounded.
    """
    os.lchown(path, uid, uid)
    handed = 0
    stack = [path]
    while stack and handed < MAX_HANDED_OVER:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                handed += 1
                if handed > MAX_HANDED_OVER:
                    break
                try:
                    os.lchown(entry.path, uid, uid)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                except OSError:
                    continue


def remove_all(state_dir: str) -> None:
    """Delete every workspace under ``state_dir``: for a service starting afresh."""
    root = workspaces_root(state_dir)
    if not os.path.isdir(root):
        return
    for entry in os.listdir(root):
        remove(os.path.join(root, entry))


def remove(path: str) -> None:
    """Unmount (when it is a tmpfs) and delete a workspace; missing is fine."""
    if os.path.ismount(path):
        _libc.umount2(path.encode(), MNT_DETACH)
    shutil.rmtree(path, ignore_errors=True)
