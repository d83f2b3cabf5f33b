"""Layer 7: a seccomp-bpf filter that refuses the kernel interfaces user code never needs.

The filter allows by default and refuses a list, because the worker runs arbitrary
Python and arbitrary allowed programs: an allowlist that fits them all is a moving
target, while the dangerous interfaces are few and well known.  The list starts from
what Docker's default profile (moby ``profiles/seccomp/default.json``) refuses a
container without extra capabilities, then adds what this sandbox needs:

* ``clone`` may not create namespaces; ``clone3`` answers ENOSYS, because its flags
  live in memory a filter cannot read and C libraries fall back to ``clone``;
* with the network off, only AF_UNIX sockets can be created; AF_VSOCK (a path to the
  hypervisor, not to the network) is refused either way;
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
import errno
import os
from dataclasses import dataclass
from typing import Any

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.confine.process import PR_SET_NO_NEW_PRIVS, prctl

LAYER_NAME = "seccomp"


def _import_pyseccomp() -> tuple[Any, str | None]:
    """The pyseccomp module, or why it is missing: it raises at import without libseccomp."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        return None, f"libseccomp cannot be loaded: {exc}"
    return pyseccomp, None


_pyseccomp, _import_error = _import_pyseccomp()

# libseccomp's comparison operators (enum scmp_compare in seccomp.h), spelled out here
# so the rule tables can be built and read without the library.
NOT_EQUAL = 1
GREATER_THAN = 6
MASKED_EQUAL = 7

LOW_32_BITS = 0xFFFF_FFFF

# Refused with EPERM, whatever the arguments, grouped by why.  A name this architecture
# lacks (vm86 on x86-64) is skipped; see UNIFIED_SYSCALL_NUMBERS for names that this
# libseccomp is too old to know.
DENIED_SYSCALLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "reading or steering other processes",
        ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"),
    ),
    (
        "changing the file tree (old and new mount API)",
        (
            "mount",
            "umount",
            "umount2",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "open_tree_attr",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "pivot_root",
            "chroot",
        ),
    ),
    ("entering or creating namespaces", ("unshare", "setns")),
    ("kernel keyrings, shared by everything of the same uid", ("keyctl", "add_key", "request_key")),
    (
        "large kernel attack surfaces that user code has no use for",
        (
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ),
    ),
    (
        "loading kernel code or restarting the machine",
        (
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "reboot",
        ),
    ),
    (
        "machine-wide state: clocks, swap, accounting, quotas, logs",
        (
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "syslog",
            "quotactl",
            "quotactl_fd",
            "vhangup",
            "fanotify_init",
        ),
    ),
    (
        "obsolete interfaces kept only for old binaries",
        ("sysfs", "_sysctl", "ustat", "uselib", "nfsservctl", "lookup_dcookie"),
    ),
    # open_by_handle_at opens any inode of a file system, bypassing the path walk
    # (the "shocker" container escape).
    ("file handles that bypass path checks", ("name_to_handle_at", "open_by_handle_at")),
    ("direct hardware and legacy x86 modes", ("iopl", "ioperm", "modify_ldt", "vm86", "vm86old")),
    # sched_setattr is the only way to ask for a custom (shorter) time slice, which would
    # let session code wake ahead of other sessions and beside the service, whose event
    # loop relies on a short slice (sandbox.scheduling); nice and policy changes remain
    # open through setpriority and sched_setscheduler.
    ("an earlier claim on the CPU than other sessions get", ("sched_setattr",)),
    # Docker allows these only with CAP_SYS_NICE.
    (
        "NUMA placement of memory",
        ("mbind", "set_mempolicy", "set_mempolicy_home_node", "move_pages", "migrate_pages"),
    ),
)

