"""The seccomp filter built with libseccomp (through ``pyseccomp``), compiled to BPF, and
loaded with seccomp(2).

See ``seccomp_layer.py`` for why pyseccomp is imported with this module and why the
filter is compiled once in the zygote.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import Any

from sandbox.confine.process import PR_SET_NO_NEW_PRIVS, prctl
from sandbox.confine.seccomp_rules import (
    DENIED_SYSCALLS,
    LOW_32_BITS,
    NAMESPACE_CLONE_FLAGS,
    TERMINAL_INJECTION_IOCTLS,
    Refusal,
    masked_equal,
    personality_refusals,
    socket_refusals,
)


def _importpyseccomp_module() -> tuple[Any, str | None]:
    """The pyseccomp module, or why it is missing: it raises at import without libseccomp."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        return None, f"libseccomp cannot be loaded: {exc}"
    return pyseccomp, None


pyseccomp_module, pyseccomp_error = _importpyseccomp_module()


def _clone_flags_argument() -> int:
    # s390 passes clone's stack first and its flags second; every other ABI, flags first.
    if pyseccomp_module is not None and pyseccomp_module.system_arch() in (
        pyseccomp_module.Arch.S390,
        pyseccomp_module.Arch.S390X,
    ):
        return 1
    return 0


def refusals_for(network: bool) -> tuple[Refusal, ...]:
    """Every rule of the filter, for a worker with the network on or off."""
    denied = tuple(Refusal(name, errno.EPERM) for _why, names in DENIED_SYSCALLS for name in names)
    flags_argument = _clone_flags_argument()
    namespaces = tuple(
        Refusal("clone", errno.EPERM, (masked_equal(flags_argument, flag, flag),))
        for flag in NAMESPACE_CLONE_FLAGS
    )
    # The kernel reads the ioctl command as 32 bits: compare only those, or setting a
    # high bit would walk past the rule (the snapd TIOCSTI bypass, CVE-2019-7303).
    terminal = tuple(
        Refusal("ioctl", errno.EPERM, (masked_equal(1, LOW_32_BITS, command),))
        for command in TERMINAL_INJECTION_IOCTLS
    )
    clone3 = (Refusal("clone3", errno.ENOSYS),)
    return (
        denied + namespaces + clone3 + terminal + personality_refusals() + socket_refusals(network)
    )


# Syscalls added since Linux 5.1 have one number on every architecture whose table
# starts at zero.  An older libseccomp does not know some of them (2.5.4 lacks
# open_tree_attr): they are filtered by these numbers instead of silently skipped.
UNIFIED_SYSCALL_NUMBERS: dict[str, int] = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "set_mempolicy_home_node": 450,
    "open_tree_attr": 467,
}
UNIFIED_NUMBERING_ARCHITECTURES = ("X86_64", "AARCH64", "RISCV64")

# libseccomp's answer for a name it has never heard of (__NR_SCMP_ERROR).
UNKNOWN_SYSCALL = -1


@dataclass(frozen=True)
class ResolvedName:
    number: int | None  # None: not filtered, for one of the reasons below
    absent: bool = False  # this architecture has no such syscall (vm86 on x86-64)
    unknown: bool = False  # neither libseccomp nor the table above knows its number


def resolve(name: str) -> ResolvedName:
    """The number the filter uses for a syscall name on this architecture."""
    if pyseccomp_module is None:
        raise OSError(errno.ENOSYS, pyseccomp_error)
    number: int = pyseccomp_module.resolve_syscall(pyseccomp_module.Arch.NATIVE, name)
    if number >= 0:
        return ResolvedName(number)
    if number != UNKNOWN_SYSCALL:
        # A negative pseudo-number: libseccomp knows the name, for other architectures.
        return ResolvedName(None, absent=True)
    native = pyseccomp_module.system_arch()
    unified = any(
        native == getattr(pyseccomp_module.Arch, arch) for arch in UNIFIED_NUMBERING_ARCHITECTURES
    )
    if unified and name in UNIFIED_SYSCALL_NUMBERS:
        return ResolvedName(UNIFIED_SYSCALL_NUMBERS[name])
    return ResolvedName(None, unknown=True)


@dataclass(frozen=True)
class BuiltFilter:
    """A filter ready to load, and the listed syscalls it does not cover, and why."""

    handle: Any  # pyseccomp.SyscallFilter
    rule_count: int
    absent: tuple[str, ...]  # not on this architecture: nothing to refuse
    unknown: tuple[str, ...]  # may exist, but their numbers are unknown here


