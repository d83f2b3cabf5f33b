"""`pip install` in a session, through a real service: into the session's own site
directory, from the policy's index, under its quota.

The index is a PEP 503 simple index that the test builds and uploads into the
session's workspace; the policy names it as a file URL (no network in these tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.server import TEST_POLICY, Server, run_cell, start_server, stop_server
from tests.package_index import module_wheel, sdist, simple_index, wheel

INDEX = "index"  # in the workspace, as the policy's index_url says
MB = 1 << 20


def packages_policy(tmp: Path) -> Path:
    """The test policy with installs on, from an index in the workspace, and a wall
    clock pip's start-up fits in."""
    text = TEST_POLICY.read_text()
    text = text.replace("wall_timeout_s = 3\n", "wall_timeout_s = 60\n")
    text = text.replace("max_timeout_s = 10\n", "max_timeout_s = 60\n")
    text += f'\n[packages]\ninstall = "index"\nindex_url = "file:///mnt/data/{INDEX}"\n'
    path = tmp / "packages.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("packages")
    running = start_server(tmp, policy=packages_policy(tmp))
    yield running
    stop_server(running)


def command(client: httpx.Client, session_id: str, line: str) -> dict[str, Any]:
    response = client.post("/command", json={"command": line, "session_id": session_id})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def upload_index(client: httpx.Client, session_id: str, dists: dict[str, Any]) -> None:
    for path, data in simple_index(dists).items():
        put = client.put(f"/sessions/{session_id}/files/{INDEX}/{path}", content=data)
        assert put.status_code in (200, 201), put.text


def listed(client: httpx.Client, session_id: str) -> set[str]:
    return {entry["name"] for entry in client.get(f"/sessions/{session_id}/files").json()}


def test_pip_magic_installs_into_the_session_and_the_next_cell_imports_it(
    client: httpx.Client, session: str
) -> None:
    upload_index(client, session, {"tinypkg": [module_wheel("tinypkg", "0.1")]})
    before = listed(client, session)
    reply = run_cell(client, session, "%pip install tinypkg")
    assert reply["status"] == "ok", reply
    assert "Successfully installed tinypkg-0.1" in reply["result"], reply
    assert reply["files"] == []  # installed packages are no run's files
    imported = run_cell(client, session, ["import tinypkg", "tinypkg.VERSION, tinypkg.__file__"])
    assert imported["result"] == "('0.1', '/mnt/data/.packages/tinypkg.py')", imported
    # Hidden from the listing, and nothing else left behind (no staging area).
    assert listed(client, session) == before
    leftovers = run_cell(client, session, "import os; sorted(os.listdir('/mnt/data/.packages'))")
    assert leftovers["result"] == "['__pycache__', 'tinypkg-0.1.dist-info', 'tinypkg.py']"


def test_bang_pip_and_command_pip_install_too_and_a_restart_keeps_them(
    client: httpx.Client, session: str
) -> None:
    upload_index(
        client,
        session,
        {"bangpkg": [module_wheel("bangpkg")], "commandpkg": [module_wheel("commandpkg")]},
    )
    bang = run_cell(client, session, "!pip install bangpkg")
    assert bang["status"] == "ok", bang
    assert "Successfully installed bangpkg-0.1" in bang["result"]
    via_command = command(client, session, "pip install -q commandpkg")
    assert via_command["status"] == "ok", via_command
    restarted = client.post(f"/sessions/{session}/restart")
    assert restarted.status_code == 200, restarted.text
    imported = run_cell(client, session, "import bangpkg, commandpkg; bangpkg.VERSION")
    assert imported["status"] == "ok", imported
    assert imported["result"] == "'0.1'"


def test_a_package_one_session_installed_is_not_importable_in_another(
    client: httpx.Client, session: str
) -> None:
    upload_index(client, session, {"privatepkg": [module_wheel("privatepkg")]})
    assert run_cell(client, session, "%pip install privatepkg")["status"] == "ok"
    assert run_cell(client, session, "import privatepkg")["status"] == "ok"
    other = client.post("/sessions").json()["session_id"]
    try:
        reply = run_cell(client, other, "import privatepkg")
        assert reply["status"] == "error"
        assert "ModuleNotFoundError" in reply["error"]
    finally:
        client.delete(f"/sessions/{other}")


def test_an_upgrade_replaces_the_older_version(client: httpx.Client, session: str) -> None:
    upload_index(client, session, {"twice": [module_wheel("twice", "1.0")]})
    assert run_cell(client, session, "%pip install twice")["status"] == "ok"
    upload_index(
        client, session, {"twice": [module_wheel("twice", "1.0"), module_wheel("twice", "2.0")]}
    )
    assert run_cell(client, session, "import twice; twice.VERSION")["result"] == "'1.0'"
    upgraded = run_cell(client, session, "%pip install -U twice")
    assert "Successfully installed twice-2.0" in upgraded["result"], upgraded
    # As in Jupyter, the module imported before keeps its code until a restart.
    assert "Note: twice was imported before this install" in upgraded["stderr"]
    assert run_cell(client, session, "twice.VERSION")["result"] == "'1.0'"
    assert client.post(f"/sessions/{session}/restart").status_code == 200
    assert run_cell(client, session, "import twice; twice.VERSION")["result"] == "'2.0'"
    check = run_cell(
        client,
        session,
        [
            "import importlib.metadata, os",
            "importlib.metadata.version('twice'),"
            " sorted(n for n in os.listdir('/mnt/data/.packages') if n.startswith('twice'))",
        ],
    )
    assert check["result"] == "('2.0', ['twice-2.0.dist-info', 'twice.py'])", check


