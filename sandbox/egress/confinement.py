"""The egress proxy's own confinement: what of a worker's fits a process that must
resolve names and connect anywhere the policy allows.

It reads what sessions send, so a flaw in it must not become the host's: no write,
execute or device node anywhere and no TCP bind (Landlock); the worker's seccomp
denylist (no ptrace, mount, namespaces, bpf, io_uring, keyrings, ...) with sockets
limited to unix, TCP and UDP (the resolver) and route netlink (the host's own
addresses); plus, in ``process``, its own uid, no-new-privs, not dumpable and rlimits.
"""

from __future__ import annotations

import errno

from sandbox.confine import landlock_abi
from sandbox.confine.landlock_abi import (
    ACCESS_NET_BIND_TCP,
    FIRST_ABI_WITH_NET,
    FsAccess,
    HandledRights,
)
from sandbox.confine.seccomp_filter import CompiledFilter, compile_filter, refusals_for
from sandbox.confine.seccomp_rules import (
    AF_INET,
    AF_INET6,
    EQUAL,
    GREATER_THAN,
    NOT_EQUAL,
    Comparison,
    Refusal,
    masked_equal,
)

AF_NETLINK = 16
NETLINK_ROUTE = 0
SOCK_TYPE_MASK = 0xF
SOCK_RAW = 3
SOCK_PACKET = 10
_ALLOWED_FAMILIES = (1, AF_INET, AF_INET6, AF_NETLINK)


def proxy_socket_refusals() -> tuple[Refusal, ...]:
    """Unix, inet and inet6 (not raw), and route netlink; nothing else."""
    families = [Comparison(0, GREATER_THAN, AF_NETLINK)] + [
        Comparison(0, EQUAL, family)
        for family in range(AF_NETLINK)
        if family not in _ALLOWED_FAMILIES
    ]
    refusals = [Refusal("socket", errno.EAFNOSUPPORT, (family,)) for family in families]
    for family in (AF_INET, AF_INET6):
        for kind in (SOCK_RAW, SOCK_PACKET):
            test = masked_equal(1, SOCK_TYPE_MASK, kind)
            refusals.append(Refusal("socket", errno.EACCES, (Comparison(0, EQUAL, family), test)))
    not_route = Comparison(2, NOT_EQUAL, NETLINK_ROUTE)
    refusals.append(Refusal("socket", errno.EACCES, (Comparison(0, EQUAL, AF_NETLINK), not_route)))
    return tuple(refusals)


def proxy_refusals() -> tuple[Refusal, ...]:
    worker_rules = refusals_for(False)
    return tuple(r for r in worker_rules if r.syscall != "socket") + proxy_socket_refusals()


def apply_landlock() -> str:
    """Read anything, write, execute or bind nothing; signals scoped (where the ABI has them)."""
    try:
        abi = landlock_abi.abi_version()
    except OSError as exc:
        return f"landlock unavailable: {exc}"
    known = landlock_abi.handled_rights(abi)
    fs = known.fs & ~(FsAccess.READ_FILE | FsAccess.READ_DIR)
    net = ACCESS_NET_BIND_TCP if abi >= FIRST_ABI_WITH_NET else 0
    landlock_abi.restrict_self(HandledRights(fs, net, known.scopes), [])
    return f"landlock ABI {abi}: read-only, no execute, no TCP bind"


def prepare_seccomp() -> CompiledFilter | str:
    """Compiled before the proxy confines itself (libseccomp writes the program out
    through a memfd); loaded after its other layers."""
    try:
        return compile_filter(True, proxy_refusals())
    except OSError as exc:
        return f"seccomp unavailable: {exc}"


def apply_seccomp(compiled: CompiledFilter | str) -> str:
    if isinstance(compiled, str):
        return compiled
    try:
        compiled.load()
    except OSError as exc:
        return f"seccomp unavailable: {exc}"
    return "seccomp: the worker's denylist; unix, TCP, UDP and route netlink sockets only"
