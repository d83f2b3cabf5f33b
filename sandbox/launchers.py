"""Launchers: allowed programs that can run other programs, and what each grants.

A table, read by the policy's validation (a policy that refuses launchers may not
allow one) and by ``codesherpa policy check`` (a warning for each that is allowed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class _ProgramRule(Protocol):
    @property
    def deny_args(self) -> Sequence[str]: ...


class _CommandRules(Protocol):
    """The part of a policy's ``[commands]`` section this module reads."""

    @property
    def allow(self) -> Sequence[str]: ...

    @property
    def rules(self) -> Mapping[str, _ProgramRule]: ...


class Reach(Enum):
    """How far a launcher reaches; the value is how a reviewer reads it."""

    ANY_PROGRAM = "runs any program"
    FIXED_ARGUMENTS = "runs a program it is given, with arguments of its own choosing"
    THROUGH_SHELL = "runs command lines through a shell"


@dataclass(frozen=True)
class Launcher:
    """What allowing a program grants beyond the program itself."""

    grants: str  # one sentence for a reviewer
    reach: Reach = Reach.ANY_PROGRAM
    # deny_args that together take the grant away; empty when no argument rule can.
    neutralised_by: tuple[str, ...] = ()


SHELL = Launcher(
    "A shell runs any command line, with every operator and expansion the command policy refuses."
)
_RUNS_ITS_ARGUMENTS = Launcher("Runs any program named in its arguments, with any arguments.")
_SCRIPTING = Launcher("Runs any code given with -e or in a script, including starting any program.")
_PYTHON = Launcher(
    "Runs any Python code (-c, a script, -m or its input), unchecked by the command policy."
)
_AWK = Launcher(
    "system(), `print | cmd` and `cmd | getline` run command lines through /bin/sh; "
    "if awk is gawk on this host, -l and @load also load native code.",
    reach=Reach.THROUGH_SHELL,
)
_EDITOR = Launcher("`:!cmd`, `:set shell=PROG` and -c run any program from inside the editor.")
_PAGER = Launcher(
    "`!cmd` and `|` run command lines through $SHELL, though only interactively: "
    "without a terminal it copies its input.",
    reach=Reach.THROUGH_SHELL,
)
_PIP = Launcher("Runs the build code of any package it installs from source.")
_LOADER = Launcher("The dynamic loader runs any readable binary, even one without execute rights.")

