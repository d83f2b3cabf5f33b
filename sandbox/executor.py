"""Run a cell of Python with Jupyter semantics in a persistent namespace.

The cell is compiled as a module; when its last statement is an expression, that
value's repr is the cell's value.  A cell's ``from __future__`` import holds for the
cells after it, as in Jupyter and ``code.interact``.  Tracebacks start at the user's
first frame, so a model reading them sees its own code, not the worker's machinery.
"""

from __future__ import annotations
import __future__

import ast
import linecache
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.display import Display, DisplayLimits
from sandbox.magics import CellMagics
from sandbox.protocol import RichOutput


@dataclass
class CellOutcome:
    value: str | None = None
    error: str | None = None
    exc_type: str | None = None
    # The exception that ended the cell, for the worker to read what its text cannot say.
    exception: BaseException | None = None


class PythonSession:
    """One namespace and its execution counter."""

    def __init__(self, limits: DisplayLimits | None = None) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.execution_count = 0
        # The future features earlier cells imported; each compile passes them on.
        self.future_flags = 0
        # This run's rich outputs, in order; a streamed run also hands each to the
        # listener as it is produced.
        self.outputs: list[RichOutput] = []
        self.output_listener: Callable[[RichOutput], None] | None = None
        # Where the run's value goes among ``outputs``, when it needed no output of its
        # own (``Display.plain_result``); the reply's ``value_at``.
        self.value_at: int | None = None
        # `!cmd` and `%magic` lines (sandbox/magics.py); the worker gives it commands.
        self.magics = CellMagics()
        self.display = Display(self.emit, limits or DisplayLimits())

    def emit(self, output: RichOutput) -> None:
        """Record one of the run's outputs (``display()``, a figure, the cell's value)."""
        self.outputs.append(output)
        if self.output_listener is not None:
            self.output_listener(output)

    def run(self, source: str) -> CellOutcome:
        self.execution_count += 1
        self.outputs = []
        self.value_at = None
        self.display.begin_run(self.execution_count)
        return self._run(source)

    def _run(self, source: str) -> CellOutcome:
        filename = f"<cell-{self.execution_count}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            code = self.magics.prepare(source)  # same lines: tracebacks show the user's
            expression = _compile_expression(code, filename, self.future_flags)
            if expression is None:
                tree = ast.parse(code, filename=filename, mode="exec")
                last = tree.body[-1] if tree.body else None
                if isinstance(last, ast.Expr):
                    tree.body.pop()
                # The statements compile first: a future import among them holds for
                # the last expression too.  Nothing runs until both have compiled.
                statements = self._compile(tree, filename, "exec") if tree.body else None
                if isinstance(last, ast.Expr):
                    expression = self._compile(ast.Expression(last.value), filename, "eval")
                if statements is not None:
                    exec(statements, self.namespace)
            if expression is None:
                return CellOutcome()
            value = eval(expression, self.namespace)
        except BaseException as exc:  # noqa: BLE001 - every user failure is a reply, even SystemExit
            return CellOutcome(
                error=format_user_exception(exc), exc_type=type(exc).__name__, exception=exc
            )
        if value is None:
            return CellOutcome()
        self.namespace["_"] = value
        try:
            return CellOutcome(value=self._show_value(value))
        except BaseException as exc:  # noqa: BLE001 - a broken __repr__ is the user's error
            return CellOutcome(error=format_user_exception(exc), exc_type=type(exc).__name__)

    def _show_value(self, value: object) -> str:
        """The value's text; its ``execute_result`` is an output, or is ``value_at``."""
        if self.output_listener is None:  # a stream shows every output as it comes
            text = self.display.plain_result(value)
            if text is not None:
                self.value_at = len(self.outputs)
                return text
        return self.display.show_result(value)

    def _compile(
        self, tree: ast.Module | ast.Expression, filename: str, mode: str
    ) -> types.CodeType:
        code: types.CodeType = compile(
            tree, filename, mode, flags=self.future_flags, dont_inherit=True
        )
        self.future_flags |= code.co_flags & _FUTURE_FLAGS
        return code


# Every compiler flag a ``from __future__`` import can set (what ``codeop`` tracks).
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag


def _compile_expression(source: str, filename: str, flags: int) -> types.CodeType | None:
    """The cell's code if the whole cell is one expression, else None.

    Compiled straight from the source: going through ``ast.parse`` builds the tree as
    Python objects and ``compile`` converts it back, most of the executor's time for a
    trivial cell (figures: docs/decisions.md).  Exec mode refuses an indented first
    line that eval mode would strip, so such a cell takes the statement path and fails
    there as it always did.
    """
    if not source or source[0].isspace():
        return None
    try:
        code: types.CodeType = compile(source, filename, "eval", flags=flags, dont_inherit=True)
    except SyntaxError:
        return None  # statements (or a real syntax error, which exec mode reports)
    return code


def _first_user_frame(tb: types.TracebackType | None) -> types.TracebackType | None:
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-"):
        tb = tb.tb_next
    return tb


def format_user_exception(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    summary = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    trimmed = _first_user_frame(exc.__traceback__)
    if trimmed is None:
        return summary
    # The summary comes first: it is what a model should read before anything else.
    return summary + "\n" + "".join(traceback.format_exception(type(exc), exc, trimmed)).rstrip()
