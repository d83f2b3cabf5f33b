"""Callers inside one tenant, against a real service (the threat "Inside one
tenant, callers (users, ChatGPT conversations) cannot reach each other's sessions";
docs/api.md, "Who sees a session").

One GPT Action key is one tenant for every ChatGPT user of the action: what tells them
apart is the ``openai-conversation-id`` header.  Conversation A makes a session (with
``POST /sessions``, or implicitly by running code) holding a variable and a file.
Conversation B, holding the same token, and the tenant itself (the same token and no
header) attack it through every route that names a session: each attempt must answer
exactly as an id that never existed, and must not have happened (the variable, the
file and the session are still A's, unchanged).  Signed links stay the credential of
their own: a link A was given works without any bearer.

The quota tests show that a session ended by its clock frees its slot at once, not at
the reaper's next round (every 5 s).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tests.api.server import TEST_POLICY, Server, audit_entries, start_server, stop_server

pytestmark = pytest.mark.attack

TOKEN = "shared-action-key-" + secrets.token_hex(8)
OTHER_TOKEN = "other-tenant-key-" + secrets.token_hex(8)
CONVERSATION = "openai-conversation-id"
SECRET_FILE = b"conversation A's file " + secrets.token_hex(8).encode()
SECRET_VALUE = "kept-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("callers")
    running = start_server(
        tmp,
        env={"CODESHERPA_TOKENS": f"gpt:{TOKEN}", "CODESHERPA_AUDIT_LOG": str(tmp / "audit.jsonl")},
    )
    try:
        yield running
    finally:
        stop_server(running)


def _conversation_client(server: Server, conversation: str | None) -> httpx.Client:
    client = server.client(TOKEN)
    if conversation is not None:
        client.headers[CONVERSATION] = conversation
    return client


@pytest.fixture
def conversation_a(server: Server) -> Iterator[httpx.Client]:
    with _conversation_client(server, "conv-a-" + secrets.token_hex(8)) as client:
        yield client
        _delete_listed(client)


@pytest.fixture
def conversation_b(server: Server) -> Iterator[httpx.Client]:
    with _conversation_client(server, "conv-b-" + secrets.token_hex(8)) as client:
        yield client
        _delete_listed(client)


@pytest.fixture
def tenant_itself(server: Server) -> Iterator[httpx.Client]:
    with _conversation_client(server, None) as client:
        yield client
        _delete_listed(client)


def _delete_listed(client: httpx.Client) -> None:
    for session in client.get("/sessions").json():
        client.delete(f"/sessions/{session['session_id']}")


def _session_of_a(conversation_a: httpx.Client, made: str) -> str:
    """A session of conversation A holding SECRET_VALUE in a variable and SECRET_FILE."""
    if made == "explicit":
        created = conversation_a.post("/sessions")
        assert created.status_code == 201, created.text
        session_id: str = created.json()["session_id"]
        ran = conversation_a.post(
            "/repl", json={"code": f"secret = {SECRET_VALUE!r}", "session_id": session_id}
        )
    else:
        ran = conversation_a.post("/repl", json={"code": f"secret = {SECRET_VALUE!r}"})
        session_id = ran.json()["session_id"]
    assert ran.json()["status"] == "ok", ran.text
    uploaded = conversation_a.put(f"/sessions/{session_id}/files/secret.txt", content=SECRET_FILE)
    assert uploaded.status_code == 201, uploaded.text
    return session_id


def _attempts(session_id: str) -> list[tuple[str, str, dict[str, Any] | None, bytes | None]]:
    """Every route that names a session, each trying to read, change or end it."""
    return [
        ("POST", "/repl", {"code": "secret = 'taken'", "session_id": session_id}, None),
        ("POST", "/repl", {"code": "secret", "session_id": session_id}, None),
        ("POST", "/command", {"command": "touch by-command.txt", "session_id": session_id}, None),
        ("POST", "/command", {"command": "cat secret.txt", "session_id": session_id}, None),
        ("GET", f"/sessions/{session_id}", None, None),
        ("POST", f"/sessions/{session_id}/restart", None, None),
        ("POST", f"/sessions/{session_id}/interrupt", None, None),
        ("GET", f"/sessions/{session_id}/files", None, None),
        ("GET", f"/sessions/{session_id}/files/secret.txt", None, None),
        ("PUT", f"/sessions/{session_id}/files/secret.txt", None, b"overwritten"),
        ("PUT", f"/sessions/{session_id}/files/planted.txt", None, b"planted"),
        ("DELETE", f"/sessions/{session_id}/files/secret.txt", None, None),
        ("DELETE", f"/sessions/{session_id}", None, None),
    ]


def _send(
    client: httpx.Client, method: str, path: str, body: dict[str, Any] | None, raw: bytes | None
) -> httpx.Response:
    if body is not None:
        return client.request(method, path, json=body)
    return client.request(method, path, content=raw)


def _assert_untouched(conversation_a: httpx.Client, session_id: str) -> None:
    """A's session is alive and unchanged: its variable, its file, nothing planted."""
    still = conversation_a.post("/repl", json={"code": "secret", "session_id": session_id})
    assert still.json()["result"] == repr(SECRET_VALUE), still.text
    assert still.json()["restarted"] is False
    files = conversation_a.get(f"/sessions/{session_id}/files")
    assert sorted(entry["name"] for entry in files.json()) == ["secret.txt"]
    assert conversation_a.get(f"/sessions/{session_id}/files/secret.txt").content == SECRET_FILE
    listed = [entry["session_id"] for entry in conversation_a.get("/sessions").json()]
    assert session_id in listed


