"""Layer 6: Landlock — what the worker may read, write, execute, connect to and signal.

The worker (and everything it starts) may:

* read the system and the interpreter: ``/usr``, ``/lib*``, ``/bin``, ``/sbin``, ``/etc``,
  the interpreter's installation and library directories (never the checkout or the
  virtualenv root the service runs from), ``/proc``, ``/sys/devices/system/cpu`` and the
  harmless character devices;
* read and write beneath its working directory (the workspace), ``/tmp`` and ``/dev/shm``;
* execute only the files named one by one: the interpreter, the programs the command
  policy allows, and the ELF loader they need;
* no TCP bind, and no TCP connect but, with the egress proxy, to its port (ABI >= 4);
* never signal a process outside its Landlock domain (the service, the zygote, other
  sessions) nor connect to an abstract unix socket created outside it (ABI >= 6).

Landlock also refuses ptrace attach, ``/proc/<pid>/mem`` and ``kcmp`` on any process
outside the domain.

Known limits, for SECURITY.md (all measured on kernel 6.18, Landlock ABI 7):

* **The loader is an execute-anything launcher.**  The kernel opens a program's ELF
  interpreter with the same execute check as the program itself, so the loader
  (``/lib64/ld-linux-x86-64.so.2``) must carry the execute right or no dynamically
  linked program runs at all.  ``ld.so /path/to/binary`` then runs any *readable*
  binary — ``/bin/sh`` or a binary written into the workspace — because the loader maps
  it with ``mmap`` and Landlock does not govern ``mmap(PROT_EXEC)``.  The execute
  allowlist is therefore a guard against accidental or naive escapes of the command
  policy, not against code that is already running arbitrary Python: such code can do
  everything ``/bin/sh`` can anyway.  A ``noexec`` mount of the workspace and tmp closes
  the "binary written into the workspace" half (measured: the loader then fails with
  "failed to map segment"); system binaries stay reachable this way.
* **memfd files are not paths.**  A program copied into a ``memfd_create`` file runs via
  ``/proc/self/fd/N`` (or ``execveat``) although no rule grants it execute.  Setting
  ``vm.memfd_noexec = 2`` inside the worker's PID namespace (the sysctl is per PID
  namespace, kernel >= 6.3; measured: exec and ``MFD_EXEC`` both get EACCES, the host's
  value is untouched) or a seccomp rule on ``memfd_create`` closes it.
* **/proc/<pid>/environ, maps and auxv of same-uid processes stay readable.**  On 6.18
  Landlock refuses ``/proc/<pid>/mem`` but not these (measured; ``kcmp`` is refused).
  A different uid cannot open them (measured), and ``/proc/<pid>/cmdline`` is readable
  even across uids, so the per-session uid and the PID namespace (other pids are not
  visible) are what protect the service's environment and command line.
* **Pathname unix sockets** are not governed by ABI <= 7: ``connect()`` to e.g.
  ``/run/docker.sock`` is decided by its file mode only.  The mount namespace and the
  per-session uid must keep such sockets out of reach.
* **UDP, raw and other non-TCP sockets** are not governed either; the network namespace
  and seccomp handle them.
* **A hard link already inside the workspace** is part of the workspace: Landlock checks
  the path used, not the inode.  The session itself cannot create one to an outside file
  (linking across the rule boundary is refused); the service must never make one.
* **Only the calling thread is restricted** (ABI <= 7 has no thread-sync flag).  ``apply``
  refuses to report the layer active when the process has other threads.
* On ABI < 6 signals and abstract sockets are not scoped; on ABI < 4 TCP is not
  governed; on ABI < 3 ``truncate()`` is not governed; on ABI 1 every cross-directory
  rename or link is refused.
"""

from __future__ import annotations

