"""Which ``pip install`` lines a session may run, and the arguments pip then gets.

A session's pip installs from the policy's index into the session's own site
directory, and nowhere else.  The confinement already holds that (Landlock lets pip
write only the workspace and the private /tmp; the network policy decides which hosts
it reaches); this check makes a line that asks for more fail early, naming the option,
rather than midway with a permission error.  Options are an allowlist: one pip adds
later is refused until someone reads what it does.

Requirement files are read here, checked line by line with the same rules, and pip
gets the checked copy: what pip reads is what was checked.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from sandbox.commands import CommandDenied, Token, Word, tokenize
from sandbox.policy import Packages


class PipRefused(Exception):
    """A ``pip`` line the sandbox will not run; ``option`` is what it refused."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"pip: `{option}` is refused: {reason}")
        self.option = option


# A requirement file larger than this is no requirement file.
MAX_REQUIREMENT_FILE_BYTES = 1 << 20

_FLAGS = {
    "-U": "--upgrade",
    "--upgrade": "--upgrade",
    "--no-deps": "--no-deps",
    "--pre": "--pre",
    "-q": "--quiet",
    "--quiet": "--quiet",
    "-v": "--verbose",
    "--verbose": "--verbose",
    "--force-reinstall": "--force-reinstall",
    "--prefer-binary": "--prefer-binary",
    "--no-color": "--no-color",
    "--no-index": "--no-index",
    "--dry-run": "--dry-run",
    "--no-compile": "--no-compile",
    "--no-warn-conflicts": "--no-warn-conflicts",
    "--ignore-requires-python": "--ignore-requires-python",
}
# Options that take a value, each checked by its own rule below.
_VALUED = {
    "-r": "--requirement",
    "--requirement": "--requirement",
    "-c": "--constraint",
    "--constraint": "--constraint",
    "-i": "--index-url",
    "--index-url": "--index-url",
    "-f": "--find-links",
    "--find-links": "--find-links",
    "--upgrade-strategy": "--upgrade-strategy",
    "--progress-bar": "--progress-bar",
    "--only-binary": "--only-binary",
    "--no-binary": "--no-binary",
    "--timeout": "--timeout",
    "--retries": "--retries",
}
# Options that would put packages elsewhere or fetch them from elsewhere: why each goes.
_ESCAPES = {
    "-t": "packages go only into the session's site directory",
    "--target": "packages go only into the session's site directory",
    "--user": "packages go only into the session's site directory",
    "--prefix": "packages go only into the session's site directory",
    "--root": "packages go only into the session's site directory",
    "--src": "packages go only into the session's site directory",
    "-e": "editable installs are not supported; install a wheel",
    "--editable": "editable installs are not supported; install a wheel",
    "--extra-index-url": "packages come only from the policy's index (packages.index_url)",
    "--trusted-host": "only the policy's index is trusted (packages.index_url)",
    "--proxy": "the session's network path is the service's",
    "--cert": "the session's network path is the service's",
    "--client-cert": "the session's network path is the service's",
    "--isolated": "the sandbox chooses pip's configuration",
}
_ONE_OF = {
    "--upgrade-strategy": ("only-if-needed", "eager"),
    "--progress-bar": ("on", "off", "raw"),
}
_VCS = re.compile(r"^(git|hg|svn|bzr)\+", re.IGNORECASE)
_ARCHIVE = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


@dataclass
class InstallArguments:
    """What pip gets after its subcommand, and the requirement files' checked texts."""

    subcommand: str = "install"
    arguments: list[str] = field(default_factory=list)
    # name pip reads -> checked text; the installer writes them beside the staging area.
    requirement_files: dict[str, str] = field(default_factory=dict)


def pip_words(line: str) -> tuple[str, list[str]]:
    """A pip line's subcommand and the words after it, quoted as a shell quotes."""
    try:
        tokens = tokenize(line)
    except CommandDenied as denial:
        raise PipRefused(line, denial.message) from None
    words = [token.text for token in tokens if isinstance(token, Word)]
    operator = next((token.text for token in tokens if isinstance(token, Token)), None)
    if operator is not None:
        raise PipRefused(operator, "a pip line runs alone, with no shell operator")
    return subcommand_arguments(words)


