"""Jupyter habits in a cell and suggestions that fit the error, through a real service.

The cells below are what models write in notebooks: `!cmd`, `%pip install`, `%time`,
`%timeit`, `%matplotlib inline`; and the errors they meet in this sandbox: no network,
a column that is not there, a program the policy does not allow.
"""

from __future__ import annotations

import re

import httpx

from tests.api.server import run_cell

# tests/policies/test.toml allows these programs and not curl, pip or python.
TEST_POLICY_ALLOWS = "ls, cat, echo, grep"


def workspace_names(client: httpx.Client, session_id: str) -> set[str]:
    listing = client.get(f"/sessions/{session_id}/files")
    assert listing.status_code == 200, listing.text
    return {entry["name"] for entry in listing.json()}


def test_a_bang_line_runs_in_the_session_and_prints_in_result(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(client, session, ["print('first')", "!echo hi", "!echo made > made.txt"])
    assert reply["status"] == "ok", reply
    assert reply["result"] == "first\nhi\n"
    assert "made.txt" in workspace_names(client, session)
    # The command ran in the session's workspace: /command sees what it wrote.
    seen = client.post("/command", json={"command": "cat made.txt", "session_id": session})
    assert seen.json()["result"] == "made\n"


def test_an_assigned_bang_line_holds_the_output_lines(client: httpx.Client, session: str) -> None:
    reply = run_cell(client, session, ["!echo one > a.txt", "files = !ls", "files"])
    assert reply["status"] == "ok", reply
    assert reply["result"] == "['a.txt']"


def test_a_bang_command_stops_at_the_timeout_and_the_namespace_stays(
    client: httpx.Client, session: str
) -> None:
    response = client.post(
        "/repl", json={"code": "x = 5\n!sleep 30", "session_id": session, "timeout": 1}
    )
    assert response.json()["status"] == "timeout", response.text
    processes = run_cell(
        client,
        session,
        [
            "import os",
            "sorted(open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc')"
            " if p.isdigit())",
        ],
    )
    assert processes["result"] == "['python']"  # the sleep is gone
    assert run_cell(client, session, "x")["result"] == "5"


def test_a_failing_command_shows_its_output_and_the_cell_goes_on(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(client, session, ["!ls no-such-file", "print('after', _exit_code)"])
    assert reply["status"] == "ok", reply
    assert reply["result"] == "after 2\n"
    assert "no-such-file" in reply["stderr"]


def test_a_refused_bang_line_names_commands_allow_and_runs_nothing(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(client, session, ["before = 1", "!touch flag && curl x", "after = 1"])
    assert reply["status"] == "denied", reply
    assert "SyntaxError" not in reply["error"]
    assert "commands.allow" in reply["error"]
    assert "'curl' is not an allowed program" in reply["error"]
    assert "commands.allow" in reply["suggestion"]
    assert TEST_POLICY_ALLOWS in reply["suggestion"]
    # Refused before anything ran: touch, although allowed, made no file.
    assert "flag" not in workspace_names(client, session)
    state = run_cell(client, session, "(before, 'after' in globals())")
    assert state["result"] == "(1, False)"


def test_pip_lines_name_packages_install_and_install_nothing(
    client: httpx.Client, session: str
) -> None:
    for line in ("%pip install codesherpa_absent_pkg", "!pip install codesherpa_absent_pkg"):
        reply = run_cell(client, session, line)
        assert reply["status"] == "denied", reply
        assert "SyntaxError" not in reply["error"]
        assert "packages.install" in reply["error"]
        assert "packages.install" in reply["suggestion"]
        assert reply["files"] == []
    missing = run_cell(client, session, "import codesherpa_absent_pkg")
    assert missing["status"] == "error"
    assert "ModuleNotFoundError" in missing["error"]
    assert workspace_names(client, session) == set()


def test_command_pip_names_packages_install_while_installs_are_off(
    client: httpx.Client, session: str
) -> None:
    for line in (
        "pip install codesherpa_absent_pkg",
        "python -m pip install codesherpa_absent_pkg",
    ):
        reply = client.post("/command", json={"command": line, "session_id": session}).json()
        assert reply["status"] == "denied", reply
        assert "packages.install" in reply["error"]
        assert "packages.install" in reply["suggestion"]
    assert workspace_names(client, session) == set()


def test_time_prints_wall_time_and_keeps_the_value(client: httpx.Client, session: str) -> None:
    reply = run_cell(client, session, "%time 1+1")
    assert reply["status"] == "ok", reply
    assert "Wall time: " in reply["result"]
    assert "CPU times: user " in reply["result"]
    assert reply["result"].endswith("\n2")


def test_timeit_prints_a_per_loop_line(client: httpx.Client, session: str) -> None:
    reply = run_cell(client, session, "%timeit sum(range(100))")
    assert reply["status"] == "ok", reply
    assert re.search(
        r"± .+ per loop \(mean ± std\. dev\. of \d+ runs?, [\d,]+ loops? each\)", reply["result"]
    )


def test_matplotlib_inline_is_harmless(client: httpx.Client, session: str) -> None:
    reply = run_cell(client, session, ["%matplotlib inline", "x = 3", "x"])
    assert reply["status"] == "ok", reply
    assert reply["result"] == "3"


def test_an_unknown_magic_is_a_usage_error_not_a_syntax_error(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(client, session, "%%capture\nprint(1)")
    assert reply["status"] == "error"
    assert reply["error"].startswith("UsageError: Cell magic `%%capture` not found.")


def test_a_traceback_after_magic_lines_points_at_the_users_line(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(client, session, ["!echo a", "%time x = 1", "1 / 0"])
    assert reply["status"] == "error"
    assert 'File "<cell-1>", line 3' in reply["error"]


def test_a_connection_attempt_is_told_the_network_is_off(
    client: httpx.Client, session: str
) -> None:
    attempts = {
        "URLError": "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1/')",
        "gaierror": "import urllib.request\nurllib.request.urlopen('http://example.invalid/')",
        "httpx.ConnectError": "import httpx\nhttpx.get('http://example.invalid/')",
        "OSError": "import socket\nsocket.create_connection(('127.0.0.1', 1))",
    }
    for error, code in attempts.items():
        reply = run_cell(client, session, code)
        assert reply["status"] == "error"
        assert error in reply["error"]
        assert "network is off" in reply["suggestion"], reply["suggestion"]
        assert "network.mode" in reply["suggestion"]


def test_a_missing_dataframe_column_suggestion_lists_the_columns(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(
        client,
        session,
        ["import pandas as pd", "df = pd.DataFrame({'a': [1], 'b': [2], 'c': [3]})", "df['nope']"],
    )
    assert reply["status"] == "error"
    assert "The DataFrame's columns are: a, b, c." in reply["suggestion"]


def test_a_subprocess_of_a_program_not_allowed_names_the_allowed_programs(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(
        client, session, ["import subprocess", "subprocess.run(['curl', '--version'])"]
    )
    # Landlock refuses to execute what commands.allow does not list.
    assert reply["status"] == "error"
    assert "PermissionError" in reply["error"]
    assert "'curl' cannot run" in reply["suggestion"]
    assert "commands.allow" in reply["suggestion"]
    assert TEST_POLICY_ALLOWS in reply["suggestion"]