@pytest.mark.parametrize("made", ["explicit", "implicit"])
@pytest.mark.parametrize("attacker", ["conversation_b", "tenant_itself"])
def test_a_conversations_session_is_a_404_for_every_other_caller_on_every_route(
    request: pytest.FixtureRequest,
    server: Server,
    conversation_a: httpx.Client,
    made: str,
    attacker: str,
) -> None:
    session_id = _session_of_a(conversation_a, made)
    other: httpx.Client = request.getfixturevalue(attacker)
    never_existed = secrets.token_urlsafe(24)
    for method, path, body, raw in _attempts(session_id):
        reply = _send(other, method, path, body, raw)
        assert reply.status_code == 404, (method, path, reply.status_code, reply.text)
        # Word for word the answer for an id that never existed: nothing says it does.
        unknown_path = path.replace(session_id, never_existed)
        unknown_body = {**body, "session_id": never_existed} if body is not None else None
        unknown = _send(other, method, unknown_path, unknown_body, raw)
        assert (reply.status_code, reply.json()) == (unknown.status_code, unknown.json())
    # A chunked body skips the execution fast path: FastAPI's route checks the same.
    for path, body in (
        ("/repl", {"code": "secret = 'taken'", "session_id": session_id}),
        ("/command", {"command": "touch by-command.txt", "session_id": session_id}),
    ):
        chunked = iter([json.dumps(body).encode()])
        reply = other.post(path, content=chunked, headers={"content-type": "application/json"})
        assert reply.status_code == 404, (path, reply.text)
    assert session_id not in [entry["session_id"] for entry in other.get("/sessions").json()]
    _assert_untouched(conversation_a, session_id)
    # No attempt ran: the session's audit lines are A's setup and A's check, both A's.
    owner_of_a = "conversation:" + conversation_a.headers[CONVERSATION]
    audit = server.state_dir.parent / "audit.jsonl"
    entries = audit_entries(
        audit, lambda found: len([e for e in found if e["session"] == session_id]) >= 2
    )
    runs = [entry for entry in entries if entry["session"] == session_id]
    assert [(entry["owner"], entry["status"]) for entry in runs] == [(owner_of_a, "ok")] * 2


def test_an_ended_session_is_a_410_for_its_caller_only(
    conversation_a: httpx.Client, conversation_b: httpx.Client, tenant_itself: httpx.Client
) -> None:
    session_id = _session_of_a(conversation_a, "explicit")
    assert conversation_a.delete(f"/sessions/{session_id}").status_code == 204
    assert conversation_a.get(f"/sessions/{session_id}").status_code == 410
    for other in (conversation_b, tenant_itself):
        assert other.get(f"/sessions/{session_id}").status_code == 404
        run = other.post("/repl", json={"code": "1", "session_id": session_id})
        assert run.status_code == 404


