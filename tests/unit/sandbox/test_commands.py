"""Command lines are parsed without a shell; every denial names its rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.commands import CommandDenied, parse, parse_and_check
from sandbox.policy import Commands

POLICY = Commands(
    allow=["ls", "cat", "grep", "wc", "echo", "find", "sort"],
    rules={"find": {"deny_args": ["-exec", "-delete"]}},  # type: ignore[dict-item]
)


def argv(line: str) -> list[list[list[str]]]:
    return [[[w.text for w in c.argv] for c in p.commands] for p in parse(line)]


def test_quotes_and_escapes_follow_shell_rules() -> None:
    assert argv("""echo 'a b' "c d" e\\ f""") == [[["echo", "a b", "c d", "e f"]]]


def test_pipes_and_joiners_build_pipelines() -> None:
    plan = parse("ls | grep x && wc -l; echo done || echo failed")
    assert [len(p.commands) for p in plan] == [2, 1, 1, 1]
    assert [p.joiner for p in plan] == [None, "&&", ";", "||"]


def test_redirections_are_recorded_not_passed_as_arguments() -> None:
    (pipeline,) = parse("sort < in.txt > out.txt 2>&1")
    command = pipeline.commands[0]
    assert [w.text for w in command.argv] == ["sort"]
    assert (command.stdin, command.stdout, command.stderr_to_stdout) == ("in.txt", "out.txt", True)


def test_quoted_dollar_in_single_quotes_is_literal() -> None:
    assert argv("grep '$HOME' f") == [[["grep", "$HOME", "f"]]]


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("ls; sh -c id", "allowlist"),
        ("ls && bash", "allowlist"),
        ("ls | xargs rm", "allowlist"),
        ("echo $(id)", "expansion"),
        ("echo `id`", "expansion"),
        ('echo "$HOME"', "expansion"),
        ("echo ${PATH}", "expansion"),
        ("ls\nsh", "allowlist"),
        ("PATH=/tmp ls", "env-prefix"),
        ("env ls", "allowlist"),
        ("ls &", "background"),
        ("sleep 100 & ls", "background"),
        ("(ls)", "subshell"),
        ("/bin/sh -c id", "program-path"),
        ("./ls", "program-path"),
        ("find . -exec rm {} ;", "argument"),
        ("find . -delete", "argument"),
        ("nohup ls", "allowlist"),
        ("ls |", "syntax"),
        ("echo 'open", "syntax"),
        ("", "syntax"),
        ("ls >", "syntax"),
    ],
)
def test_bypass_attempts_are_denied_by_the_named_rule(line: str, rule: str) -> None:
    with pytest.raises(CommandDenied) as denied:
        parse_and_check(line, POLICY)
    assert denied.value.rule == rule


def test_operators_can_be_switched_off_by_policy() -> None:
    strict = Commands(allow=["ls", "wc"], shell_operators=False)
    parse_and_check("ls -la", strict)
    with pytest.raises(CommandDenied) as denied:
        parse_and_check("ls | wc -l", strict)
    assert denied.value.rule == "shell-operators"


@given(st.text(max_size=80))
def test_parser_never_fails_with_anything_but_a_denial(line: str) -> None:
    denial: CommandDenied | None = None
    try:
        parse_and_check(line, POLICY)
    except CommandDenied as refused:
        denial = refused
    assert denial is None or (denial.rule and denial.message)


TAR = Commands(
    allow=["tar", "sort"],
    rules={  # type: ignore[dict-item]
        "tar": {"deny_args": ["--use-compress-program", "-I", "--to-command"]},
        "sort": {"deny_args": ["--compress-program"]},
    },
)


@pytest.mark.parametrize(
    "line",
    [
        "tar -I prog -xf a.tar",
        "tar -Iprog -xf a.tar",
        "tar -xIprog -f a.tar",
        "tar --use-compress=prog -xf a.tar",
        "tar --use-compress-program=prog -xf a.tar",
        "tar --to-comm=x -xf a.tar",
        "sort --compress-prog=gzip big.txt",
        "sort --compress big.txt",
    ],
)
def test_respelled_options_are_denied_like_the_option(line: str) -> None:
    with pytest.raises(CommandDenied) as denied:
        parse_and_check(line, TAR)
    assert denied.value.rule == "argument"


@pytest.mark.parametrize("line", ["tar -xf a.tar", "tar --list -f a.tar", "sort -n data.txt"])
def test_ordinary_options_still_pass(line: str) -> None:
    parse_and_check(line, TAR)
