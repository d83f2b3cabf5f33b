"""The kernel's Landlock interface: its syscalls, rights and structs, and a ruleset
built from path rules and enforced on the calling thread.

The tables of what a worker may reach are in ``landlock_rules.py``; the layer that
applies them is ``landlock_layer.py``.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from sandbox.confine.process import PR_SET_NO_NEW_PRIVS, prctl

# The three Landlock syscalls have the same numbers on every architecture but alpha.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

# The newest ABI whose rights this module knows; a newer kernel works, unknown new rights
# simply stay unhandled (allowed).
NEWEST_KNOWN_ABI = 7
FIRST_ABI_WITH_NET = 4
FIRST_ABI_WITH_SCOPES = 6


class FsAccess(enum.IntFlag):
    """Filesystem access rights (include/uapi/linux/landlock.h)."""

    EXECUTE = 1 << 0
    WRITE_FILE = 1 << 1
    READ_FILE = 1 << 2
    READ_DIR = 1 << 3
    REMOVE_DIR = 1 << 4
    REMOVE_FILE = 1 << 5
    MAKE_CHAR = 1 << 6
    MAKE_DIR = 1 << 7
    MAKE_REG = 1 << 8
    MAKE_SOCK = 1 << 9
    MAKE_FIFO = 1 << 10
    MAKE_BLOCK = 1 << 11
    MAKE_SYM = 1 << 12
    REFER = 1 << 13
    TRUNCATE = 1 << 14
    IOCTL_DEV = 1 << 15


ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_ABI_1_FS_RIGHTS = FsAccess((1 << 13) - 1)  # EXECUTE .. MAKE_SYM
ALL_KNOWN_FS_RIGHTS = FsAccess((1 << 16) - 1)  # .. IOCTL_DEV, the last one ABI 7 knows
# Rights a kernel of each ABI knows; handling an unknown right makes the ruleset invalid.
FS_RIGHTS_ADDED_IN_ABI: dict[int, FsAccess] = {
    1: _ABI_1_FS_RIGHTS,
    2: FsAccess.REFER,
    3: FsAccess.TRUNCATE,
    5: FsAccess.IOCTL_DEV,
}
# The only rights a rule on a single file (not a directory) may carry.
FILE_RIGHTS = (
    FsAccess.EXECUTE
    | FsAccess.WRITE_FILE
    | FsAccess.READ_FILE
    | FsAccess.TRUNCATE
    | FsAccess.IOCTL_DEV
)


@dataclass(frozen=True)
class PathRule:
    path: str
    access: FsAccess
    why: str  # which table or need put it here, for error messages and tests


@dataclass(frozen=True)
class HandledRights:
    """The access the ruleset governs: anything handled and not granted is denied."""

    fs: FsAccess
    net: int
    scopes: int


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, name: str, *args: object) -> int:
    # ctypes keeps a per-thread errno copy that a successful call does not clear, so
    # success is judged by the return value alone (the `landlock` package's errcheck reads
    # errno instead and reports a stale error after any earlier failed ctypes call).
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {os.strerror(code)}")
    return result


def abi_version() -> int:
    """The kernel's Landlock ABI version; OSError when Landlock is missing or disabled."""
    return _syscall(
        SYS_LANDLOCK_CREATE_RULESET,
        "landlock_create_ruleset",
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )


class _NetPortAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def handled_rights(abi: int) -> HandledRights:
    fs = FsAccess(0)
    for first_abi, rights in FS_RIGHTS_ADDED_IN_ABI.items():
        if abi >= first_abi:
            fs |= rights
    net = 0
    if abi >= FIRST_ABI_WITH_NET:
        # Handled: every TCP bind and connect is refused but to the ports of net rules.
        net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
    scopes = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= FIRST_ABI_WITH_SCOPES else 0
    return HandledRights(fs, net, scopes)


def _create_ruleset(handled: HandledRights) -> int:
    attr = _RulesetAttr(int(handled.fs), handled.net, handled.scopes)
    # The full struct is passed even on older kernels: they accept a larger struct as long
    # as the fields they do not know are zero, which handled_rights guarantees.
    return _syscall(
        SYS_LANDLOCK_CREATE_RULESET,
        "landlock_create_ruleset",
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        ctypes.c_uint32(0),
    )


# A path that vanished or that this uid cannot reach needs no rule.
_UNREACHABLE = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP)


def _add_path_rule(ruleset_fd: int, rule: PathRule, handled: FsAccess) -> bool:
    try:
        fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _UNREACHABLE:
            return False
        raise
    try:
        access = rule.access & handled
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= FILE_RIGHTS
        if not access:
            return False
        attr = _PathBeneathAttr(int(access), fd)
        try:
            _syscall(
                SYS_LANDLOCK_ADD_RULE,
                "landlock_add_rule",
                ctypes.c_long(ruleset_fd),
                ctypes.c_long(LANDLOCK_RULE_PATH_BENEATH),
                ctypes.byref(attr),
                ctypes.c_uint32(0),
            )
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} (rule for {rule.why} {rule.path})") from None
        return True
    finally:
        os.close(fd)


def _add_connect_rule(ruleset_fd: int, port: int) -> None:
    attr = _NetPortAttr(ACCESS_NET_CONNECT_TCP, port)
    _syscall(
        SYS_LANDLOCK_ADD_RULE,
        "landlock_add_rule",
        ctypes.c_long(ruleset_fd),
        ctypes.c_long(LANDLOCK_RULE_NET_PORT),
        ctypes.byref(attr),
        ctypes.c_uint32(0),
    )


def restrict_self(
    handled: HandledRights, rules: Iterable[PathRule], connect_ports: Iterable[int] = ()
) -> int:
    """Confine the calling thread and its future children; returns how many path rules
    held.  ``connect_ports``: TCP ports a connect may still reach (where TCP is handled)."""
    ruleset_fd = _create_ruleset(handled)
    try:
        added = sum(_add_path_rule(ruleset_fd, rule, handled.fs) for rule in rules)
        if handled.net:
            for port in connect_ports:
                _add_connect_rule(ruleset_fd, port)
        # Required by restrict_self for an unprivileged caller; also set by the identity
        # layer, repeated so this layer stands alone.
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        _syscall(
            SYS_LANDLOCK_RESTRICT_SELF,
            "landlock_restrict_self",
            ctypes.c_long(ruleset_fd),
            ctypes.c_uint32(0),
        )
    finally:
        os.close(ruleset_fd)
    return added