CLONE_NEWTIME = 0x0000_0080
CLONE_NEWNS = 0x0002_0000
CLONE_NEWCGROUP = 0x0200_0000
CLONE_NEWUTS = 0x0400_0000
CLONE_NEWIPC = 0x0800_0000
CLONE_NEWUSER = 0x1000_0000
CLONE_NEWPID = 0x2000_0000
CLONE_NEWNET = 0x4000_0000
# clone() reads CLONE_NEWTIME's bit as part of the exit signal, so the kernel refuses it
# there anyway; it is listed so that no namespace flag depends on that detail.
NAMESPACE_CLONE_FLAGS = (
    CLONE_NEWTIME,
    CLONE_NEWNS,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
)

# The generic ioctl numbers (x86, arm, riscv; alpha, mips, powerpc and sparc differ).
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
TERMINAL_INJECTION_IOCTLS = (TIOCSTI, TIOCLINUX)

AF_UNIX = 1
AF_VSOCK = 40

# Docker allows personality() only for these values: PER_LINUX (0), PER_LINUX32, UNAME26,
# both of those, and the query 0xffffffff that changes nothing.
PER_LINUX32 = 0x0008
UNAME26 = 0x0002_0000
PERMITTED_PERSONA_FLAGS = PER_LINUX32 | UNAME26
PERSONALITY_TOP_BIT = 1 << 31


@dataclass(frozen=True)
class Comparison:
    """One test of a syscall argument; for MASKED_EQUAL, ``(arg & first) == second``."""

    argument: int
    operator: int
    first: int
    second: int = 0


@dataclass(frozen=True)
class Refusal:
    """Make ``syscall`` fail with ``error`` when all ``comparisons`` hold (always, if none)."""

    syscall: str
    error: int
    comparisons: tuple[Comparison, ...] = ()


def masked_equal(argument: int, mask: int, value: int) -> Comparison:
    return Comparison(argument, MASKED_EQUAL, mask, value)


def _clone_flags_argument() -> int:
    # s390 passes clone's stack first and its flags second; every other ABI, flags first.
    if _pyseccomp is not None and _pyseccomp.system_arch() in (
        _pyseccomp.Arch.S390,
        _pyseccomp.Arch.S390X,
    ):
        return 1
    return 0


def _personality_refusals() -> tuple[Refusal, ...]:
    """personality() with anything but the values Docker permits.

    libseccomp ANDs the comparisons of one rule but allows one per argument, and ORs
    separate rules, so "not one of five values" is written as a union of bit patterns:
    a value above 32 bits; bit 31 clear and a bit outside the permitted flags set (so
    only subsets of those flags pass); bit 31 set and any other bit clear (so only the
    all-ones query passes).
    """
    refusals = [Refusal("personality", errno.EPERM, (Comparison(0, GREATER_THAN, LOW_32_BITS),))]
    for bit in (1 << shift for shift in range(31)):
        if not bit & PERMITTED_PERSONA_FLAGS:
            pattern = masked_equal(0, PERSONALITY_TOP_BIT | bit, bit)
            refusals.append(Refusal("personality", errno.EPERM, (pattern,)))
        not_the_query = masked_equal(0, PERSONALITY_TOP_BIT | bit, PERSONALITY_TOP_BIT)
        refusals.append(Refusal("personality", errno.EPERM, (not_the_query,)))
    return tuple(refusals)


