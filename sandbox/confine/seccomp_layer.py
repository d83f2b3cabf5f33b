"""Layer 7: a seccomp-bpf filter that refuses the kernel interfaces user code never needs.

The filter allows by default and refuses a list, because the worker runs arbitrary
Python and arbitrary allowed programs: an allowlist that fits them all is a moving
target, while the dangerous interfaces are few and well known.  The list starts from
what Docker's default profile (moby ``profiles/seccomp/default.json``) refuses a
container without extra capabilities, then adds what this sandbox needs:

* ``clone`` may not create namespaces; ``clone3`` answers ENOSYS, because its flags
  live in memory a filter cannot read and C libraries fall back to ``clone``;
* with the network off, only AF_UNIX sockets can be created; with the egress proxy
  (``network.mode = "allowlist"``), also TCP stream sockets of AF_INET and AF_INET6,
  which reach nothing but the proxy's port in the worker's own network namespace
  (no UDP, raw, packet, netlink or vsock socket either way);
* TIOCSTI and TIOCLINUX, which push keystrokes into a terminal, are refused;
* a syscall from another ABI (i386 ``int 0x80``, x32) kills the process.

The filter is built with libseccomp through ``pyseccomp``.  ``pyseccomp`` is imported
when this module is (in the zygote): it locates libseccomp by running ``ldconfig``,
which a confined worker may no longer execute.  The zygote also compiles the filter
to BPF once (``prepare``); a worker then only hands that program to seccomp(2), as
``seccomp_load`` would after compiling it again: compiling in every worker allocates
and frees throughout the heap it shares with the zygote, and so copies much of it.
"""

from __future__ import annotations

import ctypes
import os

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.confine.seccomp_filter import (
    UNIFIED_SYSCALL_NUMBERS,
    CompiledFilter,
    build_filter,
    compile_filter,
    libc_syscall,
    pyseccomp_error,
    pyseccomp_module,
    resolve,
)
from sandbox.confine.seccomp_rules import DENIED_SYSCALLS

__all__ = [
    "DENIED_SYSCALLS",
    "UNIFIED_SYSCALL_NUMBERS",
    "apply",
    "build_filter",
    "prepare",
    "probe",
    "resolve",
]

LAYER_NAME = "seccomp"


# Filters compiled ahead of time in the zygote, by network setting: each worker forked
# from it then only loads one, and shares the compiled filter's pages with the others.
_prepared: dict[bool, CompiledFilter] = {}


def prepare(network: bool) -> None:
    """Build and compile the filter once, in the zygote, before it forks workers."""
    if pyseccomp_module is not None and network not in _prepared:
        _prepared[network] = compile_filter(network)


def apply(spec: WorkerSpec) -> LayerStatus:
    network = spec.policy.network.enabled
    if pyseccomp_module is None:
        return LayerStatus(LAYER_NAME, False, pyseccomp_error or "libseccomp is missing")
    compiled = _prepared.get(network) or compile_filter(network)
    compiled.load()
    built = compiled.built
    uncovered = set(built.absent) | set(built.unknown)
    denied_count = sum(name not in uncovered for _why, names in DENIED_SYSCALLS for name in names)
    sockets = "AF_UNIX and TCP sockets only" if network else "AF_UNIX sockets only"
    detail = (
        f"{denied_count} syscalls refused (Docker's list and more); no namespaces; "
        f"{sockets}; no terminal injection; other ABIs killed"
    )
    if built.unknown:
        detail += f"; not filtered, number unknown: {', '.join(built.unknown)}"
    return LayerStatus(LAYER_NAME, True, detail)


# seccomp(2) operation that asks whether the kernel implements an action, installing nothing.
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_RET_KILL_PROCESS = 0x8000_0000
SECCOMP_RET_ERRNO = 0x0005_0000


def _status_field(name: str) -> str | None:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    return None


def probe() -> str | None:
    """None if this host can load the filter, else why not; installs no filter."""
    if pyseccomp_module is None:
        return pyseccomp_error
    if _status_field("Seccomp") is None:
        return "the kernel was built without seccomp (no Seccomp line in /proc/self/status)"
    seccomp_number = pyseccomp_module.resolve_syscall(pyseccomp_module.Arch.NATIVE, "seccomp")
    for action, label in (
        (SECCOMP_RET_KILL_PROCESS, "kill-process"),
        (SECCOMP_RET_ERRNO, "errno"),
    ):
        wanted = ctypes.c_uint32(action)
        if libc_syscall(seccomp_number, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(wanted)) != 0:
            reason = os.strerror(ctypes.get_errno())
            return f"the kernel does not offer the seccomp {label} action ({reason})"
    try:
        for network in (False, True):
            build_filter(network)
    except OSError as exc:
        return f"libseccomp cannot build the filter: {exc}"
    return None
