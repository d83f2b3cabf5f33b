"""A session's own packages: ``pip install`` into ``.packages`` in its workspace.

The site directory lives in the workspace, so it is the session's alone, survives a
restart (the workspace does), and counts against the workspace quota (it is on the
same bounded mount).  Listings leave it out (``is_site_path``); it is still the
user's to read and delete.

It is on ``sys.path`` *after* the interpreter's own directories: a session adds
modules, it never replaces one the service ships.  The worker's own modules, and
those the zygote preloaded, are imported before any user code runs anyway, so a
package with the same name could not take their place in the process.  ``.pth``
files in it are not run (a worker starting up runs no user code).

pip runs as a child of the worker, under the same confinement and the run's wall
clock, with ``--prefix`` pointed at a staging directory inside the site directory
and the site directory on its ``sys.path``, after the interpreter's own directories
as in the session: a requirement the service's packages or earlier installs already
satisfy is not fetched again, and nothing installed replaces a module pip imports.
Only when pip succeeds does the staged tree move in, entry by entry, by rename on the
same file system; a failure (a full quota, an interrupt, a refused download) leaves
nothing half-installed.
"""

from __future__ import annotations

import glob
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from urllib.parse import urlsplit

from sandbox.command_runner import CommandResult
from sandbox.commands import CommandDenied
from sandbox.pip_arguments import InstallArguments, PipRefused, check_line
from sandbox.policy import Packages

SITE_DIRECTORY = ".packages"
_STAGING_PREFIX = ".incoming-"
# pip runs isolated (``-I``: no PYTHONPATH, no working directory on sys.path) and this
# puts the site directory *after* the interpreter's own directories, as in the session:
# a module installed there (``pip``, ``json``) never replaces what pip itself imports.
# pip lists every directory on sys.path for installed packages and gives up at one it
# may not read (a development checkout the interpreter's .pth names, hidden from the
# session by Landlock): such directories are of no use to the session anyway.
_PIP_BOOTSTRAP = """
import os, runpy, sys
def hidden(path):
    try:
        os.listdir(path)
    except PermissionError:
        return True
    except OSError:
        pass
    return False
sys.path[:] = [path for path in sys.path if not (path and hidden(path))]
sys.path.append(os.environ.pop("CODESHERPA_SITE"))
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""
# After a failed install: the likeliest reason a package "has no matching version".
ONLY_BINARY_NOTE = (
    b"pip: note: only binary wheels are installed here (policy key packages.only_binary):"
    b" a package published only as source has no version to install\n"
)
_PACKAGE_TOOLS = re.compile(r"(pip|pip3|pip3\.\d+|conda|mamba|micromamba|uv)")
_PYTHON = re.compile(r"python[\d.]*")
# pip reads these from the environment; a session's %env must not steer its installs.
_PIP_VARIABLE = re.compile(r"^PIP_")


def installs_packages(line: str) -> bool:
    """Whether a command line is a package tool (``pip``, ``python -m pip``, ``conda``)."""
    words = line.split()
    if len(words) >= 3 and _PYTHON.fullmatch(os.path.basename(words[0])) and words[1] == "-m":
        words = words[2:]
    return bool(words) and _PACKAGE_TOOLS.fullmatch(os.path.basename(words[0])) is not None


def site_directory(workspace: str) -> str:
    return os.path.join(workspace, SITE_DIRECTORY)


def is_site_path(relative: str) -> bool:
    """Whether a workspace-relative path is in the site directory (left out of listings)."""
    return relative == SITE_DIRECTORY or relative.startswith(SITE_DIRECTORY + "/")


def enable(workspace: str) -> None:
    """Put the site directory on ``sys.path``; remove what an install cut short left."""
    site = site_directory(workspace)
    for leftover in glob.glob(os.path.join(glob.escape(site), _STAGING_PREFIX + "*")):
        shutil.rmtree(leftover, ignore_errors=True)
    if site not in sys.path:
        sys.path.append(site)


def for_worker(policy: Packages, workspace: str) -> PackageInstaller | None:
    """The session's installer, its site directory on ``sys.path``; None while installs are off."""
    if policy.install == "off":
        return None
    enable(workspace)
    return PackageInstaller(policy, workspace)


