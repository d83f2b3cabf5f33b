"""What a worker may read, write and execute: the path tables and the execute allowlist.

Each rule names a path and the rights granted beneath it; ``landlock_abi.restrict_self``
enforces them.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import Iterable, Iterator

from sandbox.confine import runtime
from sandbox.confine.base import WorkerSpec
from sandbox.confine.elf import elf_interpreter
from sandbox.confine.landlock_abi import ALL_KNOWN_FS_RIGHTS, FsAccess, PathRule

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