@pytest.mark.parametrize(
    ("line", "option"),
    [
        ("%pip install --target /tmp/elsewhere tinypkg", "--target"),
        ("%pip install --user tinypkg", "--user"),
        ("!pip install -e .", "-e"),
        ("%pip install --extra-index-url http://127.0.0.1:9/simple tinypkg", "--extra-index-url"),
        ("%pip install --index-url http://127.0.0.1:9/simple tinypkg", "--index-url"),
        ("%pip install git+https://127.0.0.1:9/repo.git", "git+https://127.0.0.1:9/repo.git"),
        ("%pip install /etc/hostname.whl", "/etc/hostname.whl"),
        ("%pip install --no-binary :all: tinypkg", "--no-binary"),
    ],
)
def test_options_that_escape_the_design_are_refused_naming_the_option(
    client: httpx.Client, session: str, line: str, option: str
) -> None:
    reply = run_cell(client, session, [line, "ran_on = True"])
    assert reply["status"] == "denied", reply
    assert f"`{option}` is refused" in reply["error"]
    assert "packages.index_url" in reply["suggestion"]
    assert "ran_on" not in run_cell(client, session, "dir()")["result"]  # the cell stopped there
    nothing = run_cell(client, session, "import os; os.path.exists('/mnt/data/.packages')")
    assert nothing["result"] == "False"


def test_command_pip_refuses_an_option_before_anything_runs(
    client: httpx.Client, session: str
) -> None:
    reply = command(client, session, "pip install --prefix /tmp/p tinypkg")
    assert reply["status"] == "denied", reply
    assert "denied by rule 'package-option'" in reply["error"]
    assert "--prefix" in reply["error"]


def test_only_binary_refuses_a_package_that_has_only_a_source_distribution(
    client: httpx.Client, session: str
) -> None:
    upload_index(client, session, {"sourceonly": [sdist("sourceonly", "0.1")]})
    reply = run_cell(client, session, "%pip install sourceonly")
    assert reply["status"] == "ok", reply  # a failed pip line does not stop the cell
    assert "packages.only_binary" in reply["stderr"], reply
    assert run_cell(client, session, "import sourceonly")["status"] == "error"


def test_an_install_beyond_the_workspace_quota_fails_and_leaves_nothing(
    client: httpx.Client, session: str
) -> None:
    # Zeros compress to almost nothing in the wheel and take their full size installed.
    big = {f"bigpkg/part{index}.bin": bytes(12 * MB) for index in range(3)}
    big["bigpkg/__init__.py"] = "VERSION = '0.1'\n"
    upload_index(client, session, {"bigpkg": [wheel("bigpkg", "0.1", big)]})
    # 64 MiB workspace: 30 MiB of padding leaves less than the 36 MiB bigpkg takes.
    padded = run_cell(
        client, session, [f"for i in range(3): open(f'pad{{i}}', 'wb').write(bytes({10 * MB}))"]
    )
    assert padded["status"] == "ok", padded
    reply = run_cell(client, session, "%pip install bigpkg")
    assert "Successfully installed" not in reply["result"], reply
    left = run_cell(
        client,
        session,
        [
            "import os",
            "[(d, sorted(f)) for d, _, f in os.walk('/mnt/data/.packages')]",
        ],
    )
    assert left["result"] == "[('/mnt/data/.packages', [])]", left
    assert run_cell(client, session, "import bigpkg")["status"] == "error"
    # The space is free again: a file of the same size as the failed install's fits.
    refill = run_cell(client, session, f"open('refill', 'wb').write(bytes({12 * MB}))")
    assert refill["status"] == "ok", refill


def test_pip_list_and_show_see_the_sessions_packages_and_the_services(
    client: httpx.Client, session: str
) -> None:
    upload_index(client, session, {"shown": [module_wheel("shown", "0.3")]})
    assert run_cell(client, session, "%pip install -q shown")["status"] == "ok"
    shown = run_cell(client, session, "%pip show shown")
    assert "Name: shown" in shown["result"], shown
    assert "Version: 0.3" in shown["result"]
    assert "Location: /mnt/data/.packages" in shown["result"], shown
    listed_packages = run_cell(client, session, "names = !pip list --format=freeze\nnames")
    assert "shown==0.3" in listed_packages["result"], listed_packages
    assert "pandas==" in listed_packages["result"]
