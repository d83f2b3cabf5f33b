"""What a cell's magic lines do when they run; ``sandbox/cell_magics.py`` rewrites them.

``!cmd`` runs as a ``/command`` line: the worker gives ``CellMagics.run_command``,
which checks the line against the session's command policy and runs it without a
shell, its output going to the cell's stdout and stderr.  As in Jupyter, a command
that exits non-zero does not stop the cell (``_exit_code`` holds its status); a line
the policy refuses does, raising ``CommandNotAllowed`` before anything runs.
``!pip``/``%pip`` lines install packages where the policy has them on
(``sandbox/session_packages.py``), and are refused naming the policy key where it has
them off (``PackagesOff``) or the option where a line asks for more than a session's
installs may do (``PackageOptionRefused``).  The magics models write are in ``LINE_MAGICS`` and
``CELL_MAGICS``; any other raises ``UsageError`` naming it, as IPython does.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import runpy
import sys
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from sandbox.cell_magics import HELPER, transform
from sandbox.command_runner import CommandResult
from sandbox.commands import CommandDenied, DeniedRule
from sandbox.magic_timing import time_call, timeit
from sandbox.pip_arguments import PipRefused
from sandbox.session_packages import installs_packages, packages_off_message


class UsageError(Exception):
    """A magic this sandbox does not run, or one given arguments it cannot take."""


class PolicyRefusal(Exception):
    """A magic line the session's policy refuses; nothing of it ran."""

    def __init__(self, rule: DeniedRule, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class CommandNotAllowed(PolicyRefusal):
    """A ``!`` line the command policy refuses."""


class PackagesOff(PolicyRefusal):
    """``%pip``, ``!pip`` and their kin: installing packages is off."""


class PackageOptionRefused(PolicyRefusal):
    """A pip line that asks for what a session's installs may not do."""


# Shown as "UsageError: ...", as a user reads them in Jupyter, not with this module's path.
for _error in (UsageError, PolicyRefusal, CommandNotAllowed, PackagesOff, PackageOptionRefused):
    _error.__module__ = "builtins"

# The policy key behind each command rule a policy can tune; the other rules are the
# parser's (no shell expansion, no background jobs, ...).
POLICY_KEYS: dict[str, str] = {
    "allowlist": "commands.allow",
    "shell-operators": "commands.shell_operators",
    "argument": "commands.rules",
}
# ``$name`` and ``{expression}`` in a ``!`` line take values from the cell, as in IPython.
_EXPANSION = re.compile(r"\$\$|\{\{|\}\}|\$([A-Za-z_]\w*)|\{([^{}]+)\}")

CommandLine = Callable[[str, int], CommandResult]


class Installer(Protocol):
    def install_line(self, line: str, stdout_fd: int) -> int:
        """pip's exit status for a pip line, its stdout to ``stdout_fd``; raises PipRefused."""


def packages_off(line: str) -> PackagesOff:
    return PackagesOff("packages", packages_off_message(line))


def expand(command: str, frame: FrameType) -> str:
    """``command`` with ``$name`` and ``{expression}`` replaced by their values.

    A name or expression that does not evaluate is left as written (IPython's rule),
    and the command parser then refuses a ``$`` it cannot run.
    """

    def value(found: re.Match[str]) -> str:
        whole, name, expression = found.group(), found.group(1), found.group(2)
        if whole in ("$$", "{{", "}}"):
            return whole[0]
        try:
            return str(eval(name or expression, frame.f_globals, frame.f_locals))
        except Exception:  # noqa: BLE001 - not an expression: the text stays
            return whole

    return _EXPANSION.sub(value, command)


def run_source(source: str, frame: FrameType, first_line: int) -> object:
    """Run cell text whose first line is ``first_line`` of the caller's cell, with
    Jupyter's rule: the value of a last expression is returned."""
    filename = frame.f_code.co_filename
    tree = ast.parse("\n" * (first_line - 1) + transform(source), filename, "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    namespace = frame.f_globals
    exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
    if not isinstance(last, ast.Expr):
        return None
    expression = compile(ast.Expression(last.value), filename, "eval", dont_inherit=True)
    return eval(expression, namespace)


class CellMagics:
    """The calls rewritten magic lines make, for one session."""

    def __init__(self) -> None:
        # Checks a line against the command policy (CommandDenied) and runs it, its
        # stdout to the given descriptor; the worker sets it.
        self.run_command: CommandLine | None = None
        # Runs pip lines into the session's site directory; None while installs are off.
        self.installer: Installer | None = None
        # Where `%cd` with no argument goes back to, as IPython's goes home: the
        # directory the session started in, its workspace.
        self.home = os.getcwd()

    def prepare(self, source: str) -> str:
        """The cell as Python; its magic lines will call this object."""
        code = transform(source)
        if code is not source:
            setattr(builtins, HELPER, self)
        return code

    # -- the calls of rewritten lines ----------------------------------------------------

    def system(self, command: str) -> None:
        """``!cmd``: output to the cell's, exit status in ``_exit_code``."""
        frame = _caller()
        code = self._run(expand(command, frame), 1)
        frame.f_globals["_exit_code"] = code

    def getoutput(self, command: str) -> list[str]:
        """``x = !cmd``, ``!!cmd``: the command's output lines (stderr still to the cell's)."""
        return self._output(expand(command, _caller()))

    def line(self, name: str, args: str) -> object:
        frame = _caller()
        if name.startswith("%"):
            raise UsageError(f"cell magic `%{name}` must be the first line of its cell")
        magic = LINE_MAGICS.get(name)
        if magic is None:
            raise UsageError(
                f"Line magic function `%{name}` not found. This sandbox runs "
                + ", ".join(f"%{known}" for known in LINE_MAGICS)
            )
        return magic(self, args, frame)

    def cell(self, name: str, args: str, body: str) -> object:
        frame = _caller()
        magic = CELL_MAGICS.get(name)
        if magic is None:
            raise UsageError(
                f"Cell magic `%%{name}` not found. This sandbox runs "
                + ", ".join(f"%%{known}" for known in CELL_MAGICS)
            )
        return magic(self, args, body, frame)

    # -- commands ------------------------------------------------------------------------

    def _output(self, line: str) -> list[str]:
        # A file, not a pipe: the command may write more than a pipe holds before it ends.
        with tempfile.TemporaryFile() as output:
            self._run(line, output.fileno())
            output.seek(0)
            return output.read().decode("utf-8", "replace").splitlines()

    def _install(self, line: str, stdout_fd: int) -> int:
        if self.installer is None:
            raise packages_off(line)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            return self.installer.install_line(line, stdout_fd)
        except PipRefused as refusal:
            raise PackageOptionRefused(
                "package-option", f"`{line}` did nothing: {refusal}"
            ) from None

    def _run(self, line: str, stdout_fd: int) -> int | None:
        if installs_packages(line):
            return self._install(line, stdout_fd)
        if self.run_command is None:
            raise UsageError("`!` commands run only in a sandbox session")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # what the cell printed comes before the command's output
        try:
            result = self.run_command(line, stdout_fd)
        except CommandDenied as denial:
            key = POLICY_KEYS.get(denial.rule)
            where = f"; policy key {key}" if key else ""
            message = f"the command `{line}` was refused by rule '{denial.rule}'{where}"
            raise CommandNotAllowed(denial.rule, f"{message}: {denial.message}") from None
        if result.interrupted:
            raise KeyboardInterrupt
        return result.exit_code


def _caller() -> FrameType:
    # The rewritten line's frame: two up from here (this function, the magic's method).
    return sys._getframe(2)


# --- Line magics -------------------------------------------------------------------------

LineMagic = Callable[[CellMagics, str, FrameType], Any]


def _time(magics: CellMagics, args: str, frame: FrameType) -> object:
    return time_call(lambda: run_source(args, frame, frame.f_lineno or 1))


def _timeit(magics: CellMagics, args: str, frame: FrameType) -> object:
    try:
        return timeit(args, frame.f_globals)
    except ValueError as exc:
        raise UsageError(f"%timeit: {exc}") from None


def _nothing(magics: CellMagics, args: str, frame: FrameType) -> None:
    """``%matplotlib inline`` and kin: figures already come back after every run."""


def _package_tool(tool: str) -> LineMagic:
    def install(magics: CellMagics, args: str, frame: FrameType) -> None:
        magics._install(expand(f"{tool} {args}".strip(), frame), 1)

    return install


def _cd(magics: CellMagics, args: str, frame: FrameType) -> None:
    os.chdir(os.path.expanduser(args.strip("'\"")) if args else magics.home)
    print(os.getcwd())


def _pwd(magics: CellMagics, args: str, frame: FrameType) -> str:
    return os.getcwd()


def _ls(magics: CellMagics, args: str, frame: FrameType) -> None:
    magics._run(expand(f"ls {args}".strip(), frame), 1)


def _sx(magics: CellMagics, args: str, frame: FrameType) -> list[str]:
    return magics._output(expand(args, frame))


def _env(magics: CellMagics, args: str, frame: FrameType) -> object:
    if not args:
        return dict(os.environ)
    name, separator, value = args.partition("=")
    if not separator:
        name, _, value = args.partition(" ")
        if not value.strip():
            return os.environ.get(name.strip(), "")
    name, value = name.strip(), value.strip()
    os.environ[name] = value
    print(f"env: {name}={value}")
    return None


def _who(magics: CellMagics, args: str, frame: FrameType) -> None:
    names = sorted(name for name in frame.f_globals if not name.startswith("_"))
    print("\t".join(names) if names else "Interactive namespace is empty.")


def _reset(magics: CellMagics, args: str, frame: FrameType) -> None:
    namespace = frame.f_globals
    for name in [name for name in namespace if not (name.startswith("__") and name.endswith("__"))]:
        del namespace[name]


def _run_script(magics: CellMagics, args: str, frame: FrameType) -> None:
    words = args.split()
    if not words:
        raise UsageError("%run needs a file name")
    saved_argv = sys.argv
    sys.argv = words
    try:
        variables = runpy.run_path(words[0], run_name="__main__")
    finally:
        sys.argv = saved_argv
    frame.f_globals.update(
        {name: value for name, value in variables.items() if not name.startswith("__")}
    )


def _load_ext(magics: CellMagics, args: str, frame: FrameType) -> None:
    if args.strip() != "autoreload":
        raise UsageError(f"%load_ext {args}: extensions are not supported in this sandbox")


LINE_MAGICS: dict[str, LineMagic] = {
    "time": _time,
    "timeit": _timeit,
    "matplotlib": _nothing,
    "config": _nothing,
    "autoreload": _nothing,
    "load_ext": _load_ext,
    "pip": _package_tool("pip"),
    "conda": _package_tool("conda"),
    "mamba": _package_tool("mamba"),
    "cd": _cd,
    "pwd": _pwd,
    "ls": _ls,
    "sx": _sx,
    "system": _sx,
    "env": _env,
    "who": _who,
    "reset": _reset,
    "run": _run_script,
}


# --- Cell magics -------------------------------------------------------------------------


def _time_cell(magics: CellMagics, args: str, body: str, frame: FrameType) -> object:
    return time_call(lambda: run_source(body, frame, (frame.f_lineno or 1) + 1))


def _timeit_cell(magics: CellMagics, args: str, body: str, frame: FrameType) -> object:
    try:
        return timeit(args, frame.f_globals, body=body)
    except ValueError as exc:
        raise UsageError(f"%%timeit: {exc}") from None


def _shell_cell(magics: CellMagics, args: str, body: str, frame: FrameType) -> None:
    # The body's lines are one command line: a newline separates commands as ';' does.
    frame.f_globals["_exit_code"] = magics._run(expand(body.strip(), frame), 1)


def _writefile(magics: CellMagics, args: str, body: str, frame: FrameType) -> None:
    words = args.split()
    append = "-a" in words
    names = [word for word in words if word != "-a"]
    if len(names) != 1:
        raise UsageError("%%writefile needs one file name (and -a to append)")
    path = os.path.expanduser(names[0].strip("'\""))
    exists = os.path.exists(path)
    print(f"Appending to {path}" if append else f"{'Overwriting' if exists else 'Writing'} {path}")
    with open(path, "a" if append else "w", encoding="utf-8") as file:
        file.write(body if body.endswith("\n") else body + "\n")


CellMagic = Callable[[CellMagics, str, str, FrameType], Any]
CELL_MAGICS: dict[str, CellMagic] = {
    "time": _time_cell,
    "timeit": _timeit_cell,
    "bash": _shell_cell,
    "sh": _shell_cell,
    "writefile": _writefile,
}