def _socket_refusals(network: bool) -> tuple[Refusal, ...]:
    # The kernel reads the family as an int.  With the network off, anything but exactly
    # AF_UNIX is refused, high bits included (erring safe); with it on, AF_VSOCK is
    # matched on the low 32 bits, as the kernel will read it.
    family = (
        Comparison(0, MASKED_EQUAL, LOW_32_BITS, AF_VSOCK)
        if network
        else Comparison(0, NOT_EQUAL, AF_UNIX)
    )
    return tuple(
        Refusal(syscall, errno.EAFNOSUPPORT, (family,)) for syscall in ("socket", "socketpair")
    )


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
        denied
        + namespaces
        + clone3
        + terminal
        + _personality_refusals()
        + _socket_refusals(network)
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
    if _pyseccomp is None:
        raise OSError(errno.ENOSYS, _import_error)
    number: int = _pyseccomp.resolve_syscall(_pyseccomp.Arch.NATIVE, name)
    if number >= 0:
        return ResolvedName(number)
    if number != UNKNOWN_SYSCALL:
        # A negative pseudo-number: libseccomp knows the name, for other architectures.
        return ResolvedName(None, absent=True)
    native = _pyseccomp.system_arch()
    unified = any(
        native == getattr(_pyseccomp.Arch, arch) for arch in UNIFIED_NUMBERING_ARCHITECTURES
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


def build_filter(network: bool) -> BuiltFilter:
    """Build the filter in memory without loading it.

    Raises OSError if libseccomp is missing or rejects a rule.
    """
    if _pyseccomp is None:
        raise OSError(errno.ENOSYS, _import_error)
    seccomp = _pyseccomp
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
    for refusal in refusals_for(network):
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
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


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
        result = _syscall(
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


def compile_filter(network: bool) -> CompiledFilter:
    """Build the filter and export its BPF program (libseccomp's own code generator).

    Raises OSError if libseccomp is missing, rejects a rule or exports nothing usable.
    """
    built = build_filter(network)
    assert _pyseccomp is not None  # build_filter raised otherwise
    with open(os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC), "w+b", buffering=0) as exported:
        built.handle.export_bpf(exported)
        size = os.fstat(exported.fileno()).st_size
        code = os.pread(exported.fileno(), size, 0)
    count = len(code) // BPF_INSTRUCTION_BYTES
    if not code or len(code) % BPF_INSTRUCTION_BYTES or count > 0xFFFF:
        raise OSError(errno.EINVAL, f"libseccomp exported a {len(code)}-byte program")
    program = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(count, ctypes.addressof(program))
    number: int = _pyseccomp.resolve_syscall(_pyseccomp.Arch.NATIVE, "seccomp")
    if number < 0:
        raise OSError(errno.ENOSYS, "libseccomp does not know the seccomp syscall's number")
    return CompiledFilter(built, program, fprog, number)


# Filters compiled ahead of time in the zygote, by network setting: each worker forked
# from it then only loads one, and shares the compiled filter's pages with the others.
_prepared: dict[bool, CompiledFilter] = {}


def prepare(network: bool) -> None:
    """Build and compile the filter once, in the zygote, before it forks workers."""
    if _pyseccomp is not None and network not in _prepared:
        _prepared[network] = compile_filter(network)


def apply(spec: WorkerSpec) -> LayerStatus:
    network = spec.policy.isolation.network
    if _pyseccomp is None:
        return LayerStatus(LAYER_NAME, False, _import_error or "libseccomp is missing")
    compiled = _prepared.get(network) or compile_filter(network)
    compiled.load()
    built = compiled.built
    uncovered = set(built.absent) | set(built.unknown)
    denied_count = sum(name not in uncovered for _why, names in DENIED_SYSCALLS for name in names)
    sockets = "no AF_VSOCK sockets" if network else "AF_UNIX sockets only"
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
    if _pyseccomp is None:
        return _import_error
    if _status_field("Seccomp") is None:
        return "the kernel was built without seccomp (no Seccomp line in /proc/self/status)"
    seccomp_number = _pyseccomp.resolve_syscall(_pyseccomp.Arch.NATIVE, "seccomp")
    for action, label in (
        (SECCOMP_RET_KILL_PROCESS, "kill-process"),
        (SECCOMP_RET_ERRNO, "errno"),
    ):
        wanted = ctypes.c_uint32(action)
        if _syscall(seccomp_number, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(wanted)) != 0:
            reason = os.strerror(ctypes.get_errno())
            return f"the kernel does not offer the seccomp {label} action ({reason})"
    try:
        for network in (False, True):
            build_filter(network)
    except OSError as exc:
        return f"libseccomp cannot build the filter: {exc}"
    return None