import errno
import os

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.confine.elf import elf_interpreter
from sandbox.confine.landlock_abi import (
    ALL_KNOWN_FS_RIGHTS,
    FILE_RIGHTS,
    FIRST_ABI_WITH_NET,
    FIRST_ABI_WITH_SCOPES,
    NEWEST_KNOWN_ABI,
    FsAccess,
    HandledRights,
    PathRule,
    abi_version,
    handled_rights,
    restrict_self,
)
from sandbox.confine.landlock_rules import (
    READ_ONLY_SYSTEM_PATHS,
    path_rules,
    prepare,
    program_rules,
)
from sandbox.egress.address import PROXY_PORT

__all__ = [
    "ALL_KNOWN_FS_RIGHTS",
    "FILE_RIGHTS",
    "FIRST_ABI_WITH_NET",
    "FIRST_ABI_WITH_SCOPES",
    "FsAccess",
    "PathRule",
    "abi_version",
    "apply",
    "elf_interpreter",
    "handled_rights",
    "path_rules",
    "prepare",
    "probe",
    "program_rules",
    "restrict_self",
]


def _why_unavailable(error: OSError) -> str:
    if error.errno == errno.ENOSYS:
        return "no Landlock syscalls: kernel older than 5.13, built without it, or filtered"
    if error.errno == errno.EOPNOTSUPP:
        return "Landlock is built in but disabled at boot (add 'landlock' to lsm=)"
    return f"Landlock unusable: {error}"


def probe() -> str | None:
    """None if Landlock works here, else why not.  Never restricts the caller."""
    try:
        abi_version()
    except OSError as exc:
        return _why_unavailable(exc)
    return None


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1  # no /proc to ask; the worker is single-threaded by construction


def _describe(
    abi: int, handled: HandledRights, rules: list[PathRule], ports: tuple[int, ...]
) -> str:
    programs = sum(rule.why == "allowed program" for rule in rules)
    parts = [
        "read-only system and Python",
        "read-write workspace and tmp",
        f"execute {programs} program(s) and their loader",
    ]
    if handled.net and ports:
        parts.append(f"TCP bind denied, connect only to the egress proxy's port {ports[0]}")
    elif handled.net:
        parts.append("TCP bind/connect denied")
    else:
        parts.append("TCP not governed (ABI < 4)")
    if handled.scopes:
        parts.append("signals and abstract sockets scoped")
    else:
        parts.append("signals and abstract sockets not scoped (ABI < 6)")
    if abi > NEWEST_KNOWN_ABI:
        parts.append(f"rights newer than ABI {NEWEST_KNOWN_ABI} not handled")
    return f"ABI {abi}: " + "; ".join(parts)


def _system_path_inside(workspace: str) -> str | None:
    """A read-only system path the workspace would contain, making it writable."""
    root = os.path.realpath(workspace).rstrip("/") + "/"
    for path in READ_ONLY_SYSTEM_PATHS:
        if (os.path.realpath(path).rstrip("/") + "/").startswith(root):
            return path
    return None


def apply(spec: WorkerSpec, private_tmp: bool = True) -> LayerStatus:
    """Restrict this process and its future children; the cwd is the workspace."""
    try:
        abi = abi_version()
    except OSError as exc:
        return LayerStatus("landlock", False, _why_unavailable(exc))
    workspace = os.getcwd()
    # A worker left in the wrong directory (say "/") would make the whole system writable.
    swallowed = _system_path_inside(workspace)
    if swallowed is not None:
        return LayerStatus(
            "landlock",
            False,
            f"working directory {workspace} is no workspace: it holds {swallowed}",
        )
    threads = _thread_count()
    if threads > 1:
        return LayerStatus(
            "landlock", False, f"{threads} threads running; Landlock would confine only one"
        )
    handled = handled_rights(abi)
    rules = path_rules(spec, workspace, private_tmp)
    ports = (PROXY_PORT,) if spec.policy.network.enabled else ()
    restrict_self(handled, rules, ports)
    return LayerStatus("landlock", True, _describe(abi, handled, rules, ports))
