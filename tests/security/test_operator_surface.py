"""What the service tells outsiders, and the files it keeps (the service side is
attack surface too: SECURITY.md, guarantee 2): session counts, pids and paths only for
the operator's token; settings, token and log files refused unless private, or created
private; file links that point where the service really listens.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.server import ADMIN, ROOT, TEST_POLICY, Server, free_port, start_server, stop_server

pytestmark = pytest.mark.attack

TENANT_TOKEN = "tenant-token-" + secrets.token_hex(8)
CLI_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("operator")
    running = start_server(
        tmp,
        env={
            "CODESHERPA_TOKENS": f"acme:{TENANT_TOKEN}",
            "CODESHERPA_AUDIT_LOG": str(tmp / "audit.jsonl"),
        },
    )
    yield running
    stop_server(running)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Bearer {TENANT_TOKEN}"}, {"Authorization": "Bearer wrong-token"}],
    ids=["no token", "a tenant's token", "a wrong token"],
)
def test_metrics_answer_only_the_admin_token(server: Server, headers: dict[str, str]) -> None:
    refused = httpx.get(f"{server.url}/metrics", headers=headers)
    assert refused.status_code == 401
    assert "codesherpa_" not in refused.text
    served = httpx.get(f"{server.url}/metrics", headers=ADMIN)
    assert served.status_code == 200
    assert "codesherpa_sessions_alive" in served.text


def test_readyz_tells_outsiders_ready_and_nothing_more(server: Server) -> None:
    with server.client(TENANT_TOKEN) as tenant:
        assert tenant.post("/sessions").status_code == 201
        outside = tenant.get("/readyz")
    assert outside.status_code == 200
    assert outside.json() == {"ready": True}
    assert str(server.process.pid) not in outside.text
    assert "policy" not in outside.text
    detail = httpx.get(f"{server.url}/readyz", headers=ADMIN).json()
    assert detail["sessions"] >= 1
    assert detail["zygote"]["pid"] > 0
    assert detail["policy"]["path"] == str(TEST_POLICY)


def test_without_an_admin_token_there_are_no_metrics(tmp_path: Path) -> None:
    running = start_server(tmp_path, env={"CODESHERPA_ADMIN_TOKEN": None})
    try:
        assert httpx.get(f"{running.url}/metrics").status_code == 404
        assert httpx.get(f"{running.url}/readyz").json() == {"ready": True}
    finally:
        stop_server(running)


def test_the_audit_log_is_created_private(server: Server) -> None:
    with server.client(TENANT_TOKEN) as tenant:
        assert tenant.post("/repl", json={"code": "1"}).json()["status"] == "ok"
    log = server.state_dir.parent / "audit.jsonl"
    assert log.stat().st_mode & 0o777 == 0o600


def _serve(env: dict[str, str]) -> subprocess.Popen[str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CODESHERPA_POLICY": str(TEST_POLICY),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(free_port())],
        env=environment,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _refused(env: dict[str, str]) -> str:
    """Start a service that must refuse to start; its stderr."""
    process = _serve(env)
    try:
        _out, err = process.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 1, err
    assert "Traceback" not in err
    return err


def test_a_settings_file_others_can_read_is_refused(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(f'tokens = "acme:{TENANT_TOKEN}"\n')
    settings.chmod(0o644)
    err = _refused(
        {"CODESHERPA_SETTINGS_FILE": str(settings), "CODESHERPA_STATE_DIR": str(tmp_path / "s")}
    )
    assert str(settings) in err
    assert "chmod 600" in err
    # Refused before anything started: no state directory was made.
    assert not (tmp_path / "s").exists()


def test_a_link_planted_at_the_audit_log_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "not-a-log"
    target.write_text("untouched")
    target.chmod(0o644)
    planted = tmp_path / "audit.jsonl"
    planted.symlink_to(target)
    err = _refused(
        {"CODESHERPA_AUDIT_LOG": str(planted), "CODESHERPA_STATE_DIR": str(tmp_path / "s")}
    )
    assert "audit.jsonl" in err
    assert target.read_text() == "untouched"
    assert target.stat().st_mode & 0o777 == 0o644


def test_an_audit_log_others_could_read_is_made_private(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    log.chmod(0o644)
    running = start_server(tmp_path, env={"CODESHERPA_AUDIT_LOG": str(log)})
    try:
        assert log.stat().st_mode & 0o777 == 0o600
    finally:
        stop_server(running)


def test_file_links_point_where_the_service_listens(tmp_path: Path) -> None:
    running = start_server(tmp_path, env={"CODESHERPA_PUBLIC_URL": None})
    try:
        with running.client() as client:
            session_id = client.post("/sessions").json()["session_id"]
            client.put(f"/sessions/{session_id}/files/hello.txt", content=b"hello")
            listed = client.get(f"/sessions/{session_id}/files").json()
        url = listed[0]["url"]
        assert url.startswith(f"{running.url}/files/")
        assert httpx.get(url).content == b"hello"
    finally:
        stop_server(running)