def subcommand_arguments(words: list[str]) -> tuple[str, list[str]]:
    """``pip install …`` (or ``python -m pip …``) as ("install", the words after it)."""
    if len(words) >= 3 and re.fullmatch(r"python[\d.]*", os.path.basename(words[0])):
        words = words[2:] if words[1] == "-m" else words
    tool = os.path.basename(words[0]) if words else ""
    if not re.fullmatch(r"pip[\d.]*", tool):
        raise PipRefused(tool or "(nothing)", "packages install with pip (`%pip install name`)")
    rest = words[1:]
    if not rest or (rest[0] != "install" and rest[0] not in _INSPECTIONS):
        given = rest[0] if rest else "(no subcommand)"
        raise PipRefused(f"pip {given}", "a session runs `pip install`, `list`, `show`, `freeze`")
    return rest[0], rest[1:]


def check_line(line: str, cwd: str, workspace: str, policy: Packages) -> InstallArguments:
    """A pip line checked: what pip gets after its subcommand; raises ``PipRefused``."""
    subcommand, words = pip_words(line)
    if subcommand == "install":
        return check_install(words, cwd, workspace, policy)
    return InstallArguments(subcommand=subcommand, arguments=_inspection(subcommand, words))


# pip's read-only subcommands, and the options each may take (None: any value).
_INSPECTIONS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "list": {"--not-required": (), "--format": ("columns", "freeze", "json")},
    "freeze": {"--all": ()},
    "show": {"-f": (), "--files": (), "-v": (), "--verbose": ()},
}
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _inspection(subcommand: str, words: list[str]) -> list[str]:
    allowed = _INSPECTIONS[subcommand]
    checked: list[str] = []
    for word in words:
        if not word.startswith("-"):
            if subcommand != "show" or not _PROJECT_NAME.match(word):
                raise PipRefused(word, f"`pip {subcommand}` takes no such argument")
            checked.append(word)
            continue
        name, _, value = word.partition("=")
        values = allowed.get(name)
        if values is None or (values and value not in values) or (not values and value):
            raise PipRefused(name, f"not an option `pip {subcommand}` takes in a session")
        checked.append(word)
    return checked


def check_install(words: list[str], cwd: str, workspace: str, policy: Packages) -> InstallArguments:
    """``words`` (after ``install``) checked; relative paths (from ``cwd``) made absolute."""
    checked = InstallArguments()
    _check_words(words, _Where(cwd, workspace), policy, checked, in_file=False)
    return checked


@dataclass(frozen=True)
class _Where:
    base: str  # what a relative path is relative to: the cwd, or a requirement file's directory
    root: str  # where every path must lie: the workspace


def _check_words(
    words: list[str], where: _Where, policy: Packages, checked: InstallArguments, *, in_file: bool
) -> None:
    position = 0
    while position < len(words):
        word = words[position]
        position += 1
        if not word.startswith("-"):
            checked.arguments.append(_requirement(word, where, policy))
            continue
        name, attached, value = _split_option(word)
        if name in _ESCAPES:
            raise PipRefused(name, _ESCAPES[name])
        if name in _FLAGS and not attached:
            checked.arguments.append(_FLAGS[name])
            continue
        if len(name) == 2 and not name.startswith("--") and attached and name in _FLAGS:
            # "-qU", "-qq": short flags together.
            for letter in word[1:]:
                if f"-{letter}" not in _FLAGS:
                    raise PipRefused(f"-{letter}", "not an option a session's pip takes")
                checked.arguments.append(_FLAGS[f"-{letter}"])
            continue
        if name not in _VALUED:
            if name == "--hash" and in_file:
                checked.arguments.append(word)
                continue
            raise PipRefused(name, "not an option a session's pip takes")
        if not attached:
            if position >= len(words):
                raise PipRefused(name, "needs a value")
            value = words[position]
            position += 1
        checked.arguments += _valued(_VALUED[name], value, where, policy, checked, in_file)


