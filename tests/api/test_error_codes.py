"""Every request error carries a stable ``code`` a client can branch on (the contract's
Conventions), beside the sentence for a person and the suggestion for a model."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.server import Server, start_server, stop_server

TOKEN = "tenant-token-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("codes"),
        env={"CODESHERPA_TOKENS": f"acme:{TOKEN}", "CODESHERPA_RATE_LIMIT": "1000/minute"},
    )
    yield running
    stop_server(running)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client(TOKEN) as http:
        yield http


def _code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "suggestion", "code"}
    assert body["error"]
    code: str = body["code"]
    return code


def test_a_missing_token_is_unauthorized(server: Server) -> None:
    refused = httpx.post(f"{server.url}/repl", json={"code": "1"})
    assert _code(refused, 401) == "unauthorized"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_and_ended_sessions(client: httpx.Client) -> None:
    missing = client.get(f"/sessions/{secrets.token_hex(16)}")
    assert _code(missing, 404) == "session_not_found"
    session_id = client.post("/sessions").json()["session_id"]
    assert client.delete(f"/sessions/{session_id}").status_code == 204
    ended = client.post("/repl", json={"code": "1", "session_id": session_id})
    assert _code(ended, 410) == "session_expired"


def test_bad_bodies(client: httpx.Client) -> None:
    assert _code(client.post("/repl", json={"cod": "1"}), 422) == "validation_error"
    huge = client.post("/repl", json={"code": "x" * (3 * 1024 * 1024)})
    assert _code(huge, 413) == "body_too_large"


def test_routes_and_files_that_do_not_exist(client: httpx.Client) -> None:
    assert _code(client.get("/no-such-route"), 404) == "not_found"
    assert _code(client.delete("/repl"), 405) == "method_not_allowed"
    session_id = client.post("/sessions").json()["session_id"]
    try:
        missing = client.get(f"/sessions/{session_id}/files/nothing.txt")
        assert _code(missing, 404) == "file_not_found"
    finally:
        client.delete(f"/sessions/{session_id}")


def test_a_busy_session(server: Server, client: httpx.Client) -> None:
    session_id = client.post("/sessions").json()["session_id"]
    sleeper = threading.Thread(
        target=lambda: client.post(
            "/repl",
            json={"code": "import time\ntime.sleep(8)", "session_id": session_id, "timeout": 10},
        )
    )
    sleeper.start()
    try:
        time.sleep(0.5)  # the long run has the session
        with server.client(TOKEN) as other:
            # The test policy's queue wait is shorter than the run.
            busy = other.post("/repl", json={"code": "1", "session_id": session_id})
        assert _code(busy, 429) == "session_busy"
        assert int(busy.headers["Retry-After"]) > 0
    finally:
        client.post(f"/sessions/{session_id}/interrupt")
        sleeper.join(30)
        client.delete(f"/sessions/{session_id}")


def test_a_restart_of_a_session_ended_meanwhile_is_expired_not_an_error(
    server: Server, client: httpx.Client
) -> None:
    session_id = client.post("/sessions").json()["session_id"]
    answers: list[httpx.Response] = []
    running = threading.Thread(
        target=lambda: client.post(
            "/repl", json={"code": "import time\ntime.sleep(1)", "session_id": session_id}
        )
    )
    running.start()
    time.sleep(0.3)
    with server.client(TOKEN) as other:
        restart = threading.Thread(
            target=lambda: answers.append(other.post(f"/sessions/{session_id}/restart"))
        )
        restart.start()  # queued behind the run
        time.sleep(0.2)
        assert client.delete(f"/sessions/{session_id}").status_code == 204
        restart.join(30)
    running.join(30)
    [answer] = answers
    assert answer.status_code in (404, 410), answer.text
    assert answer.json()["code"] in ("session_expired", "session_not_found")
    assert "/state/" not in answer.text  # no host path
