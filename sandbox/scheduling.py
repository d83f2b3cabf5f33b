"""Let a request preempt session code: the service's time slice, and the sessions' default.

Linux's EEVDF scheduler lets a running task finish its slice before a task that has
just woken may take its CPU.  A session burning CPU would therefore hold every request
that wakes the service on its core for up to a slice (docs/cpu-scheduling.md).
Since Linux 6.12 a SCHED_OTHER task may ask for a shorter slice (``sched_runtime`` of
``sched_setattr``), and a woken task with a shorter slice preempts at once.  Its share
of the CPU does not change, only how soon it runs.

The service's threads take the short slice (``use_short_slice``); the zygote, which
the service starts and which inherits it, goes back to the kernel's default
(``use_default_slice``) before it forks any worker, so session code never gains the
same head start.  SCHED_FLAG_RESET_ON_FORK would do that in one step, but a task
holding that flag did not preempt the burner at all on Linux 6.18.  Older kernels
accept and ignore ``sched_runtime``; a kernel or seccomp profile that refuses the call
leaves the default, and the caller logs what happened.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

SHORT_SLICE_NS = 100_000  # the shortest slice the kernel accepts (0.1 ms)
# struct sched_attr (include/uapi/linux/sched/types.h): size, policy, flags, nice,
# priority, runtime, deadline, period, util_min, util_max.
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr


def _syscalls() -> tuple[int, int] | None:
    return _SYSCALLS.get(platform.machine())


def _set_slice(slice_ns: int) -> str | None:
    """Set the calling thread's slice (0: the kernel's default); why not, if it failed."""
    numbers = _syscalls()
    if numbers is None:
        return f"no sched_setattr number known for {platform.machine()}"
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        return "the thread does not run under SCHED_OTHER"
    # sched_setattr sets the nice value too: pass the current one (an operator's nice).
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = ctypes.create_string_buffer(
        _SCHED_ATTR.pack(_SCHED_ATTR.size, os.SCHED_OTHER, 0, nice, 0, slice_ns, 0, 0, 0, 0)
    )
    if ctypes.CDLL(None, use_errno=True).syscall(numbers[0], 0, attr, 0) != 0:
        return f"sched_setattr refused: {os.strerror(ctypes.get_errno())}"
    return None


def use_short_slice() -> str:
    """Give the calling thread, and threads it starts later, the short slice; say how it went."""
    refused = _set_slice(SHORT_SLICE_NS)
    if refused is not None:
        return f"default slice ({refused})"
    if slice_of(0) != SHORT_SLICE_NS:
        return "default slice (this kernel has no custom slices: Linux 6.12+)"
    return f"{SHORT_SLICE_NS / 1000:g} us slice"


def use_default_slice() -> None:
    """Drop an inherited short slice, before any session process is started."""
    _set_slice(0)


def slice_of(tid: int) -> int | None:
    """A thread's time slice in nanoseconds (0 before Linux 6.12), if it can be read."""
    numbers = _syscalls()
    if numbers is None:
        return None
    attr = ctypes.create_string_buffer(_SCHED_ATTR.size)
    if ctypes.CDLL(None, use_errno=True).syscall(numbers[1], tid, attr, _SCHED_ATTR.size, 0):
        return None
    runtime: int = _SCHED_ATTR.unpack(attr.raw)[5]
    return runtime