def _split_option(word: str) -> tuple[str, bool, str]:
    """(name, whether a value is attached, the value) of ``--name=value``, ``-rfile``."""
    if word.startswith("--"):
        name, equals, value = word.partition("=")
        return name, bool(equals), value
    return word[:2], len(word) > 2, word[2:]


def _valued(
    option: str,
    value: str,
    where: _Where,
    policy: Packages,
    checked: InstallArguments,
    in_file: bool,
) -> list[str]:
    if option in ("--requirement", "--constraint"):
        if in_file:
            raise PipRefused(option, "a requirement file may not name another one")
        return [option, _requirement_file(value, where, policy, checked)]
    if option == "--index-url":
        if value.rstrip("/") != policy.index_url.rstrip("/"):
            raise PipRefused(
                option, "packages come only from the policy's index (packages.index_url)"
            )
        return []  # the installer passes the policy's own
    if option == "--find-links":
        return [option, _inside(value, where, option)]
    if option in ("--only-binary", "--no-binary"):
        if policy.only_binary and not (option == "--only-binary" and value == ":all:"):
            raise PipRefused(option, "binary wheels only (policy key packages.only_binary)")
        return [f"{option}={value}"]
    if option in ("--timeout", "--retries"):
        if not _NUMBER.match(value):
            raise PipRefused(option, f"{value!r} is not a number")
        return [f"{option}={value}"]
    allowed = _ONE_OF[option]
    if value not in allowed:
        raise PipRefused(option, f"takes one of {', '.join(allowed)}")
    return [f"{option}={value}"]


def _requirement(word: str, where: _Where, policy: Packages) -> str:
    if _VCS.match(word):
        raise PipRefused(word, "VCS URLs are not supported; install from the index")
    if "://" in word or word.startswith("file:"):
        raise PipRefused(word, "packages come from the policy's index or the workspace, not a URL")
    if "@" in word:
        raise PipRefused(word, "direct references (`name @ url`) are not supported")
    if "/" in word or word.startswith((".", "~")) or word.lower().endswith(_ARCHIVE):
        path = _inside(word, where, word)
        # pip builds a local source archive or directory whatever --only-binary says.
        if policy.only_binary and not (path.lower().endswith(".whl") and not os.path.isdir(path)):
            raise PipRefused(
                word, "only a wheel (.whl) installs from a path (policy key packages.only_binary)"
            )
        return path
    return word


def _inside(path: str, where: _Where, option: str) -> str:
    """``path`` made absolute; refused unless it lies inside the workspace."""
    if "://" in path:
        raise PipRefused(option, "only a path inside the workspace")
    resolved = os.path.realpath(os.path.join(where.base, os.path.expanduser(path)))
    root = os.path.realpath(where.root)
    if resolved != root and not resolved.startswith(root + os.sep):
        raise PipRefused(option, f"{path!r} is outside the workspace")
    return resolved


def _requirement_file(path: str, where: _Where, policy: Packages, checked: InstallArguments) -> str:
    resolved = _inside(path, where, path)
    try:
        with open(resolved, "rb") as file:
            raw = file.read(MAX_REQUIREMENT_FILE_BYTES + 1)
    except OSError as exc:
        raise PipRefused(path, f"cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_REQUIREMENT_FILE_BYTES:
        raise PipRefused(path, f"is larger than {MAX_REQUIREMENT_FILE_BYTES} bytes")
    lines = []
    for line in _logical_lines(raw.decode("utf-8", "replace")):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise PipRefused(path, f"has a line pip cannot read: {exc}") from None
        if not words:
            continue
        one_line = InstallArguments()
        # A relative path in the file is the file's directory's, and must stay inside.
        in_file_dir = _Where(os.path.dirname(resolved), where.root)
        _check_words(words, in_file_dir, policy, one_line, in_file=True)
        lines.append(shlex.join(one_line.arguments))
    name = f"requirements-{len(checked.requirement_files)}.txt"
    checked.requirement_files[name] = "\n".join(lines) + "\n"
    return name


def _logical_lines(text: str) -> list[str]:
    """Lines as pip reads them: a backslash at a line's end joins the next one."""
    joined = re.sub(r"\\\r?\n", " ", text)
    return joined.splitlines()
