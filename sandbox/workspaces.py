"""Session workspaces on the host: create, hand to another uid, remove.

When the service runs as root each workspace is its own size- and inode-bounded
tmpfs, so a session that fills its disk fills only its quota, and the directory of all
workspaces is a mount of its own: a worker detaches it from its mount namespace, and
with it every other workspace, in one call however many sessions there are.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
# One inode per 16 KiB of quota: many small files are fine, an inode flood is not.
BYTES_PER_INODE = 16 * 1024
# Entries re-owned at most when a kept workspace changes uid (see hand_over).
MAX_HANDED_OVER = 50_000
MAX_DEPTH = 256  # directories held open at once while re-owning
_DIRECTORY_NO_FOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def _mount_id(path: str) -> int:
    descriptor = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{descriptor}", encoding="ascii") as info:
            for line in info:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    finally:
        os.close(descriptor)
    raise OSError(f"no mount id for {path}")


def is_mount_point(path: str) -> bool:
    """Whether ``path`` is the root of a mount, a bind of a directory onto itself
    included (``os.path.ismount`` misses those: same device, different inode)."""
    real = os.path.realpath(path)
    return _mount_id(real) != _mount_id(os.path.dirname(real))


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {target}: {os.strerror(errno)}")


def mount_root(state_dir: str) -> bool:
    """As root, make the directory of all workspaces a mount point: bound onto itself,
    recursively (a workspace already mounted there stays seen), and private, so that
    the workspaces mounted beneath it propagate nowhere.  Whether it is one.

    Where mounting is not allowed (root without CAP_SYS_ADMIN, in a container) no
    workspace is a mount either, and a worker's tmpfs over the directory hides them.
    """
    root = workspaces_root(state_dir)
    if is_mount_point(root):
        return True
    if os.geteuid() != 0:
        return False
    try:
        _mount(root, root, MS_BIND | MS_REC)
    except OSError:
        return False
    try:
        _mount("none", root, MS_PRIVATE)
    except OSError:
        _libc.umount2(root.encode(), MNT_DETACH)
        return False
    return True


def release_root(state_dir: str) -> None:
    """Unmount the bind ``mount_root`` made, once no workspace is mounted beneath it.

    Not a lazy unmount: the kernel refuses it (EBUSY) while any workspace is mounted
    there, so a running session's workspace is never cut off from the host's view.  A
    mount of another filesystem (an operator's own) is left alone.
    """
    root = workspaces_root(state_dir)
    if not os.path.isdir(root) or not is_mount_point(root):
        return
    if os.stat(root).st_dev != os.stat(os.path.dirname(os.path.realpath(root))).st_dev:
        return
    _libc.umount2(root.encode(), 0)


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
    under it, and may be changing the tree meanwhile); the zygote serves every spawn in
    turn, so this work is bounded.  Each directory is opened relative to its parent
    without following a link, and each entry re-owned relative to its directory: a
    directory swapped for a link to a host path mid-walk is skipped, never followed.
    """
    root = os.open(path, _DIRECTORY_NO_FOLLOW)
    os.fchown(root, uid, uid)
    handed = 0
    walk: list[tuple[int, Iterator[tuple[str, bool]]]] = [(root, _entries(root))]
    try:
        while walk and handed < MAX_HANDED_OVER:
            directory, entries = walk[-1]
            entry = next(entries, None)
            if entry is None:
                walk.pop()
                os.close(directory)
                continue
            name, is_directory = entry
            handed += 1
            try:
                os.chown(name, uid, uid, dir_fd=directory, follow_symlinks=False)
                if is_directory and len(walk) < MAX_DEPTH:
                    child = os.open(name, _DIRECTORY_NO_FOLLOW, dir_fd=directory)
                    walk.append((child, _entries(child)))
            except OSError:
                continue
    finally:
        for directory, _ in walk:
            os.close(directory)


def _entries(directory: int) -> Iterator[tuple[str, bool]]:
    """The names in an open directory, and which were directories (a workspace's inode
    limit bounds how many)."""
    with os.scandir(directory) as listing:
        return iter([(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing])


def remove_all(state_dir: str) -> None:
    """Delete every workspace under ``state_dir``: for a service starting afresh."""
    root = workspaces_root(state_dir)
    if not os.path.isdir(root):
        return
    for entry in os.listdir(root):
        remove(os.path.join(root, entry))
    release_root(state_dir)


def remove(path: str) -> None:
    """Unmount (when it is a tmpfs) and delete a workspace; missing is fine."""
    if os.path.ismount(path):
        _libc.umount2(path.encode(), MNT_DETACH)
    shutil.rmtree(path, ignore_errors=True)
