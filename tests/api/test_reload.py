"""Policy reload: a valid change reaches the next new session and not a running one."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.api.server import ADMIN_TOKEN, TEST_POLICY, Server, start_server, stop_server

ADMIN = ADMIN_TOKEN
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(TEST_POLICY.read_text())
    return path


@pytest.fixture
def server(tmp_path: Path, policy_file: Path) -> Iterator[Server]:
    running = start_server(tmp_path, env={"CODESHERPA_ADMIN_TOKEN": ADMIN}, policy=policy_file)
    yield running
    stop_server(running)


def _policy_hash(client: httpx.Client) -> str:
    return str(client.get("/readyz", headers=ADMIN_HEADERS).json()["policy"]["hash"])


def _wait_for_hash_change(client: httpx.Client, old: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = _policy_hash(client)
        if current != old:
            return current
        time.sleep(0.2)
    return old


def test_sighup_with_a_valid_change_reaches_new_sessions_only(
    server: Server, policy_file: Path
) -> None:
    with server.client() as client:
        before = _policy_hash(client)
        running = client.post("/sessions").json()["session_id"]
        client.post("/repl", json={"code": "kept = 1", "session_id": running})
        policy_file.write_text(
            policy_file.read_text().replace("wall_timeout_s = 3", "wall_timeout_s = 4")
        )
        os.kill(server.process.pid, signal.SIGHUP)
        after = _wait_for_hash_change(client, before)
        assert after != before
        fresh = client.post("/sessions").json()
        assert fresh["policy"] == after
        fresh_info = client.get(f"/sessions/{fresh['session_id']}").json()
        assert fresh_info["limits"]["wall_timeout_s"] == 4
        old_info = client.get(f"/sessions/{running}").json()
        assert old_info["policy"] == before
        assert old_info["limits"]["wall_timeout_s"] == 3
        # The running session still works, restarts included, under its own policy.
        assert client.post(f"/sessions/{running}/restart").status_code == 200
        again = client.post("/repl", json={"code": "1 + 1", "session_id": running}).json()
        assert again["result"] == "2"


def test_a_broken_policy_on_reload_changes_nothing(server: Server, policy_file: Path) -> None:
    with server.client() as client:
        before = _policy_hash(client)
        policy_file.write_text("[limits]\nwall_timeout = 'soon'\n")
        reply = httpx.post(
            f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}
        ).json()
        assert reply["applied"] is False
        assert "wall_timeout" in reply["message"]
        assert "did you mean" in reply["message"] or "unknown key" in reply["message"]
        os.kill(server.process.pid, signal.SIGHUP)
        time.sleep(1)
        assert _policy_hash(client) == before
        assert client.post("/repl", json={"code": "'alive'"}).json()["result"] == "'alive'"


def test_admin_reload_needs_the_admin_token(server: Server, policy_file: Path) -> None:
    assert httpx.post(f"{server.url}/admin/reload").status_code == 401
    wrong = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    policy_file.write_text(
        policy_file.read_text().replace("output_chars = 5000", "output_chars = 6000")
    )
    applied = httpx.post(
        f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
    ).json()
    assert applied["applied"] is True


def test_mcp_clients_are_told_the_reloaded_policy(server: Server, policy_file: Path) -> None:
    async def instructions() -> str:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            result = await session.initialize()
            return result.instructions or ""

    assert "stops after 3 s" in anyio.run(instructions)
    policy_file.write_text(
        policy_file.read_text().replace("wall_timeout_s = 3", "wall_timeout_s = 7")
    )
    applied = httpx.post(
        f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
    ).json()
    assert applied["applied"] is True
    assert "stops after 7 s" in anyio.run(instructions)