# Program name -> what allowing it grants.  Names with a version suffix
# (python3.11, perl5.36) are looked up without it.
LAUNCHERS: dict[str, Launcher] = {
    "sh": SHELL,
    "bash": SHELL,
    "dash": SHELL,
    "zsh": SHELL,
    "ksh": SHELL,
    "ash": SHELL,
    "csh": SHELL,
    "tcsh": SHELL,
    "fish": SHELL,
    "env": _RUNS_ITS_ARGUMENTS,
    "xargs": Launcher("Runs any program named in its arguments, with arguments read from input."),
    "nohup": _RUNS_ITS_ARGUMENTS,
    "timeout": _RUNS_ITS_ARGUMENTS,
    "nice": _RUNS_ITS_ARGUMENTS,
    "ionice": _RUNS_ITS_ARGUMENTS,
    "setsid": _RUNS_ITS_ARGUMENTS,
    "stdbuf": _RUNS_ITS_ARGUMENTS,
    "taskset": _RUNS_ITS_ARGUMENTS,
    "chrt": _RUNS_ITS_ARGUMENTS,
    "flock": _RUNS_ITS_ARGUMENTS,
    "time": _RUNS_ITS_ARGUMENTS,
    "chroot": _RUNS_ITS_ARGUMENTS,
    "unshare": _RUNS_ITS_ARGUMENTS,
    "nsenter": _RUNS_ITS_ARGUMENTS,
    "sudo": _RUNS_ITS_ARGUMENTS,
    "su": Launcher("Runs any command line (-c) through the target user's shell."),
    "strace": Launcher("Runs any program named in its arguments, under trace."),
    "gdb": Launcher("Runs any program, and any command line with `shell` or `!`."),
    "busybox": Launcher("Holds a shell and dozens of tools: `busybox sh` runs any command line."),
    "python": _PYTHON,
    "python3": _PYTHON,
    "pypy3": _PYTHON,
    "pip": _PIP,
    "pip3": _PIP,
    "perl": _SCRIPTING,
    "ruby": _SCRIPTING,
    "node": _SCRIPTING,
    "php": _SCRIPTING,
    "lua": _SCRIPTING,
    "Rscript": _SCRIPTING,
    "find": Launcher(
        "-exec, -execdir, -ok and -okdir run any program with any arguments.",
        neutralised_by=("-exec", "-execdir", "-ok", "-okdir"),
    ),
    "tar": Launcher(
        "--rsh-command runs any program; --to-command, --checkpoint-action=exec, "
        "-I/--use-compress-program, -F/--info-script and --new-volume-script run "
        "command lines through /bin/sh.",
        neutralised_by=(
            "--rsh-command",
            "--to-command",
            "--checkpoint-action",
            "--use-compress-program",
            "-I",
            "--info-script",
            "-F",
            "--new-volume-script",
        ),
    ),
    "sort": Launcher(
        "--compress-program=PROG runs PROG, any program, to compress temporary files.",
        reach=Reach.FIXED_ARGUMENTS,
        neutralised_by=("--compress-program",),
    ),
    "split": Launcher(
        "--filter=CMD runs a command line through $SHELL for each piece.",
        reach=Reach.THROUGH_SHELL,
        neutralised_by=("--filter",),
    ),
    "zip": Launcher(
        "-TT/--unzip-command runs a command line through /bin/sh to test the archive.",
        reach=Reach.THROUGH_SHELL,
        neutralised_by=("-TT", "--unzip-command"),
    ),
    "awk": _AWK,
    "mawk": _AWK,
    "nawk": _AWK,
    "gawk": Launcher(
        "-l and @load load native code from a shared library; system() and pipes run "
        "command lines through /bin/sh."
    ),
    "sed": Launcher(
        "GNU sed's `e` command and the `e` flag of `s///` run command lines through /bin/sh.",
        reach=Reach.THROUGH_SHELL,
    ),
    "git": Launcher(
        "Runs programs named in its configuration or options (-c core.pager, `!` aliases, "
        "hooks, core.sshCommand, --upload-pack), and .git/config is the session's to write."
    ),
    "make": Launcher("Runs the recipes of any Makefile the session writes: any command line."),
    "ssh": Launcher(
        "ProxyCommand and LocalCommand run command lines, PKCS11Provider loads native code, "
        "and it opens network connections."
    ),
    "rsync": Launcher("-e/--rsh runs any program as the remote shell."),
    "vim": _EDITOR,
    "vi": _EDITOR,
    "view": _EDITOR,
    "nvim": _EDITOR,
    "ex": _EDITOR,
    "less": _PAGER,
    "more": _PAGER,
    "man": _PAGER,
    "ld.so": _LOADER,
    "ld-linux-x86-64.so.2": _LOADER,
    "ld-linux-aarch64.so.1": _LOADER,
}

_VERSION_SUFFIX = re.compile(r"[\d.]+$")


def launcher_for(program: str) -> Launcher | None:
    """The launcher entry for an allowed program name, if it is one."""
    return LAUNCHERS.get(program) or LAUNCHERS.get(_VERSION_SUFFIX.sub("", program))


@dataclass(frozen=True)
class LauncherExposure:
    """An allowed launcher and the deny_args its rule still lacks to neutralise it."""

    program: str
    launcher: Launcher
    missing: tuple[str, ...]

    @property
    def runs_any_program(self) -> bool:
        return self.launcher.reach is Reach.ANY_PROGRAM

    def describe(self) -> str:
        """What it grants and what would take that away, as one clause."""
        grants = self.launcher.grants.rstrip(".")
        first_word = grants.split()[0]
        # After a colon "A shell runs" reads as "a shell runs"; "GNU" and
        # "ProxyCommand" keep their capitals.
        if first_word[0].isupper() and first_word[1:] == first_word[1:].lower():
            grants = grants[0].lower() + grants[1:]
        return f"{grants} ({self.remedy()})"

    def remedy(self) -> str:
        if self.missing:
            denied = ", ".join(repr(arg) for arg in self.missing)
            return f"deny {denied} in commands.rules.{self.program} to take this away"
        return "no argument rule can take this away"


def launcher_exposures(commands: _CommandRules) -> list[LauncherExposure]:
    """The allowed programs that can still run other programs under these rules."""
    exposures = []
    for program in commands.allow:
        launcher = launcher_for(program)
        if launcher is None:
            continue
        rule = commands.rules.get(program)
        denied = set(rule.deny_args) if rule else set()
        missing = tuple(arg for arg in launcher.neutralised_by if arg not in denied)
        if launcher.neutralised_by and not missing:
            continue
        exposures.append(LauncherExposure(program, launcher, missing))
    return exposures
