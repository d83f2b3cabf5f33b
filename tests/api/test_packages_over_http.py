"""`%pip install` from an HTTP package index, through the egress proxy, in a real service.

The index is a loopback HTTP server of the test's (a PEP 503 simple index of wheels
the test builds); the policy lets sessions reach it through the proxy (`[network]`
allowlist and allow_private), and names it as `packages.index_url`.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.api.server import TEST_POLICY, Server, audit_entries, run_cell, start_server, stop_server
from tests.package_index import module_wheel, sdist, simple_index, wheel

HOST = "127.0.0.2"  # private, so only allow_private lets the proxy reach it
MB = 1 << 20


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The index's URL; the server serves the simple index under /simple."""
    root = tmp_path_factory.mktemp("index")
    big = {f"bigpkg/part{number}.bin": bytes(12 * MB) for number in range(3)}
    dists = {
        "tinypkg": [module_wheel("tinypkg", "0.1")],
        "sourceonly": [sdist("sourceonly", "0.1")],
        "bigpkg": [wheel("bigpkg", "0.1", {**big, "bigpkg/__init__.py": ""})],
    }
    for path, data in simple_index(dists).items():
        target = root / "simple" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def policy_text(index_url: str, port: int) -> str:
    base = TEST_POLICY.read_text().split("[network]")[0]
    base = base.replace("wall_timeout_s = 3\n", "wall_timeout_s = 60\n")
    base = base.replace("max_timeout_s = 10\n", "max_timeout_s = 60\n")
    return base + (
        f'[network]\nmode = "allowlist"\nallow = ["{HOST}:{port}"]\n'
        f'allow_private = ["{HOST}/32"]\n'
        f'\n[packages]\ninstall = "index"\nindex_url = "{index_url}"\n'
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, index: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    port = int(index.split(":")[2].split("/")[0])
    policy = tmp / "policy.toml"
    policy.write_text(policy_text(index, port))
    running = start_server(
        tmp, env={"CODESHERPA_AUDIT_LOG": str(tmp / "audit.jsonl")}, policy=policy
    )
    yield running
    stop_server(running)


def test_pip_install_over_http_then_import_and_a_restart_keeps_it(
    server: Server, client: httpx.Client, session: str, index: str
) -> None:
    reply = run_cell(client, session, "%pip install tinypkg")
    assert reply["status"] == "ok", reply
    assert f"Looking in indexes: {index}" in reply["result"]
    assert "Successfully installed tinypkg-0.1" in reply["result"], reply
    # pip went through the egress proxy: the audit log has the session's connections.
    audit = server.state_dir.parent / "audit.jsonl"
    egress = [
        entry
        for entry in audit_entries(audit, lambda found: any(e["kind"] == "egress" for e in found))
        if entry["kind"] == "egress" and entry["session"] == session
    ]
    assert egress, "no connection of the session's went through the proxy"
    assert {(entry["host"], entry["verdict"]) for entry in egress} == {(HOST, "allowed")}
    assert run_cell(client, session, "import tinypkg; tinypkg.VERSION")["result"] == "'0.1'"
    assert client.post(f"/sessions/{session}/restart").status_code == 200
    kept = run_cell(client, session, "import tinypkg; tinypkg.__file__")
    assert kept["result"] == "'/mnt/data/.packages/tinypkg.py'", kept


def test_another_session_of_the_service_cannot_import_it(
    client: httpx.Client, session: str
) -> None:
    assert "Successfully installed" in run_cell(client, session, "%pip install tinypkg")["result"]
    other = client.post("/sessions").json()["session_id"]
    try:
        reply = run_cell(client, other, "import tinypkg")
        assert reply["status"] == "error"
        assert "ModuleNotFoundError" in reply["error"]
    finally:
        client.delete(f"/sessions/{other}")


def test_only_binary_refuses_a_source_only_package_with_a_clear_message(
    client: httpx.Client, session: str
) -> None:
    reply = run_cell(client, session, "%pip install sourceonly")
    assert "Successfully installed" not in reply["result"]
    assert "packages.only_binary" in reply["stderr"], reply
    assert run_cell(client, session, "import sourceonly")["status"] == "error"


def test_an_install_beyond_the_quota_leaves_nothing_half_installed(
    client: httpx.Client, session: str
) -> None:
    padded = run_cell(
        client, session, f"for i in range(3): open(f'pad{{i}}', 'wb').write(bytes({10 * MB}))"
    )
    assert padded["status"] == "ok", padded
    reply = run_cell(client, session, "%pip install bigpkg")
    assert "Successfully installed" not in reply["result"], reply
    left = run_cell(client, session, "import os; sorted(os.listdir('/mnt/data/.packages'))")
    assert left["result"] == "[]", left
