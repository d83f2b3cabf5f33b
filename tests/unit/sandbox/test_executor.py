"""Jupyter semantics: state persists, the last expression is shown, tracebacks are the user's."""

from __future__ import annotations

from sandbox.executor import PythonSession


def test_last_expression_value_is_its_repr() -> None:
    session = PythonSession()
    outcome = session.run("x = 40\nx + 2")
    assert outcome.value == "42"
    assert outcome.error is None


def test_state_persists_between_cells() -> None:
    session = PythonSession()
    session.run("import math\nvalues = [1, 2]")
    assert session.run("values.append(math.floor(3.7))\nvalues").value == "[1, 2, 3]"
    assert session.execution_count == 2


def test_statement_cell_has_no_value_and_none_is_not_shown() -> None:
    session = PythonSession()
    assert session.run("y = 1").value is None
    assert session.run("None").value is None


def test_blank_lines_inside_blocks_are_fine() -> None:
    session = PythonSession()
    outcome = session.run("def f():\n    a = 1\n\n    return a + 1\n\nf()")
    assert outcome.value == "2"


def test_traceback_starts_at_the_users_frame_and_names_the_exception_first() -> None:
    session = PythonSession()
    outcome = session.run("def boom():\n    raise ValueError('bad input')\nboom()")
    assert outcome.exc_type == "ValueError"
    assert outcome.error is not None
    assert outcome.error.splitlines()[0] == "ValueError: bad input"
    assert "executor.py" not in outcome.error
    assert "raise ValueError('bad input')" in outcome.error


def test_syntax_error_is_reported_without_machinery() -> None:
    outcome = PythonSession().run("def f(:\n  pass")
    assert outcome.exc_type == "SyntaxError"
    assert outcome.error is not None
    assert "executor.py" not in outcome.error


def test_system_exit_is_a_reply_not_the_end_of_the_worker() -> None:
    outcome = PythonSession().run("raise SystemExit(3)")
    assert outcome.exc_type == "SystemExit"


def test_broken_repr_is_the_users_error() -> None:
    outcome = PythonSession().run(
        "class A:\n    def __repr__(self):\n        raise RuntimeError('no')\nA()"
    )
    assert outcome.exc_type == "RuntimeError"


def test_a_cell_of_one_expression_runs_and_binds_underscore() -> None:
    session = PythonSession()
    assert session.run("(width := 6) * 7").value == "42"
    assert session.namespace["width"] == 6
    assert session.run("_ + 1").value == "43"


def test_an_indented_first_line_is_refused_as_python_refuses_it() -> None:
    outcome = PythonSession().run("  1 + 1")
    assert outcome.exc_type == "IndentationError"


def test_a_syntax_error_in_the_last_line_runs_nothing_of_the_cell() -> None:
    session = PythonSession()
    outcome = session.run("ran = True\n1 +")
    assert outcome.exc_type == "SyntaxError"
    assert "ran" not in session.namespace


def test_cells_do_not_inherit_the_executors_future_imports() -> None:
    # The executor module postpones its own annotations; a user's stay evaluated,
    # as in Jupyter, unless the cell itself asks otherwise.
    session = PythonSession()
    assert session.run("def f(x: int): pass\nf.__annotations__").value == "{'x': <class 'int'>}"
    postponed = session.run(
        "from __future__ import annotations\ndef g(x: int): pass\ng.__annotations__"
    )
    assert postponed.value == "{'x': 'int'}"


def test_a_cells_future_import_holds_for_the_cells_after_it() -> None:
    session = PythonSession()
    session.run("from __future__ import annotations")
    later = session.run("def g(x: int): pass\ng.__annotations__")
    assert later.value == "{'x': 'int'}"
    assert session.run("def h(y: str) -> None: pass").error is None
    assert session.run("h.__annotations__").value == "{'y': 'str', 'return': 'None'}"
