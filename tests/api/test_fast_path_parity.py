"""The execution fast path answers exactly as the full FastAPI stack would: the same
status, headers and body for the same requests, through a real service.

A body sent chunked is always the full stack's (the fast path serves only a declared
length), so each request goes once each way, in two sessions that see the same runs.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.server import Server, start_server, stop_server

TOKEN = "tenant-token-" + secrets.token_hex(8)
# Headers that differ between any two responses, whoever made them.
VARYING_HEADERS = {"date", "server", "content-length"}
# The requests: (path, body without session_id, whether to name the session).
REQUESTS: list[tuple[str, dict[str, Any], bool]] = [
    ("/repl", {"code": "x = 6 * 7\nx"}, True),
    ("/repl", {"code": ["print('hi')", "x + 1"]}, True),
    ("/repl", {"code": "raise ValueError('nope')"}, True),
    ("/repl", {"code": "open('out.txt', 'w').write('saved')"}, True),
    ("/command", {"command": "cat out.txt"}, True),
    ("/command", {"command": "bash -c id"}, True),
    ("/command", {"command": "ls /nonexistent"}, True),
    ("/repl", {"code": "1", "session_id": "0" * 32}, False),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("parity"), env={"CODESHERPA_TOKENS": f"a:{TOKEN}"}
    )
    yield running
    stop_server(running)


def _chunked(body: bytes) -> Iterator[bytes]:
    yield body


def _comparable(response: httpx.Response, session_id: str) -> tuple[int, set[Any], Any]:
    headers = {
        (name, value) for name, value in response.headers.items() if name not in VARYING_HEADERS
    }
    body = response.json()
    if isinstance(body, dict):
        body.pop("duration_ms", None)
        if body.get("session_id") == session_id:
            body["session_id"] = "<session>"
        for entry in body.get("files") or []:
            entry["url"] = entry["url"].split("?")[0].replace(session_id, "<session>")
    return response.status_code, headers, body


def test_the_fast_path_and_the_full_stack_answer_alike(server: Server) -> None:
    with server.client(TOKEN) as client:
        fast_session = client.post("/sessions").json()["session_id"]
        full_session = client.post("/sessions").json()["session_id"]
        served_by_fast = 0
        for path, body, named in REQUESTS:
            fast_body = {**body, "session_id": fast_session} if named else body
            full_body = {**body, "session_id": full_session} if named else body
            fast = client.post(path, json=fast_body)
            full = client.post(
                path,
                content=_chunked(json.dumps(full_body).encode()),
                headers={"Content-Type": "application/json"},
            )
            assert _comparable(fast, fast_session) == _comparable(full, full_session), path
            served_by_fast += fast.status_code == 200
        assert served_by_fast >= 6  # runs, not only errors, were compared
