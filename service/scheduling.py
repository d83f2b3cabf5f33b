"""Let a request preempt session code: the service asks the kernel for a short time slice.

Linux's EEVDF scheduler lets a running task finish its slice (about 1.5 ms on two
cores) before a task that has just woken may take its CPU.  A session burning CPU
would therefore hold every request that wakes the service on its core for up to a
slice: the benchmark's neighbour p99 went from 1.1 ms to 3-4 ms beside one CPU burner.
Since Linux 6.12 a SCHED_OTHER task may ask for a shorter slice (``sched_runtime`` of
``sched_setattr``), and a woken task with a shorter slice preempts at once.  Its share
of the CPU does not change, only how soon it runs.

The flag SCHED_FLAG_RESET_ON_FORK keeps the short slice to the service's own thread:
the zygote, and through it every session worker, start with the kernel's default, so
session code never gains the same head start.  Older kernels accept and ignore
``sched_runtime``; a kernel or seccomp profile that refuses the call leaves the
default, which ``apply`` reports.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

SLICE_NS = 100_000  # the shortest slice the kernel accepts (0.1 ms)
SCHED_FLAG_RESET_ON_FORK = 0x01
# struct sched_attr (include/uapi/linux/sched/types.h): size, policy, flags, nice,
# priority, runtime, deadline, period, util_min, util_max.
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr


def _syscalls() -> tuple[int, int] | None:
    return _SYSCALLS.get(platform.machine())


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def apply(slice_ns: int = SLICE_NS) -> str:
    """Give the calling thread a short slice, not inherited by what it starts; say what happened."""
    numbers = _syscalls()
    if numbers is None:
        return f"default slice: no sched_setattr number known for {platform.machine()}"
    attr = ctypes.create_string_buffer(
        _SCHED_ATTR.pack(
            _SCHED_ATTR.size, os.SCHED_OTHER, SCHED_FLAG_RESET_ON_FORK, 0, 0, slice_ns, 0, 0, 0, 0
        )
    )
    if _libc().syscall(numbers[0], 0, attr, 0) != 0:
        error = ctypes.get_errno()
        return f"default slice: sched_setattr refused ({os.strerror(error)})"
    granted = slice_of(0)
    if granted != slice_ns:
        return "default slice: this kernel has no custom slices (Linux 6.12+)"
    return f"{slice_ns / 1000:g} us slice, reset on fork"


def slice_of(tid: int) -> int | None:
    """A thread's time slice in nanoseconds (0 before Linux 6.12), if it can be read."""
    numbers = _syscalls()
    if numbers is None:
        return None
    attr = ctypes.create_string_buffer(_SCHED_ATTR.size)
    if _libc().syscall(numbers[1], tid, attr, _SCHED_ATTR.size, 0) != 0:
        return None
    runtime: int = _SCHED_ATTR.unpack(attr.raw)[5]
    return runtime
