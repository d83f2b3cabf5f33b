"""One owner per state directory.

The state directory holds every session's workspace and names the cgroup parent of its
workers.  Whoever starts a zygote there clears what an earlier owner left, so a second
service, ``codesherpa doctor`` or a test pointed at a running service's directory would
otherwise remove its workspaces and kill its sessions.  The owner is a process: it holds
an exclusive ``flock`` on ``<state_dir>/owner.lock`` (which names its pid) for as long as
any part of it still uses the directory, and the kernel releases it when the process
dies, however it dies.  Claims inside one process are counted, so a policy reload or a
zygote restart, which start a second zygote on the same directory, keep the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sandbox.errors import StateDirectoryInUse, StateDirectoryUnsafe

LOCK_NAME = "owner.lock"


@dataclass
class _Claim:
    fd: int
    count: int


_claims: dict[str, _Claim] = {}
_guard = threading.Lock()


def acquire(state_dir: str) -> None:
    """Own ``state_dir`` (created if missing), or raise StateDirectoryInUse."""
    key = os.path.realpath(state_dir)
    with _guard:
        claim = _claims.get(key)
        if claim is not None:
            claim.count += 1
            return
        os.makedirs(key, mode=0o711, exist_ok=True)
        _require_own(os.lstat(key), key, stat.S_ISDIR)
        try:
            fd = os.open(
                os.path.join(key, LOCK_NAME),
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o600,
            )
        except OSError as exc:
            raise StateDirectoryUnsafe(f"{key}/{LOCK_NAME}: {exc.strerror}") from None
        try:
            _require_own(os.fstat(fd), f"{key}/{LOCK_NAME}", stat.S_ISREG)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateDirectoryInUse(key, _read_pid(fd)) from None
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _claims[key] = _Claim(fd, 1)


def release(state_dir: str) -> None:
    """Give back one claim; the lock goes with the last."""
    key = os.path.realpath(state_dir)
    with _guard:
        claim = _claims.get(key)
        if claim is None:
            return
        claim.count -= 1
        if claim.count == 0:
            del _claims[key]
            os.close(claim.fd)


@contextlib.contextmanager
def claimed(state_dir: str) -> Iterator[None]:
    acquire(state_dir)
    try:
        yield
    finally:
        release(state_dir)


def owns(state_dir: str) -> bool:
    with _guard:
        return os.path.realpath(state_dir) in _claims


def _require_own(info: os.stat_result, path: str, right_kind: Callable[[int], bool]) -> None:
    """Refuse a state directory or lock file that another user could replace or hold."""
    if not right_kind(info.st_mode) or info.st_uid != os.geteuid():
        raise StateDirectoryUnsafe(f"{path}: not this service's own (owner uid {info.st_uid})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirectoryUnsafe(f"{path}: writable by others (mode {info.st_mode & 0o777:o})")


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
