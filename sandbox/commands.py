"""Parse a `/command` line into a plan and check it against the command policy.

No shell ever sees the line.  This module tokenizes it with shell quoting rules,
builds pipelines joined by ``;``, ``&&`` and ``||`` with simple redirections, and
refuses everything a shell would expand (``$VAR``, ``$(...)``, backticks), run in the
background (``&``) or use as a launcher.  The check here gives an early, exact denial
that names the rule; the kernel (Landlock's execute right) holds the same allowlist
for every other way a session might start a program.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from sandbox.policy import Commands

_OPERATORS = ("2>&1", "&>", "2>>", "2>", ">>", "&&", "||", ">", "<", "|", ";", "&", "(", ")")
_REDIRECTS = {"2>&1", "&>", "2>>", "2>", ">>", ">", "<"}
_JOINERS = {"&&", "||", ";"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# Every rule a command can break, by its stable name: replies, metrics labels and the
# audit log carry it, so a worker's reply naming any other is refused.
DeniedRule = Literal[
    "syntax",
    "expansion",
    "background",
    "subshell",
    "shell-operators",
    "program-path",
    "allowlist",
    "argument",
    "env-prefix",
    # A `%pip`, `!pip` or `/command pip` line while the policy has installing off.
    "packages",
    # A pip line asking for what a session's installs may not do (`--target`, `-e`, ...).
    "package-option",
]


class CommandDenied(Exception):
    """The line breaks a rule; ``rule`` is its stable name, the message explains it."""

    def __init__(self, rule: DeniedRule, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class Word:
    text: str
    glob: bool = False  # unquoted glob characters: expand against the workspace


@dataclass(frozen=True)
class Token:
    text: str
    operator: bool


@dataclass
class SimpleCommand:
    argv: list[Word] = field(default_factory=list)
    stdin: str | None = None
    stdout: str | None = None
    stdout_append: bool = False
    stderr: str | None = None
    stderr_append: bool = False
    stderr_to_stdout: bool = False

    @property
    def program(self) -> str:
        return self.argv[0].text


@dataclass
class Pipeline:
    commands: list[SimpleCommand]
    joiner: str | None = None  # how this pipeline relates to the previous one


def tokenize(line: str) -> list[Token | Word]:
    tokens: list[Token | Word] = []
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch == "\n":
            tokens.append(Token(";", True))
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        operator = next((op for op in _OPERATORS if line.startswith(op, i)), None)
        if operator is not None:
            tokens.append(Token(operator, True))
            i += len(operator)
            continue
        text, glob, i = _read_word(line, i)
        tokens.append(Word(text, glob))
    return tokens


def _read_word(line: str, i: int) -> tuple[str, bool, int]:
    parts: list[str] = []
    glob = False
    n = len(line)
    while i < n:
        ch = line[i]
        if ch.isspace() or any(line.startswith(op, i) for op in _OPERATORS):
            # "2>" only starts an operator at a word boundary; inside a word it is text.
            if not (ch == "2" and parts):
                break
            parts.append(ch)
            i += 1
            continue
        if ch == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise CommandDenied("syntax", "unterminated single quote")
            parts.append(line[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise CommandDenied("syntax", "unterminated double quote")
                c = line[i]
                if c == '"':
                    i += 1
                    break
                if c in "$`":
                    raise _expansion(c)
                if c == "\\" and i + 1 < n and line[i + 1] in '"\\$`':
                    parts.append(line[i + 1])
                    i += 2
                    continue
                parts.append(c)
                i += 1
        elif ch == "\\":
            if i + 1 >= n:
                raise CommandDenied("syntax", "a backslash ends the line")
            parts.append(line[i + 1])
            i += 2
        elif ch in "$`":
            raise _expansion(ch)
        else:
            if _GLOB_CHARS.match(ch):
                glob = True
            parts.append(ch)
            i += 1
    return "".join(parts), glob, i


def _expansion(ch: str) -> CommandDenied:
    what = "command substitution with backticks" if ch == "`" else "'$' expansion"
    return CommandDenied(
        "expansion",
        f"{what} is not supported: commands run without a shell; write the value literally",
    )


def parse(line: str) -> list[Pipeline]:
    if "\x00" in line:
        raise CommandDenied("syntax", "the command contains a NUL byte")
    tokens = tokenize(line)
    pipelines: list[Pipeline] = []
    current = SimpleCommand()
    pipeline = Pipeline([current])
    joiner: str | None = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if isinstance(token, Word):
            if not current.argv and _ASSIGNMENT.match(token.text):
                raise CommandDenied(
                    "env-prefix", f"environment assignments such as '{token.text}' are not allowed"
                )
            current.argv.append(token)
            continue
        op = token.text
        if op == "&":
            raise CommandDenied("background", "'&' (background jobs) is not allowed")
        if op in ("(", ")"):
            raise CommandDenied("subshell", "subshells '( ... )' are not supported")
        if op in _REDIRECTS:
            if op == "2>&1":
                current.stderr_to_stdout = True
                continue
            if index >= len(tokens) or not isinstance(tokens[index], Word):
                raise CommandDenied("syntax", f"'{op}' must be followed by a file name")
            target = tokens[index]
            assert isinstance(target, Word)
            index += 1
            _set_redirect(current, op, target.text)
            continue
        if not current.argv:
            raise CommandDenied("syntax", f"'{op}' needs a command before it")
        if op == "|":
            current = SimpleCommand()
            pipeline.commands.append(current)
            continue
        pipeline.joiner = joiner
        pipelines.append(pipeline)
        joiner = op
        current = SimpleCommand()
        pipeline = Pipeline([current])
    if current.argv:
        pipeline.joiner = joiner
        pipelines.append(pipeline)
    elif len(pipeline.commands) > 1:
        raise CommandDenied("syntax", "a pipe '|' needs a command after it")
    elif joiner in ("&&", "||"):
        raise CommandDenied("syntax", f"'{joiner}' needs a command after it")
    if not pipelines:
        raise CommandDenied("syntax", "the command is empty")
    return pipelines


def _set_redirect(command: SimpleCommand, op: str, target: str) -> None:
    if op == "<":
        command.stdin = target
    elif op in (">", ">>"):
        command.stdout, command.stdout_append = target, op == ">>"
    elif op in ("2>", "2>>"):
        command.stderr, command.stderr_append = target, op == "2>>"
    elif op == "&>":
        command.stdout, command.stderr_to_stdout = target, True


def uses_operators(plan: list[Pipeline]) -> bool:
    if len(plan) > 1 or len(plan[0].commands) > 1:
        return True
    only = plan[0].commands[0]
    return any((only.stdin, only.stdout, only.stderr, only.stderr_to_stdout))


def resolve_program(name: str, policy: Commands) -> str | None:
    for directory in policy.path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def check(plan: list[Pipeline], policy: Commands) -> None:
    """Raise ``CommandDenied`` naming the first rule the plan breaks."""
    if not policy.shell_operators and uses_operators(plan):
        raise CommandDenied(
            "shell-operators", "this policy does not allow pipes, '&&', '||', ';' or redirections"
        )
    for pipeline in plan:
        for command in pipeline.commands:
            program = command.program
            if "/" in program:
                raise CommandDenied(
                    "program-path", f"name the program ('{os.path.basename(program)}'), not a path"
                )
            if program not in policy.allow:
                raise CommandDenied("allowlist", f"'{program}' is not an allowed program")
            if resolve_program(program, policy) is None:
                raise CommandDenied("allowlist", f"'{program}' is allowed but not installed")
            rule = policy.rules.get(program)
            if rule is None:
                continue
            for word in command.argv[1:]:
                for denied in rule.deny_args:
                    if spells_option(word.text, denied):
                        raise CommandDenied(
                            "argument", f"'{program}' may not be given '{denied}' by this policy"
                        )


def spells_option(argument: str, denied: str) -> bool:
    """Whether ``argument`` is one of the ways a program would read option ``denied``.

    GNU getopt takes unambiguous abbreviations of long options (``--use-compress``
    for ``--use-compress-program``) and short options glued to others or to their
    value (``-xIprog`` holds ``-I``); find's single-dash words are matched whole.
    """
    if argument == denied or argument.startswith(denied + "="):
        return True
    if denied.startswith("--"):
        name = argument.split("=", 1)[0]
        return name.startswith("--") and len(name) > 3 and denied.startswith(name)
    if len(denied) == 2 and denied[0] == "-":
        return (
            argument.startswith("-") and not argument.startswith("--") and denied[1] in argument[1:]
        )
    return False


def parse_and_check(line: str, policy: Commands) -> list[Pipeline]:
    plan = parse(line)
    check(plan, policy)
    return plan
