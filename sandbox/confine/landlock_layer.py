"""Layer 6: Landlock — what the worker may read, write, execute, connect to and signal.

The worker (and everything it starts) may:

* read the system and the interpreter: ``/usr``, ``/lib*``, ``/bin``, ``/sbin``, ``/etc``,
  the interpreter's installation and library directories (never the checkout or the
  virtualenv root the service runs from), ``/proc``, ``/sys/devices/system/cpu`` and the
  harmless character devices;
* read and write beneath its working directory (the workspace), ``/tmp`` and ``/dev/shm``;
* execute only the files named one by one: the interpreter, the programs the command
  policy allows, and the ELF loader they need;
* with the network off, neither bind nor connect TCP sockets (ABI >= 4);
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

import ctypes
import enum
import errno
import functools
import os
import stat
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sandbox.confine import runtime
from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.confine.process import PR_SET_NO_NEW_PRIVS, prctl

# The three Landlock syscalls have the same numbers on every architecture but alpha.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

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

READ_ONLY = FsAccess.READ_FILE | FsAccess.READ_DIR
# A worker has no business making device nodes, even where it may write.
READ_WRITE = ALL_KNOWN_FS_RIGHTS & ~(FsAccess.EXECUTE | FsAccess.MAKE_CHAR | FsAccess.MAKE_BLOCK)
# The kernel opens a program for exec with read mode, so both rights are needed.
RUN_PROGRAM = FsAccess.EXECUTE | FsAccess.READ_FILE

# /etc holds secrets on some hosts (service configs, keys a package manager dropped);
# it stays read-only here because the loader, resolver, locale and TLS code read it, but
# a later issue may narrow it to the files those need.
READ_ONLY_SYSTEM_PATHS: tuple[str, ...] = (
    # /usr, /bin and /sbin are granted apart from their program directories: a program
    # the session may read, the dynamic loader can map and run (`ld.so /bin/sh`), so
    # only the allowed programs themselves are readable (see ``program_rules``).
    "/lib",
    "/lib64",
    "/lib32",
    "/etc",
    "/proc",
    "/sys/devices/system/cpu",  # numpy and OpenBLAS count CPUs here
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
)
# Besides the workspace.  Inside the mount namespace /tmp and /dev/shm are the session's
# own tmpfs; without it they are the host's, shared with everything on it.
READ_WRITE_PATHS: tuple[str, ...] = ("/tmp", "/dev/shm", "/dev/null")


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


def handled_rights(abi: int, network_allowed: bool) -> HandledRights:
    fs = FsAccess(0)
    for first_abi, rights in FS_RIGHTS_ADDED_IN_ABI.items():
        if abi >= first_abi:
            fs |= rights
    net = 0
    if abi >= FIRST_ABI_WITH_NET and not network_allowed:
        # Handled with no port rule: every TCP bind and connect is refused.
        net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
    scopes = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= FIRST_ABI_WITH_SCOPES else 0
    return HandledRights(fs, net, scopes)


# --- finding the programs and their loaders ----------------------------------------------

ELF_MAGIC = b"\x7fELF"
ELF_CLASS_32 = 1
ELF_CLASS_64 = 2
ELF_LITTLE_ENDIAN = 1
PT_INTERP = 3


@dataclass(frozen=True)
class _ElfLayout:
    """Where an ELF class keeps what finding PT_INTERP needs (offsets in bytes)."""

    header_size: int
    word: str  # struct format of an address-sized field
    table_offset_at: int  # e_phoff
    entry_size_and_count_at: int  # e_phentsize, e_phnum
    segment_offset_at: int  # p_offset in a program header
    segment_size_at: int  # p_filesz in a program header


_ELF_LAYOUTS = {
    ELF_CLASS_32: _ElfLayout(52, "I", 28, 42, 4, 16),
    ELF_CLASS_64: _ElfLayout(64, "Q", 32, 54, 8, 32),
}
_MAX_PROGRAM_HEADERS = 256  # real binaries have about a dozen; bounds a hostile file
_MAX_INTERPRETER_PATH = 4096


def elf_interpreter(path: str) -> str | None:
    """The absolute loader path in an ELF file's PT_INTERP, or None (static, not ELF)."""
    try:
        with open(path, "rb") as program:
            header = program.read(64)
            if len(header) < 6 or header[:4] != ELF_MAGIC or header[4] not in _ELF_LAYOUTS:
                return None
            layout = _ELF_LAYOUTS[header[4]]
            if len(header) < layout.header_size:
                return None
            order = "<" if header[5] == ELF_LITTLE_ENDIAN else ">"
            word = order + layout.word
            (table_offset,) = struct.unpack_from(word, header, layout.table_offset_at)
            entry_size, entry_count = struct.unpack_from(
                order + "HH", header, layout.entry_size_and_count_at
            )
            for index in range(min(entry_count, _MAX_PROGRAM_HEADERS)):
                program.seek(table_offset + index * entry_size)
                entry = program.read(entry_size)
                # struct.error on a truncated entry is caught below: not a usable ELF.
                if struct.unpack_from(order + "I", entry, 0)[0] != PT_INTERP:
                    continue
                (segment_offset,) = struct.unpack_from(word, entry, layout.segment_offset_at)
                (segment_size,) = struct.unpack_from(word, entry, layout.segment_size_at)
                program.seek(segment_offset)
                raw = program.read(min(segment_size, _MAX_INTERPRETER_PATH))
                interpreter = os.fsdecode(raw.split(b"\0", 1)[0])
                return interpreter if os.path.isabs(interpreter) else None
    except (OSError, struct.error):
        return None
    return None


