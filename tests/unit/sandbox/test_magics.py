"""What magic lines do when a cell runs: commands under the policy, Jupyter's timings,
refusals that name the policy key, and tracebacks that point at the user's lines."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from sandbox.command_runner import CommandResult, CommandRunner
from sandbox.commands import parse_and_check
from sandbox.error_hints import failure_notes
from sandbox.executor import CellOutcome, PythonSession
from sandbox.magic_timing import TIMEIT_BUDGET_S, format_time
from sandbox.policy import parse_policy
from sandbox.protocol import MAX_HINT_NAME_CHARS, MAX_HINT_NAMES

POLICY = parse_policy('[commands]\nallow = ["echo", "touch", "ls", "false", "cat"]\n')


class RecordingCommands:
    """The worker's `!` runner (check, then run), remembering each line it was given."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.runner = CommandRunner(POLICY.commands, dict(os.environ))

    def __call__(self, line: str, stdout_fd: int) -> CommandResult:
        self.lines.append(line)
        return self.runner.run(parse_and_check(line, POLICY.commands), stdout_fd, 2)


@pytest.fixture
def commands() -> RecordingCommands:
    return RecordingCommands()


@pytest.fixture
def session(
    commands: RecordingCommands, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> PythonSession:
    monkeypatch.chdir(tmp_path)
    python = PythonSession()
    python.magics.run_command = commands
    return python


def ok(outcome: CellOutcome) -> CellOutcome:
    assert outcome.error is None, outcome.error
    return outcome


def test_a_bang_line_runs_the_command_with_output_in_order(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    ok(session.run("print('before')\n!echo hi\nprint('after')"))
    assert capfd.readouterr().out == "before\nhi\nafter\n"


def test_a_bang_line_takes_values_from_the_cell(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    ok(session.run("name = 'world'\n!echo {name.upper()} $name {{}}"))
    assert capfd.readouterr().out == "WORLD world {}\n"


def test_an_assigned_bang_line_holds_the_output_lines(session: PythonSession) -> None:
    ok(session.run("(Path := __import__('pathlib').Path)('a.txt').touch()\nfiles = !ls"))
    assert session.namespace["files"] == ["a.txt"]
    assert ok(session.run("!!echo x y")).value == "['x y']"


def test_a_failing_command_does_not_stop_the_cell_and_leaves_its_status(
    session: PythonSession,
) -> None:
    ok(session.run("!false\nafter = _exit_code"))
    assert session.namespace["after"] == 1


def test_a_refused_line_stops_the_cell_runs_nothing_and_names_the_key(
    session: PythonSession, commands: RecordingCommands, tmp_path: Path
) -> None:
    outcome = session.run("before = 1\n!touch flag && curl x\nafter = 1")
    assert outcome.exc_type == "CommandNotAllowed"
    assert not (tmp_path / "flag").exists()
    assert "after" not in session.namespace
    notes = failure_notes(outcome.exception)
    assert notes.denied_rule == "allowlist"
    assert notes.error is not None
    assert "policy key commands.allow" in notes.error
    assert "'curl' is not an allowed program" in notes.error
    assert 'File "<cell-1>", line 2' in notes.error
    assert "magics.py" not in notes.error  # the user's line, not the machinery


@pytest.mark.parametrize(
    "line",
    [
        "%pip install requests",
        "!pip install requests",
        "!python -m pip install x",
        "%conda install x",
    ],
)
def test_package_installation_is_refused_naming_packages_install(
    session: PythonSession, commands: RecordingCommands, line: str
) -> None:
    outcome = session.run(line)
    assert outcome.exc_type == "PackagesOff"
    assert commands.lines == []  # nothing ran, pip included
    notes = failure_notes(outcome.exception)
    assert notes.denied_rule == "packages"
    assert notes.error is not None
    assert "packages.install" in notes.error


def test_time_prints_jupyters_lines_and_keeps_the_value(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    assert ok(session.run("%time 1 + 1")).value == "2"
    printed = capfd.readouterr().out.splitlines()
    assert re.fullmatch(r"CPU times: user .+, sys: .+, total: .+", printed[0])
    assert re.fullmatch(r"Wall time: [\d.]+ (s|ms|µs|ns)", printed[1])
    ok(session.run("%time y = 3"))
    assert session.namespace["y"] == 3


def test_time_as_a_cell_magic_times_the_body_and_shows_its_value(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    assert ok(session.run("%%time\nx = 20\nx * 2")).value == "40"
    assert "Wall time:" in capfd.readouterr().out


TIMEIT_LINE = re.compile(
    r"[\d.]+ (s|ms|µs|ns) ± [\d.]+ (s|ms|µs|ns) per loop "
    r"\(mean ± std\. dev\. of (\d+) runs?, ([\d,]+) loops? each\)"
)


def test_timeit_prints_jupyters_per_loop_line(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    ok(session.run("%timeit sum(range(10))"))
    found = TIMEIT_LINE.fullmatch(capfd.readouterr().out.strip())
    assert found is not None
    ok(session.run("%timeit -n 3 -r 2 sum(range(10))"))
    found = TIMEIT_LINE.fullmatch(capfd.readouterr().out.strip())
    assert found is not None
    assert found.group(3, 4) == ("2", "3")


def test_timeit_of_a_slow_statement_stops_at_its_budget_and_says_how_many_runs(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    ok(session.run(f"import time\n%timeit time.sleep({TIMEIT_BUDGET_S / 3})"))
    found = TIMEIT_LINE.search(capfd.readouterr().out)
    assert found is not None
    assert int(found.group(3)) < 7  # IPython would have slept 7 x 10 loops


def test_timeit_as_a_cell_magic_runs_its_line_as_setup(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    ok(session.run("%%timeit -n 2 -r 1 data = list(range(5))\nsorted(data)"))
    assert "of 1 run, 2 loops each" in capfd.readouterr().out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3.81e-6, "3.81 µs"), (0.0501, "50.1 ms"), (5, "5 s"), (0, "0 ns"), (75.3, "1min 15s")],
)
def test_durations_read_as_ipython_writes_them(seconds: float, text: str) -> None:
    assert format_time(seconds) == text


def test_matplotlib_inline_and_config_do_nothing(
    session: PythonSession, capfd: pytest.CaptureFixture[str]
) -> None:
    ok(session.run("%matplotlib inline\n%config InlineBackend.figure_format = 'retina'\n1"))
    assert capfd.readouterr().out == ""


def test_an_unknown_magic_is_a_usage_error_naming_it(session: PythonSession) -> None:
    outcome = session.run("%%capture\nprint(1)")
    assert outcome.exc_type == "UsageError"
    notes = failure_notes(outcome.exception)
    assert notes.denied_rule is None
    assert notes.error is not None
    assert notes.error.startswith("UsageError: Cell magic `%%capture` not found.")
    assert "%%time" in notes.error


def test_the_cheap_shell_magics_work(
    session: PythonSession, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert ok(session.run("%pwd")).value == repr(str(tmp_path))
    ok(session.run("%%writefile notes.txt\nline one"))
    assert (tmp_path / "notes.txt").read_text() == "line one\n"
    ok(session.run("%env GREETING=hi"))
    assert ok(session.run("%env GREETING")).value == "'hi'"
    ok(session.run("%ls"))
    ok(session.run("%who"))
    assert capfd.readouterr().out.splitlines()[-2:] == [
        "notes.txt",
        "Interactive namespace is empty.",
    ]
    (tmp_path / "sub").mkdir()
    ok(session.run("%cd sub"))
    assert Path.cwd() == tmp_path / "sub"
    ok(session.run("%cd"))  # back where the session started, as IPython's goes home
    assert Path.cwd() == tmp_path
    ok(session.run("kept = 1\n%reset -f"))
    assert "kept" not in session.namespace


@pytest.mark.parametrize(
    ("cell", "line"),
    [
        ("!echo a\nx = 1\n1 / 0", 3),
        ("x = 1\n%time 1 / 0", 2),
        ("\n%%time\nx = 1\n1 / 0", 4),
    ],
)
def test_tracebacks_point_at_the_users_line(session: PythonSession, cell: str, line: int) -> None:
    outcome = session.run(cell)
    assert outcome.exc_type == "ZeroDivisionError"
    assert outcome.error is not None
    assert f'File "<cell-1>", line {line}' in outcome.error
    assert "1 / 0" in outcome.error


def test_a_key_error_on_a_dataframe_carries_its_columns_bounded(session: PythonSession) -> None:
    session.run("import pandas as pd")
    outcome = session.run("df = pd.DataFrame({'a': [1], 'b': [2]})\ndf['nope']")
    hint = failure_notes(outcome.exception).hint
    assert hint is not None
    assert (hint.kind, hint.names, hint.total) == ("dataframe-columns", ["a", "b"], 2)
    outcome = session.run(
        "wide = pd.DataFrame({('c' * 500) + str(i): [i] for i in range(300)})\nwide.loc[0, 'x']"
    )
    hint = failure_notes(outcome.exception).hint
    assert hint is not None
    assert hint.total == 300
    assert len(hint.names) == MAX_HINT_NAMES
    assert all(len(name) <= MAX_HINT_NAME_CHARS for name in hint.names)


def test_a_key_error_of_a_dict_carries_nothing(session: PythonSession) -> None:
    assert failure_notes(session.run("{}['x']").exception).hint is None


def test_a_program_a_subprocess_cannot_execute_is_named(session: PythonSession) -> None:
    outcome = session.run("import subprocess\nsubprocess.run(['no-such-program-here'])")
    hint = failure_notes(outcome.exception).hint
    assert hint is not None
    assert (hint.kind, hint.names) == ("program-refused", ["no-such-program-here"])


def test_a_missing_file_is_not_a_refused_program(session: PythonSession) -> None:
    assert failure_notes(session.run("open('missing.csv')").exception).hint is None


def test_a_connection_without_a_network_is_a_network_failure(session: PythonSession) -> None:
    # What the sandbox's urlopen meets: seccomp refuses the inet socket, urllib wraps it.
    cell = (
        "import errno, urllib.error\n"
        "try:\n"
        "    raise OSError(errno.EAFNOSUPPORT, 'Address family not supported by protocol')\n"
        "except OSError as err:\n"
        "    raise urllib.error.URLError(err)"
    )
    hint = failure_notes(session.run(cell).exception).hint
    assert hint is not None
    assert hint.kind == "network"
    gaierror = session.run(f"raise __import__('socket').gaierror({socket.EAI_AGAIN}, 'lookup')")
    assert failure_notes(gaierror.exception).hint is not None


def test_a_users_exception_named_like_a_refusal_is_not_one(session: PythonSession) -> None:
    outcome = session.run(
        "from sandbox.magics import CommandNotAllowed\n"
        "class Mine(CommandNotAllowed): pass\n"
        "raise Mine('allowlist', 'x')"
    )
    assert failure_notes(outcome.exception).denied_rule is None
    forged = session.run(
        "from sandbox.magics import PackagesOff\nraise PackagesOff('no-such-rule', 'x')"
    )
    assert failure_notes(forged.exception).denied_rule is None