class PackageInstaller:
    """Runs one session's checked ``pip install`` lines."""

    def __init__(self, policy: Packages, workspace: str) -> None:
        self._policy = policy
        self._workspace = workspace
        self._site = site_directory(workspace)

    def check(self, line: str) -> InstallArguments:
        """A pip line's arguments, checked; raises ``PipRefused``."""
        return check_line(line, os.getcwd(), self._workspace, self._policy)

    def run(self, checked: InstallArguments, stdout_fd: int, stderr_fd: int) -> int:
        """pip's exit status, its output on the given descriptors."""
        if checked.subcommand != "install":
            # list, show, freeze: what the session can import, the site directory included.
            command = [sys.executable, "-I", "-c", _PIP_BOOTSTRAP, checked.subcommand]
            command += ["--disable-pip-version-check", *checked.arguments]
            return self._pip(command, self._workspace, stdout_fd, stderr_fd)
        if not self._policy.index_url:
            os.write(stderr_fd, b"pip: no package index is configured (packages.index_url)\n")
            return 1
        os.makedirs(self._site, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self._site)
        try:
            code = self._run_pip(checked, staging, stdout_fd, stderr_fd)
            if code == 0:
                return self._move_in(staging, stderr_fd)
            if self._policy.only_binary:
                os.write(stderr_fd, ONLY_BINARY_NOTE)
            return code
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            importlib.invalidate_caches()

    def install_line(self, line: str, stdout_fd: int) -> int:
        """A cell's ``%pip``/``!pip`` line: checked (``PipRefused``), then run."""
        return self.run(self.check(line), stdout_fd, 2)

    def command(self, checked: InstallArguments, staging: str) -> list[str]:
        command = [
            sys.executable,
            "-I",
            "-c",
            _PIP_BOOTSTRAP,
            "install",
            "--prefix",
            staging,
            "--index-url",
            self._policy.index_url,
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "--no-warn-script-location",
        ]
        parts = urlsplit(self._policy.index_url)
        if parts.scheme == "http" and parts.hostname:
            command += ["--trusted-host", parts.hostname]  # the operator chose it as given
        if self._policy.only_binary:
            command.append("--only-binary=:all:")
        return command + checked.arguments

    def _run_pip(
        self, checked: InstallArguments, staging: str, stdout_fd: int, stderr_fd: int
    ) -> int:
        for name, text in checked.requirement_files.items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as file:
                file.write(text)
        return self._pip(self.command(checked, staging), staging, stdout_fd, stderr_fd)

    def _pip(self, command: list[str], cwd: str, stdout_fd: int, stderr_fd: int) -> int:
        environment = {
            name: value for name, value in os.environ.items() if not _PIP_VARIABLE.match(name)
        }
        environment.update(
            PIP_CONFIG_FILE=os.devnull,  # none of the host's pip configuration
            CODESHERPA_SITE=self._site,  # appended to sys.path by _PIP_BOOTSTRAP
            PYTHONNOUSERSITE="1",
        )
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout_fd,
            stderr=stderr_fd,
            env=environment,
            cwd=cwd,
            close_fds=True,
        )
        try:
            return process.wait()
        except BaseException:
            # An interrupt (the run's wall clock): pip goes now, and so does its staging.
            process.kill()
            process.wait()
            raise

    def _move_in(self, staging: str, stderr_fd: int) -> int:
        """Move the staged packages into the site directory; 0, or 1 with a message."""
        pattern = os.path.join(glob.escape(staging), "lib*", "python*", "*-packages")
        staged = [path for path in glob.glob(pattern) if os.path.isdir(path)]
        moved: list[str] = []
        try:
            for directory in staged:
                for name in sorted(os.listdir(directory)):
                    self._replace(os.path.join(directory, name), name)
                    moved.append(name)
        except OSError as exc:
            os.write(stderr_fd, f"pip: moving the installed files in failed: {exc}\n".encode())
            return 1
        # As in Jupyter: a module imported before keeps its old code until a restart.
        stale = sorted({name.partition(".")[0] for name in moved} & sys.modules.keys())
        if stale:
            note = (
                f"Note: {', '.join(stale)} was imported before this install; restart the "
                "session to use the installed version.\n"
            )
            os.write(stderr_fd, note.encode())
        return 0

    def _replace(self, source: str, name: str) -> None:
        if name.endswith(".dist-info"):
            # An upgrade: the older version's metadata goes, or both would be found.
            project = _project(name)
            for existing in os.listdir(self._site):
                if existing.endswith(".dist-info") and _project(existing) == project:
                    shutil.rmtree(os.path.join(self._site, existing), ignore_errors=True)
        target = os.path.join(self._site, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.unlink(target)
        os.rename(source, target)


def _project(dist_info: str) -> str:
    return re.sub(r"[-_.]+", "_", dist_info.split("-", 1)[0]).lower()


def plan(line: str, installer: PackageInstaller | None) -> Callable[[], CommandResult]:
    """A ``/command`` pip line as the command runner's kind of plan; raises ``CommandDenied``."""
    if installer is None:
        raise CommandDenied("packages", packages_off_message(line))
    try:
        checked = installer.check(line)
    except PipRefused as refusal:
        raise CommandDenied("package-option", str(refusal)) from None
    return lambda: CommandResult(installer.run(checked, 1, 2))


def packages_off_message(line: str) -> str:
    return (
        f"`{line}` did nothing: installing packages is off in this sandbox "
        '(policy key packages.install = "off")'
    )
