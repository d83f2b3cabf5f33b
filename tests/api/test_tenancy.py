"""Shared environments: tenants, quotas, audit log and metrics, through a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.server import ADMIN, ROOT, Server, audit_entries, start_server, stop_server

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"
CAROL = "carol-token-0123456789abcdef"


@pytest.fixture(scope="module")
def tenants_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tenants")
    running = start_server(
        tmp,
        env={
            "CODESHERPA_TOKENS": f"alice:{ALICE},bob:{BOB},carol:{CAROL}",
            "CODESHERPA_AUDIT_LOG": str(tmp / "audit.jsonl"),
            "CODESHERPA_RATE_LIMIT": "40/second",
        },
    )
    yield running
    stop_server(running)


@pytest.fixture
def alice(tenants_server: Server) -> Iterator[httpx.Client]:
    with tenants_server.client(ALICE) as client:
        yield client
        for session in client.get("/sessions").json():
            client.delete(f"/sessions/{session['session_id']}")


@pytest.fixture
def bob(tenants_server: Server) -> Iterator[httpx.Client]:
    with tenants_server.client(BOB) as client:
        yield client
        for session in client.get("/sessions").json():
            client.delete(f"/sessions/{session['session_id']}")


def test_missing_or_wrong_token_is_401(tenants_server: Server) -> None:
    with tenants_server.client() as anonymous:
        assert anonymous.post("/repl", json={"code": "1"}).status_code == 401
    with tenants_server.client("wrong-token-000000000000") as stranger:
        reply = stranger.get("/sessions")
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"] == "Bearer"


def test_another_tenants_session_and_files_are_404_on_every_route(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    session_id = alice.post("/sessions").json()["session_id"]
    alice.put(f"/sessions/{session_id}/files/secret.txt", content=b"alice-secret")
    alice.post("/repl", json={"code": "secret = 'alice-var'", "session_id": session_id})
    attempts = [
        ("POST", "/repl", {"code": "secret", "session_id": session_id}),
        ("POST", "/command", {"command": "cat secret.txt", "session_id": session_id}),
        ("GET", f"/sessions/{session_id}", None),
        ("DELETE", f"/sessions/{session_id}", None),
        ("POST", f"/sessions/{session_id}/restart", None),
        ("POST", f"/sessions/{session_id}/interrupt", None),
        ("GET", f"/sessions/{session_id}/files", None),
        ("GET", f"/sessions/{session_id}/files/secret.txt", None),
        ("PUT", f"/sessions/{session_id}/files/planted.txt", None),
        ("DELETE", f"/sessions/{session_id}/files/secret.txt", None),
    ]
    for method, path, body in attempts:
        reply = bob.request(method, path, json=body) if body else bob.request(method, path)
        assert reply.status_code == 404, (method, path, reply.status_code)
        assert "alice" not in reply.text
    assert bob.get("/sessions").json() == []
    # Nothing Bob tried changed Alice's session.
    still = alice.post("/repl", json={"code": "secret", "session_id": session_id}).json()
    assert still["result"] == "'alice-var'"
    assert alice.get(f"/sessions/{session_id}/files/secret.txt").content == b"alice-secret"
    assert alice.get(f"/sessions/{session_id}/files/planted.txt").status_code == 404


def test_implicit_sessions_are_per_tenant(alice: httpx.Client, bob: httpx.Client) -> None:
    alice.post("/repl", json={"code": "who = 'alice'"})
    reply = bob.post("/repl", json={"code": "who"}).json()
    assert "NameError" in reply["error"]


def test_session_flood_from_one_tenant_ends_in_429_while_another_is_served(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    codes = [alice.post("/sessions").status_code for _ in range(8)]
    assert codes[:4] == [201] * 4
    assert set(codes[4:]) == {429}
    refused = alice.post("/sessions")
    assert int(refused.headers["retry-after"]) > 0
    assert bob.post("/repl", json={"code": "6 * 7"}).json()["result"] == "42"


def test_request_rate_per_tenant_answers_429_with_retry_after(
    tenants_server: Server, bob: httpx.Client
) -> None:
    with tenants_server.client(CAROL) as carol:
        replies = [carol.get("/sessions") for _ in range(80)]
    limited = [reply for reply in replies if reply.status_code == 429]
    assert limited, "40/second was never enforced over 80 back-to-back requests"
    assert int(limited[0].headers["retry-after"]) >= 1
    assert "rate limit" in limited[0].json()["error"]
    assert bob.get("/sessions").status_code == 200


def test_audit_log_has_one_line_per_run_and_no_secrets(
    tenants_server: Server, alice: httpx.Client
) -> None:
    code = "print('audit me')"
    alice.post("/repl", json={"code": code})
    alice.post("/command", json={"command": "sh -c id"})
    audit = tenants_server.state_dir.parent / "audit.jsonl"
    entries = audit_entries(audit, lambda found: any(e["status"] == "denied" for e in found))
    lines = audit.read_text().splitlines()
    python_runs = [e for e in entries if e["kind"] == "python" and e["tenant"] == "alice"]
    assert python_runs[-1]["status"] == "ok"
    assert len(python_runs[-1]["sha256"]) == 64
    denied = [e for e in entries if e["status"] == "denied"]
    assert denied[-1]["denied_rule"] == "allowlist"
    text = "\n".join(lines)
    assert ALICE not in text
    assert BOB not in text
    assert "audit me" not in text


def test_metrics_count_runs_denials_and_sessions(
    tenants_server: Server, alice: httpx.Client
) -> None:
    alice.post("/repl", json={"code": "1"})
    alice.post("/command", json={"command": "bash"})
    body = httpx.get(f"{tenants_server.url}/metrics", headers=ADMIN).text
    assert 'codesherpa_runs_total{kind="python",status="ok"}' in body
    assert 'codesherpa_denials_total{rule="allowlist"}' in body
    assert "codesherpa_sessions_alive" in body
    assert "codesherpa_warm_pool_size 2.0" in body
    assert "codesherpa_run_duration_seconds_bucket" in body


def _serve_refused(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `codesherpa serve` where it must refuse to start; return what it said."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", *arguments],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    return result


def test_service_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    result = _serve_refused(
        ["--host", "0.0.0.0", "--port", "1"], {"CODESHERPA_STATE_DIR": str(tmp_path)}
    )
    assert "without tokens" in result.stderr
    assert not (tmp_path / "workspaces").exists()


def test_tokens_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{ALICE}\n")
    tokens.chmod(0o644)
    result = _serve_refused(["--port", "1"], {"CODESHERPA_TOKENS_FILE": str(tokens)})
    assert "chmod 600" in result.stderr