def test_another_caller_cannot_interrupt_a_running_cell(
    conversation_a: httpx.Client, conversation_b: httpx.Client, tenant_itself: httpx.Client
) -> None:
    session_id = _session_of_a(conversation_a, "explicit")
    replies: list[httpx.Response] = []
    code = "import time\ntime.sleep(1.5)\nfinished = True\nfinished"
    running = threading.Thread(
        target=lambda: replies.append(
            conversation_a.post("/repl", json={"code": code, "session_id": session_id})
        )
    )
    running.start()
    try:
        deadline = time.monotonic() + 10
        while not conversation_a.get(f"/sessions/{session_id}").json()["busy"]:
            assert time.monotonic() < deadline, "the cell never started"
            time.sleep(0.02)
        for other in (conversation_b, tenant_itself):
            assert other.post(f"/sessions/{session_id}/interrupt").status_code == 404
    finally:
        running.join(timeout=30)
    [reply] = replies
    assert reply.json()["status"] == "ok", reply.text
    assert reply.json()["result"] == "True"


def test_the_tenant_sees_its_own_sessions_and_no_conversations(
    conversation_a: httpx.Client, tenant_itself: httpx.Client
) -> None:
    owned = tenant_itself.post("/sessions").json()["session_id"]
    of_a = _session_of_a(conversation_a, "explicit")
    assert [entry["session_id"] for entry in tenant_itself.get("/sessions").json()] == [owned]
    assert of_a in [entry["session_id"] for entry in conversation_a.get("/sessions").json()]
    assert owned not in [entry["session_id"] for entry in conversation_a.get("/sessions").json()]
    assert conversation_a.get(f"/sessions/{owned}").status_code == 404
    assert tenant_itself.get(f"/sessions/{owned}").status_code == 200


def test_implicit_sessions_are_per_caller_whatever_the_conversation_is_called(
    server: Server, tenant_itself: httpx.Client
) -> None:
    """Conversation ids that look like the registry's own keys reach nothing of another."""
    tenant_itself.post("/repl", json={"code": "who = 'the tenant'"})
    for name in ("default", "", "conversation:default"):
        with _conversation_client(server, name) as impostor:
            reply = impostor.post("/repl", json={"code": "who"}).json()
            if name:  # an empty header is no header: the tenant itself
                assert reply["error"].startswith("NameError"), (name, reply)
                _delete_listed(impostor)
            else:
                assert reply["result"] == "'the tenant'"
    assert tenant_itself.post("/repl", json={"code": "who"}).json()["result"] == "'the tenant'"


@asynccontextmanager
async def _mcp(server: Server, token: str, headers: dict[str, str] | None = None) -> Any:
    all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with (
        httpx.AsyncClient(headers=all_headers, timeout=httpx.Timeout(30, read=60)) as http,
        streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write, mcp_id),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session, mcp_id()