def build_filter(network: bool, refusals: tuple[Refusal, ...] | None = None) -> BuiltFilter:
    """Build the filter in memory without loading it.

    Raises OSError if libseccomp is missing or rejects a rule.
    """
    if pyseccomp_module is None:
        raise OSError(errno.ENOSYS, pyseccomp_error)
    seccomp = pyseccomp_module
    handle = seccomp.SyscallFilter(seccomp.ALLOW)
    # Only the native ABI is in the filter, and a syscall from any other (i386 int 0x80,
    # x32) kills the whole process; libseccomp's default would kill only the thread.
    handle.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    # Loading needs no-new-privs; the identity layer sets it, but a missing identity
    # layer must not leave the filter unloadable.
    handle.set_attr(seccomp.Attr.CTL_NNP, 1)
    # The worker should be single-threaded here; if a thread exists, it is filtered too.
    handle.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    absent: dict[str, None] = {}  # ordered sets
    unknown: dict[str, None] = {}
    rule_count = 0
    # ``refusals``: another process's rules (the egress proxy's), in place of a worker's.
    for refusal in refusals if refusals is not None else refusals_for(network):
        resolved = resolve(refusal.syscall)
        if resolved.number is None:
            (absent if resolved.absent else unknown)[refusal.syscall] = None
            continue
        arguments = [
            seccomp.Arg(test.argument, test.operator, test.first, test.second)
            for test in refusal.comparisons
        ]
        handle.add_rule(seccomp.ERRNO(refusal.error), resolved.number, *arguments)
        rule_count += 1
    return BuiltFilter(handle, rule_count, tuple(absent), tuple(unknown))


# seccomp(2) constants (linux/seccomp.h).
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
BPF_INSTRUCTION_BYTES = 8  # struct sock_filter

_libc = ctypes.CDLL(None, use_errno=True)
libc_syscall = _libc.syscall
libc_syscall.restype = ctypes.c_long


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: what SECCOMP_SET_MODE_FILTER takes."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


@dataclass(frozen=True)
class CompiledFilter:
    """A built filter and its BPF program, ready for seccomp(2) without libseccomp.

    What ``seccomp_load`` does with the attributes ``build_filter`` sets: no-new-privs
    first (CTL_NNP), then SECCOMP_SET_MODE_FILTER with SECCOMP_FILTER_FLAG_TSYNC.
    """

    built: BuiltFilter
    program: Any  # ctypes char array holding the sock_filter instructions
    fprog: _SockFprog  # points into ``program``
    seccomp_number: int

    def load(self) -> None:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        result = libc_syscall(
            ctypes.c_long(self.seccomp_number),
            ctypes.c_long(SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC),
            ctypes.byref(self.fprog),
        )
        if result < 0:
            number = ctypes.get_errno()
            raise OSError(number, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(number)}")
        if result > 0:
            # TSYNC names a thread it could not synchronize; libseccomp answers ESRCH.
            raise OSError(errno.ESRCH, f"seccomp: thread {result} could not be synchronized")


def compile_filter(network: bool, refusals: tuple[Refusal, ...] | None = None) -> CompiledFilter:
    """Build the filter and export its BPF program (libseccomp's own code generator).

    Raises OSError if libseccomp is missing, rejects a rule or exports nothing usable.
    """
    built = build_filter(network, refusals)
    assert pyseccomp_module is not None  # build_filter raised otherwise
    with open(os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC), "w+b", buffering=0) as exported:
        built.handle.export_bpf(exported)
        size = os.fstat(exported.fileno()).st_size
        code = os.pread(exported.fileno(), size, 0)
    count = len(code) // BPF_INSTRUCTION_BYTES
    if not code or len(code) % BPF_INSTRUCTION_BYTES or count > 0xFFFF:
        raise OSError(errno.EINVAL, f"libseccomp exported a {len(code)}-byte program")
    program = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(count, ctypes.addressof(program))
    number: int = pyseccomp_module.resolve_syscall(pyseccomp_module.Arch.NATIVE, "seccomp")
    if number < 0:
        raise OSError(errno.ENOSYS, "libseccomp does not know the seccomp syscall's number")
    return CompiledFilter(built, program, fprog, number)
