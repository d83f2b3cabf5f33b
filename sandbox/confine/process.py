"""Layer 1: a new session and process group; the worker adopts orphans and dies with its parent."""

from __future__ import annotations

import ctypes
import os
import signal
import time

from sandbox.confine.base import LayerStatus, WorkerSpec

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def parent_pid() -> int:
    """The parent's pid as /proc sees it (the host's view until /proc is remounted).

    ``os.getppid()`` answers 0 in a new PID namespace whose parent is outside it.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise OSError("no PPid line in /proc/self/status")


def die_with_parent(expected_parent: int, wait_s: float = 5.0) -> None:
    """SIGKILL when ``expected_parent`` goes; exit now if it already went.

    A worker is re-parented to the service when its intermediate exits.  The signal
    is armed only once that has happened: armed earlier, the intermediate's exit
    would fire it.
    """
    give_up = time.monotonic() + wait_s
    while parent_pid() != expected_parent:
        if time.monotonic() > give_up:
            os._exit(1)
        time.sleep(0.0005)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid() != expected_parent:
        os._exit(1)


def apply(spec: WorkerSpec) -> LayerStatus:
    if os.getsid(0) != os.getpid():
        os.setsid()
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    return LayerStatus(
        "process", True, "own session and group; child subreaper; dies with the service"
    )