def _tool_text(result: CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text


def test_an_mcp_sessions_own_session_is_not_a_conversations(
    server: Server, tenant_itself: httpx.Client
) -> None:
    """A conversation named like an MCP session's key does not get its session."""

    async def main() -> tuple[str, dict[str, Any]]:
        async with _mcp(server, TOKEN) as (session, mcp_id):
            ran = await session.call_tool("run_python", {"code": "who = 'mcp'"})
            assert not ran.isError, ran.content
            with _conversation_client(server, f"mcp:{mcp_id}") as impostor:
                reply = await anyio.to_thread.run_sync(
                    lambda: impostor.post("/repl", json={"code": "who"}).json()
                )
                await anyio.to_thread.run_sync(_delete_listed, impostor)
            return mcp_id, reply

    _, reply = anyio.run(main)
    assert reply["error"].startswith("NameError"), reply


def test_mcp_tools_answer_another_callers_session_as_missing(
    server: Server, conversation_a: httpx.Client
) -> None:
    session_id = _session_of_a(conversation_a, "explicit")
    calls: list[tuple[str, dict[str, Any]]] = [
        ("run_python", {"code": "secret = 'taken'"}),
        ("run_command", {"command": "touch by-mcp.txt"}),
        ("list_files", {}),
        ("read_file", {"path": "secret.txt"}),
        ("write_file", {"path": "secret.txt", "content": "overwritten"}),
        ("write_file", {"path": "planted.txt", "content": "planted"}),
        ("restart_session", {}),
    ]

    async def main(headers: dict[str, str] | None) -> list[CallToolResult]:
        async with _mcp(server, TOKEN, headers) as (session, _):
            return [
                await session.call_tool(name, {**arguments, "session_id": session_id})
                for name, arguments in calls
            ]

    for headers in (None, {CONVERSATION: "conv-b-" + secrets.token_hex(8)}):
        for (name, _), result in zip(calls, anyio.run(main, headers), strict=True):
            assert result.isError, (name, result.content)
            assert "no such session" in _tool_text(result), (name, _tool_text(result))
            assert SECRET_FILE.decode() not in _tool_text(result)
    _assert_untouched(conversation_a, session_id)


def test_a_signed_link_works_without_a_bearer(server: Server, conversation_a: httpx.Client) -> None:
    session_id = _session_of_a(conversation_a, "implicit")
    [entry] = conversation_a.get(f"/sessions/{session_id}/files").json()
    assert httpx.get(entry["url"], timeout=30).content == SECRET_FILE
    with server.client() as anonymous:
        assert anonymous.get(f"/sessions/{session_id}/files/secret.txt").status_code == 401


def test_an_overlong_conversation_id_is_refused_on_every_route(
    server: Server, tenant_itself: httpx.Client
) -> None:
    owned = tenant_itself.post("/sessions").json()["session_id"]
    with _conversation_client(server, "c" * 257) as overlong:
        for method, path in (("GET", "/sessions"), ("GET", f"/sessions/{owned}/files")):
            reply = overlong.request(method, path)
            assert reply.status_code == 422, reply.text
            assert CONVERSATION in reply.json()["error"]


# --- quotas -------------------------------------------------------------------------------

IDLE_TTL_S = 2.0


@pytest.fixture(scope="module")
def quick_expiry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two sessions at most, for one tenant or all together; idle ones end after 2 s."""
    tmp = tmp_path_factory.mktemp("quick-expiry")
    policy = TEST_POLICY.read_text()
    for key, value in (
        ("idle_ttl_s", IDLE_TTL_S),
        ("max_per_tenant", 2),
        ("max_total", 2),
        ("warm_pool", 1),
    ):
        policy = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", policy)
    path = tmp / "policy.toml"
    path.write_text(policy)
    running = start_server(
        tmp, env={"CODESHERPA_TOKENS": f"gpt:{TOKEN},other:{OTHER_TOKEN}"}, policy=path
    )
    try:
        yield running
    finally:
        stop_server(running)


def _wait_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.time()))


def test_a_session_ended_by_its_clock_frees_its_slot_at_once(
    quick_expiry_server: Server,
) -> None:
    with (
        quick_expiry_server.client(TOKEN) as tenant,
        quick_expiry_server.client(OTHER_TOKEN) as other_tenant,
    ):
        made = [tenant.post("/sessions") for _ in range(2)]
        assert [reply.status_code for reply in made] == [201, 201]
        assert tenant.post("/sessions").status_code == 429
        assert other_tenant.post("/sessions").status_code == 429  # the service is full
        # Just after they expired; the reaper comes by only every 5 s.
        _wait_until(max(reply.json()["expires_at"] for reply in made) + 0.05)
        assert other_tenant.post("/sessions").status_code == 201, "max_total still counts them"
        assert tenant.post("/sessions").status_code == 201, "max_per_tenant still counts them"
        for reply in made:
            assert tenant.get(f"/sessions/{reply.json()['session_id']}").status_code == 410


def test_a_deleted_session_frees_its_slot_at_once(quick_expiry_server: Server) -> None:
    with quick_expiry_server.client(TOKEN) as tenant:
        _wait_until(time.time() + IDLE_TTL_S + 0.05)  # the previous test's sessions ended
        made = [tenant.post("/sessions") for _ in range(2)]
        assert [reply.status_code for reply in made] == [201, 201]
        assert tenant.post("/sessions").status_code == 429
        assert tenant.delete(f"/sessions/{made[0].json()['session_id']}").status_code == 204
        assert tenant.post("/sessions").status_code == 201


def test_a_conversations_sessions_count_against_the_tenant(quick_expiry_server: Server) -> None:
    """Owners divide who sees a session, not the tenant's share of the service."""
    with (
        quick_expiry_server.client(TOKEN) as tenant,
        _conversation_client(quick_expiry_server, "conv-" + secrets.token_hex(8)) as conversation,
    ):
        _wait_until(time.time() + IDLE_TTL_S + 0.05)
        assert [conversation.post("/sessions").status_code for _ in range(2)] == [201, 201]
        refused = tenant.post("/sessions")
        assert refused.status_code == 429
        assert json.loads(refused.text)["error"].startswith("the service is at its session")