def _unique(paths: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for path in paths:
        if path not in seen:
            seen.add(path)
            yield path


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def program_rules(spec: WorkerSpec) -> list[PathRule]:
    """One execute rule per allowed program, and one per loader those programs name.

    Tried without the loader's rule: every dynamically linked program, the interpreter
    included, fails with EACCES, because binfmt_elf opens the loader with the same
    execute check as the program.  So the loader must be executable (see the module
    docstring for what that costs).  Shebang interpreters are deliberately not added:
    a script whose interpreter is not itself allowed fails, rather than silently
    widening the allowlist to, say, /bin/sh.
    """
    return list(_program_rules(spec.executables))


@functools.lru_cache(maxsize=8)
def _program_rules(executables: tuple[str, ...]) -> tuple[PathRule, ...]:
    # Cached: the zygote computes it once (see ``prepare``), and every worker forked
    # from it skips reading the ELF headers of every allowed program again.
    programs = [os.path.realpath(sys.executable)]
    programs += [os.path.realpath(path) for path in executables]
    programs = [path for path in _unique(programs) if _is_regular_file(path)]
    rules = [PathRule(path, RUN_PROGRAM, "allowed program") for path in programs]
    loaders: list[str] = []
    for program in programs:
        interpreter = elf_interpreter(program)
        if interpreter is not None:
            # The symlink and its target name the same inode, so one rule covers both;
            # the realpath is what the rule is really on.
            loaders.append(os.path.realpath(interpreter))
    rules += [
        PathRule(path, RUN_PROGRAM, "ELF loader")
        for path in _unique(loaders)
        if path not in programs and _is_regular_file(path)
    ]
    return tuple(rules)


def _interpreter_paths() -> Iterator[str]:
    # Never the checkout on sys.path nor the virtualenv's root (see runtime.py): without
    # a mount namespace these rules are all that keeps a session out of them.
    yield from sorted(runtime.INSTALLATION | runtime.LIBRARY_DIRECTORIES)
    if runtime.IN_VIRTUALENV:
        # Read by an interpreter the session starts through sys.executable, to find the
        # libraries.
        yield os.path.join(sys.prefix, "pyvenv.cfg")


def prepare(executables: tuple[str, ...]) -> None:
    """Resolve the execute rules once, in the zygote, before it forks workers."""
    _program_rules(executables)


def path_rules(spec: WorkerSpec, workspace: str, private_tmp: bool = True) -> list[PathRule]:
    """Every rule the layer adds, in order; paths that do not exist are left out.

    Without a private /tmp and /dev/shm (no mount namespace) they are the host's,
    shared with every other process, so only /dev/null is granted then.
    """
    rules = [PathRule(workspace, READ_WRITE, "workspace")]
    shared = () if private_tmp else ("/tmp", "/dev/shm")
    rules += [
        PathRule(path, READ_WRITE, "read-write path")
        for path in READ_WRITE_PATHS
        if path not in shared
    ]
    rules += [PathRule(path, READ_ONLY, "system path") for path in READ_ONLY_SYSTEM_PATHS]
    rules += [PathRule(path, READ_ONLY, "system path") for path in _usr_without_programs()]
    rules += [PathRule(path, READ_ONLY, "Python") for path in _unique(_interpreter_paths())]
    rules += program_rules(spec)
    rules = [rule for rule in rules if os.path.exists(rule.path)]
    if private_tmp:
        # The mount namespace covers the directory of all workspaces with an empty tmpfs.
        return rules
    # In the host's view no rule may cover the directory of all workspaces (say, a state
    # directory on sys.path): every session could read every other one.
    others = os.path.dirname(os.path.realpath(spec.workspace))
    return [rule for rule in rules if rule.why == "workspace" or not _covers(rule.path, others)]


PROGRAM_DIRECTORIES = frozenset({"bin", "sbin", "games"})


def _usr_without_programs(root: str = "/usr") -> list[str]:
    """Everything beneath /usr (and /usr/local) except the directories of programs."""
    paths: list[str] = []
    for base in (root, os.path.join(root, "local")):
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            continue
        for name in entries:
            if name in PROGRAM_DIRECTORIES or (base == root and name == "local"):
                continue
            paths.append(os.path.join(base, name))
    return paths


def _covers(rule_path: str, path: str) -> bool:
    rule = os.path.realpath(rule_path)
    return path == rule or path.startswith(rule.rstrip("/") + "/")


# --- building and enforcing the ruleset ------------------------------------------------------


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


def restrict_self(handled: HandledRights, rules: Iterable[PathRule]) -> int:
    """Confine the calling thread and its future children; returns how many rules held."""
    ruleset_fd = _create_ruleset(handled)
    try:
        added = sum(_add_path_rule(ruleset_fd, rule, handled.fs) for rule in rules)
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


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1  # no /proc to ask; the worker is single-threaded by construction


def _describe(abi: int, handled: HandledRights, rules: list[PathRule]) -> str:
    programs = sum(rule.why == "allowed program" for rule in rules)
    parts = [
        "read-only system and Python",
        "read-write workspace and tmp",
        f"execute {programs} program(s) and their loader",
    ]
    if handled.net:
        parts.append("TCP bind/connect denied")
    elif abi >= FIRST_ABI_WITH_NET:
        parts.append("TCP allowed by policy")
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
    handled = handled_rights(abi, spec.policy.isolation.network)
    rules = path_rules(spec, workspace, private_tmp)
    restrict_self(handled, rules)
    return LayerStatus("landlock", True, _describe(abi, handled, rules))
