"""The rewrite of a cell's `!cmd` and `%magic` lines: same lines, Python out, Python untouched."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.cell_magics import HELPER, statement_starts, transform


def calls_in(code: str) -> list[str]:
    """The helper methods a rewritten cell calls, in order."""
    return [
        node.func.attr
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == HELPER
    ]


@pytest.mark.parametrize(
    ("line", "call"),
    [
        ("!echo hi", f"{HELPER}.system('echo hi')"),
        ("    !ls -la", f"    {HELPER}.system('ls -la')"),
        ("files = !ls", f"files = {HELPER}.getoutput('ls')"),
        ("a, b = !ls", f"a, b = {HELPER}.getoutput('ls')"),
        ("!!ls", f"{HELPER}.getoutput('ls')"),
        ("%pip install x", f"{HELPER}.line('pip', 'install x')"),
        ("%time 1 + 1", f"{HELPER}.line('time', '1 + 1')"),
        ("t = %timeit -o f()", f"t = {HELPER}.line('timeit', '-o f()')"),
        ("%matplotlib inline", f"{HELPER}.line('matplotlib', 'inline')"),
        ("!echo 'it''s' \"x\"", f"{HELPER}.system('echo \\'it\\'\\'s\\' \"x\"')"),
    ],
)
def test_a_magic_line_becomes_one_call_on_the_same_line(line: str, call: str) -> None:
    assert transform(line) == call


def test_magic_lines_keep_every_other_line_and_the_line_count() -> None:
    cell = "x = 1\n!echo {x}\nfor i in range(2):\n    %time i\ny = x % 2\n"
    code = transform(cell)
    assert code.splitlines()[0] == "x = 1"
    assert code.splitlines()[4] == "y = x % 2"
    assert len(code.split("\n")) == len(cell.split("\n"))
    assert calls_in(code) == ["system", "line"]


def test_a_cell_magic_wraps_the_body_and_keeps_its_line() -> None:
    code = transform("\n%%time\nx = 1\nx")
    assert code.split("\n")[0] == ""
    assert code.split("\n")[1] == f"{HELPER}.cell('time', '', 'x = 1\\nx')"


def test_a_cell_magic_after_the_first_line_is_a_line_magic_that_says_so() -> None:
    assert transform("x = 1\n%%time\nx") == f"x = 1\n{HELPER}.line('%time', '')\nx"


def test_windows_line_endings_stay() -> None:
    assert transform("!ls\r\nx = 1\r\n") == f"{HELPER}.system('ls')\r\nx = 1\r\n"


@pytest.mark.parametrize(
    "cell",
    [
        "x != 1",
        "a % b",
        "x = (a\n     % b)",
        "x = (1\n     != 2)",
        "x = a \\\n    % b",
        's = """\n!not a command\n%not a magic\n"""',
        "s = '''\n%%time\n'''",
        "s = 'a\\\n!b'",
        "d = {\n    'k':\n    1 }\n",
        "# it's a comment with a ' quote\nx = 1",
        'f"{x!r}"',
        "'%s' % x",
        "x = 5 % 3  # ! %",
        "% 2",  # not Python and not a magic: Python's own SyntaxError is reported
    ],
)
def test_python_and_text_that_only_looks_like_a_magic_stay_as_written(cell: str) -> None:
    assert transform(cell) is cell


def test_statement_starts_follow_strings_brackets_and_continuations() -> None:
    lines = ['s = """', "%x", '"""', "y = (", "!z", ")", "w = 1 \\", "%q", "!ok"]
    assert statement_starts(lines) == [True, False, False, True, False, False, True, False, True]


def test_a_quote_inside_a_magic_line_opens_no_string() -> None:
    code = transform("!echo \"unbalanced\nx = '%d' % 1\n!echo done")
    assert calls_in(code) == ["system", "system"]
    assert code.split("\n")[1] == "x = '%d' % 1"


# --- Properties --------------------------------------------------------------------

# Text inside a string literal: lines that start like magics, quotes of the other kind,
# brackets and comment signs that mean nothing there.
_STRING_TEXT = st.text(alphabet="ab %!#([{}])'\n\t=", max_size=40)
_EXPRESSIONS = st.sampled_from(
    ["x % 2", "x != 1", "'%s' % x", "f'{x!r}'", "not x", "x", "(x\n %x)", "[x\n !=\n 2]"]
)


@st.composite
def statements(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return f"y = {draw(_EXPRESSIONS)}"
    text = draw(_STRING_TEXT)
    if kind == 1:
        return 's = """' + text.replace("'", "") + '"""'
    if kind == 2:
        return "s = '''" + text.replace("'", '"') + "'''"
    if kind == 3:
        single_line = text.replace("\n", "").replace('"', "")
        return f'c = "{single_line}" \\\n    %x' if "%" not in single_line else "c = 1"
    if kind == 4:
        return "# " + text.replace("\n", " ")
    if kind == 5:
        return "if x:\n    z = (x\n         %x)\nelse:\n    z = 0"
    return "w = 1 \\\n    %x"


@settings(max_examples=300, deadline=None)
@given(st.lists(statements(), min_size=1, max_size=8))
def test_valid_python_without_magics_comes_back_unchanged(parts: list[str]) -> None:
    cell = "x = 1\n" + "\n".join(parts)
    compile(cell, "<cell-1>", "exec")  # the strategy makes valid Python only
    assert transform(cell) is cell


MAGIC_LINES = ("!echo hi", "%time x", "files = !ls", "%pip install q", "!!ls")
_MAGICS = st.sampled_from(MAGIC_LINES)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(statements(), _MAGICS), min_size=1, max_size=8))
def test_magic_lines_between_statements_become_calls_and_the_cell_compiles(
    parts: list[str],
) -> None:
    cell = "\n".join(parts)
    code = transform(cell)
    compile(code, "<cell-1>", "exec")
    assert len(code.split("\n")) == len(cell.split("\n"))
    magic_lines = sum(part in MAGIC_LINES for part in parts)
    assert len(calls_in(code)) == magic_lines
