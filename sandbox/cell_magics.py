"""Jupyter habits in a cell: ``!cmd`` lines and ``%magic`` lines, rewritten as Python.

Models write notebook cells: ``!ls``, ``%pip install x``, ``%time f()``, a ``%%time``
first line.  None of these is Python, so each becomes one call of the session's
``CellMagics`` (``sandbox/magics.py``), reached through the builtin name ``HELPER``,
*on the same line*: line numbers in tracebacks still point at the user's lines, and
the cache the traceback reads them from holds the user's own text.  What each call
does, and what the policy lets it do, is decided when the line runs, as in Jupyter.

Only a line that starts a statement is a magic.  ``x != 1``, ``a % b``, a line of a
triple-quoted string or of a bracketed expression that happens to start with ``%`` or
``!`` are Python and stay as written: the scan below follows strings, brackets,
comments and backslash continuations.  A cell with no magic comes back as the very
object it was, unchanged.
"""

from __future__ import annotations

import re

# The builtin name the rewritten lines call (a builtin, not a variable: a cell's
# namespace is the user's to list, clear and save).
HELPER = "__cell_magic__"

# A line that may be a magic: only these are worth scanning a cell for.
_CANDIDATE = re.compile(
    r"^[ \t\f]*(?:[!%]|[A-Za-z_][\w.]*(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*[ \t]*=[ \t]*[!%])",
    re.MULTILINE,
)
# ``files = !ls`` and ``t = %timeit -o f()``: IPython's assignment forms.
_ASSIGNMENT = re.compile(
    r"(?P<target>[A-Za-z_][\w.]*(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*)[ \t]*=[ \t]*(?P<magic>[!%].*)",
    re.DOTALL,
)
_MAGIC_NAME = re.compile(r"%(?P<name>%?[A-Za-z_]\w*)(?P<args>.*)", re.DOTALL)
# What changes the scan's state in Python text, outside and inside a string.
_SIGNIFICANT = re.compile(r"""[#'"()\[\]{}\\]""")
_IN_STRING = {quote: re.compile(r"\\|" + re.escape(quote)) for quote in ("'", '"', "'''", '"""')}


def transform(source: str) -> str:
    """``source`` as Python: each magic line replaced by one call, on the same line."""
    if _CANDIDATE.search(source) is None:
        return source
    lines = source.split("\n")
    first = next((index for index, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].startswith("%%"):
        return _cell_magic(lines, first)
    rewritten = list(lines)
    changed = False
    for index, starts in enumerate(statement_starts(lines)):
        call = _line_call(lines[index]) if starts else None
        if call is not None:
            rewritten[index] = call
            changed = True
    return "\n".join(rewritten) if changed else source


def _cell_magic(lines: list[str], first: int) -> str:
    """The whole cell as one call: the body runs inside it (``%%time``, ``%%bash``)."""
    found = _MAGIC_NAME.match(lines[first][1:].rstrip("\r"))
    if found is None:
        return "\n".join(lines)  # "%%" alone: not a magic, and not Python either
    name = found.group("name")
    body = "\n".join(lines[first + 1 :])
    # Leading blank lines are kept, so the call's line is the magic's own.
    call = f"{HELPER}.cell({name!r}, {found.group('args').strip()!r}, {body!r})"
    return "\n" * first + call


def _line_call(line: str) -> str | None:
    """The call that replaces a magic line, or None when the line is not a magic."""
    text = line.rstrip("\r")
    ending = line[len(text) :]
    stripped = text.lstrip(" \t\f")
    indent = text[: len(text) - len(stripped)]
    assignment = _ASSIGNMENT.fullmatch(stripped)
    if assignment is not None:
        value = _magic_call(assignment.group("magic"), assigned=True)
        if value is None:
            return None
        return f"{indent}{assignment.group('target')} = {value}{ending}"
    call = _magic_call(stripped, assigned=False)
    return None if call is None else f"{indent}{call}{ending}"


def _magic_call(text: str, *, assigned: bool) -> str | None:
    if text.startswith("!!"):
        return f"{HELPER}.getoutput({text[2:].strip()!r})"
    if text.startswith("!"):
        method = "getoutput" if assigned else "system"
        return f"{HELPER}.{method}({text[1:].strip()!r})"
    found = _MAGIC_NAME.match(text)
    if found is None:
        return None  # "% 2" and the like: a syntax error, reported as Python's
    return f"{HELPER}.line({found.group('name')!r}, {found.group('args').strip()!r})"


def is_magic_line(line: str) -> bool:
    stripped = line.lstrip(" \t\f")
    if stripped.startswith(("!", "%")):
        return True
    return _ASSIGNMENT.fullmatch(stripped.rstrip("\r")) is not None


# --- Where statements start ----------------------------------------------------------


def statement_starts(lines: list[str]) -> list[bool]:
    """For each line, whether it starts a statement (not inside a string or brackets,
    not after a backslash continuation).  Magic lines are not Python: their quotes and
    brackets open nothing."""
    starts: list[bool] = []
    quote: str | None = None  # a string still open at the end of the previous line
    depth = 0
    continued = False
    for line in lines:
        at_start = quote is None and depth == 0 and not continued
        starts.append(at_start)
        if at_start and is_magic_line(line):
            continue
        quote, depth, continued = _scan(line.removesuffix("\r"), quote, depth)
    return starts


def _scan(line: str, quote: str | None, depth: int) -> tuple[str | None, int, bool]:
    """The state after one physical line: the open string, bracket depth, continuation."""
    position, end = 0, len(line)
    while position < end:
        if quote is not None:
            found = _IN_STRING[quote].search(line, position)
            if found is None:
                position = end
                break
            if found.group() == "\\":
                if found.end() == end:
                    return quote, depth, False  # an escaped newline: the string goes on
                position = found.end() + 1
                continue
            quote, position = None, found.end()
            continue
        found = _SIGNIFICANT.search(line, position)
        if found is None:
            break
        char, position = found.group(), found.end()
        if char == "#":
            break
        if char in "'\"":
            triple = char * 3
            if line.startswith(triple, found.start()):
                quote, position = triple, found.start() + 3
            else:
                quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif position == end:  # a backslash ending the line joins the next one to it
            return None, depth, True
    if quote in ("'", '"'):
        quote = None  # unterminated: a syntax error that Python reports at this line
    return quote, depth, False
