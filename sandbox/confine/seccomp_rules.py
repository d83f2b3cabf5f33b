"""What the seccomp filter refuses: the syscall tables and the argument tests.

Plain data and the rules built from it, with no library involved; ``seccomp_filter.py``
turns them into a filter.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

# libseccomp's comparison operators (enum scmp_compare in seccomp.h), spelled out here
# so the rule tables can be built and read without the library.
NOT_EQUAL = 1
EQUAL = 4
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
AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
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


def personality_refusals() -> tuple[Refusal, ...]:
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


def socket_refusals(network: bool) -> tuple[Refusal, ...]:
    """With the network off, anything but exactly AF_UNIX; with the egress proxy, also
    anything but AF_INET and AF_INET6 TCP stream sockets (to reach the proxy's port in
    the worker's own namespace; Landlock refuses every other port)."""
    pair = (Refusal("socketpair", errno.EAFNOSUPPORT, (Comparison(0, NOT_EQUAL, AF_UNIX),)),)
    if not network:
        # The kernel reads the family as an int: high bits set are refused too (erring safe).
        return (Refusal("socket", errno.EAFNOSUPPORT, (Comparison(0, NOT_EQUAL, AF_UNIX),)), *pair)
    # Not one of three families: above AF_INET6 (high bits included, erring safe), 0,
    # or one of those between AF_INET and AF_INET6.
    families = [Comparison(0, GREATER_THAN, AF_INET6), Comparison(0, EQUAL, 0)]
    families += [Comparison(0, EQUAL, family) for family in range(AF_INET + 1, AF_INET6)]
    refusals = [Refusal("socket", errno.EAFNOSUPPORT, (family,)) for family in families]
    # An internet socket's type, less its flags, must be SOCK_STREAM (1): bit 0 clear or
    # any of bits 1-3 set is another type.  Its protocol must be 0 or IPPROTO_TCP (6).
    not_stream = [masked_equal(1, 1, 0)] + [masked_equal(1, bit, bit) for bit in (2, 4, 8)]
    not_tcp = [Comparison(2, GREATER_THAN, IPPROTO_TCP)]
    not_tcp += [Comparison(2, EQUAL, protocol) for protocol in range(1, IPPROTO_TCP)]
    for family in (AF_INET, AF_INET6):
        for test in not_stream + not_tcp:
            refusals.append(Refusal("socket", errno.EACCES, (Comparison(0, EQUAL, family), test)))
    return (*refusals, *pair)
