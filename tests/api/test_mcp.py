"""/mcp through the official SDK's own client, as a stock MCP client would use it."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent, TextContent

from tests.api.server import Server, audit_entries, start_server, stop_server

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"
TOOLS = {"run_python", "run_command", "list_files", "read_file", "write_file", "restart_session"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("mcp")
    running = start_server(
        tmp,
        env={
            "CODESHERPA_TOKENS": f"alice:{ALICE},bob:{BOB}",
            "CODESHERPA_AUDIT_LOG": str(tmp / "audit.jsonl"),
        },
    )
    yield running
    stop_server(running)


@asynccontextmanager
async def _connect(server: Server, token: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=120)) as http,
        streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write, session_id),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session, session_id()


def _using(server: Server, token: str, work: Callable[[ClientSession], Awaitable[T]]) -> T:
    """Run ``work`` in one fresh MCP session (ended when it returns)."""

    async def main() -> T:
        async with _connect(server, token) as (session, _):
            return await work(session)

    return anyio.run(main)


def _reply(result: CallToolResult) -> dict[str, Any]:
    assert not result.isError, result.content
    first = result.content[0]
    assert isinstance(first, TextContent)
    body: dict[str, Any] = json.loads(first.text)
    return body


def _error_text(result: CallToolResult) -> str:
    assert result.isError
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text


def test_lists_the_tools_with_their_parameters(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> Any:
        return (await session.list_tools()).tools

    tools = {tool.name: tool for tool in _using(mcp_server, ALICE, work)}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description
        assert tool.annotations is not None
        assert tool.annotations.openWorldHint is False
    assert tools["run_python"].inputSchema["required"] == ["code"]
    assert {"session_id", "timeout"} <= set(tools["run_python"].inputSchema["properties"])
    assert tools["read_file"].annotations is not None
    assert tools["read_file"].annotations.readOnlyHint is True


def test_six_times_seven_is_42(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> CallToolResult:
        return await session.call_tool("run_python", {"code": "6*7"})

    reply = _reply(_using(mcp_server, ALICE, work))
    assert reply["result"] == "42"
    assert reply["status"] == "ok"
    assert reply["session_id"]


def test_state_persists_in_one_mcp_session_and_not_across(mcp_server: Server) -> None:
    async def first(session: ClientSession) -> tuple[dict[str, Any], dict[str, Any]]:
        await session.call_tool("run_python", {"code": "x = 20"})
        return (
            _reply(await session.call_tool("run_python", {"code": "x + 1"})),
            _reply(await session.call_tool("run_python", {"code": "6*7"})),
        )

    async def second(session: ClientSession) -> dict[str, Any]:
        return _reply(await session.call_tool("run_python", {"code": "x"}))

    kept, other = _using(mcp_server, ALICE, first)
    assert kept["result"] == "21"
    assert other["execution_count"] == 3
    fresh = _using(mcp_server, ALICE, second)
    assert fresh["status"] == "error"
    assert fresh["error"].startswith("NameError")
    assert fresh["session_id"] != kept["session_id"]


def test_a_plot_comes_back_as_image_content(mcp_server: Server) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')"

    async def work(session: ClientSession) -> CallToolResult:
        return await session.call_tool("run_python", {"code": code})

    result = _using(mcp_server, ALICE, work)
    reply = _reply(result)
    images = [item for item in result.content if isinstance(item, ImageContent)]
    assert len(images) == 1
    assert images[0].mimeType == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")
    assert reply["files"][0]["url"].startswith(f"{mcp_server.url}/files/")


def test_a_displayed_image_is_image_content_sent_once(mcp_server: Server) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "fig = plt.figure(figsize=(1.5, 1), dpi=50)\n"
        "plt.plot([1, 3, 2])\n"
        "display(fig)"
    )

    async def work(session: ClientSession) -> CallToolResult:
        return await session.call_tool("run_python", {"code": code})

    result = _using(mcp_server, ALICE, work)
    reply = _reply(result)
    [image] = [item for item in result.content if isinstance(item, ImageContent)]
    png = base64.b64decode(image.data)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    [figure] = reply["outputs"]
    assert "image/png" not in figure["data"]  # in the image block, not again in the text
    assert figure["metadata"]["filename"] in [entry["name"] for entry in reply["files"]]


def test_a_runs_images_together_stay_within_the_image_cap(mcp_server: Server) -> None:
    # Six "images" of 1.5 MB each: all are files with links, not all can be content.
    code = (
        "import os\nfor i in range(6):\n    open(f'big-{i}.png', 'wb').write(os.urandom(1_500_000))"
    )

    async def work(session: ClientSession) -> CallToolResult:
        return await session.call_tool("run_python", {"code": code})

    result = _using(mcp_server, ALICE, work)
    reply = _reply(result)
    images = [item for item in result.content if isinstance(item, ImageContent)]
    assert len(reply["files"]) == 6
    assert 0 < len(images) < 6
    assert sum(len(base64.b64decode(image.data)) for image in images) <= 4 * 1024 * 1024


def test_files_written_by_a_tool_are_seen_by_code_and_commands(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> dict[str, Any]:
        written = await session.call_tool("write_file", {"path": "in/notes.txt", "content": "hi"})
        listed = await session.call_tool("list_files", {})
        command = await session.call_tool("run_command", {"command": "cat in/notes.txt"})
        code = await session.call_tool("run_python", {"code": "open('in/notes.txt').read()"})
        await session.call_tool("run_python", {"code": "open('out.txt', 'w').write('made')"})
        read = await session.call_tool("read_file", {"path": "out.txt"})
        return {
            "written": written,
            "listed": listed,
            "command": command,
            "code": code,
            "read": read,
        }

    results = _using(mcp_server, ALICE, work)
    assert _reply(results["written"])["name"] == "in/notes.txt"
    listed = json.loads(results["listed"].content[0].text)
    assert [entry["name"] for entry in listed] == ["in/notes.txt"]
    assert _reply(results["command"])["result"] == "hi"
    assert _reply(results["code"])["result"] == "'hi'"
    assert results["read"].content[0].text == "made"


def test_a_missing_file_is_a_tool_error_that_says_what_to_do(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> CallToolResult:
        return await session.call_tool("read_file", {"path": "nope.csv"})

    assert "list_files" in _error_text(_using(mcp_server, ALICE, work))


@pytest.mark.parametrize(
    ("tool", "arguments", "code"),
    [
        ("read_file", {"path": "nope.csv"}, "file_not_found"),
        ("run_command", {"command": "x" * 100_001}, "validation_error"),
        ("write_file", {"path": "a.bin", "content": "%%%", "is_base64": True}, "validation_error"),
        ("run_python", {"code": "1", "session_id": "0" * 32}, "session_not_found"),
    ],
)
def test_a_tool_error_ends_with_the_code_http_gives_it(
    mcp_server: Server, tool: str, arguments: dict[str, Any], code: str
) -> None:
    async def work(session: ClientSession) -> CallToolResult:
        return await session.call_tool(tool, arguments)

    assert _error_text(_using(mcp_server, ALICE, work)).endswith(f"(code: {code})")


def test_a_denied_command_names_the_rule_and_what_is_allowed(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> CallToolResult:
        return await session.call_tool("run_command", {"command": "python3 -c 1"})

    reply = _reply(_using(mcp_server, ALICE, work))
    assert reply["status"] == "denied"
    assert "Allowed programs" in reply["suggestion"]


def test_restart_keeps_files_and_drops_variables(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> tuple[dict[str, Any], ...]:
        await session.call_tool("run_python", {"code": "y = 1\nopen('kept', 'w').write('k')"})
        restarted = _reply(await session.call_tool("restart_session", {}))
        kept = _reply(await session.call_tool("run_python", {"code": "open('kept').read()"}))
        lost = _reply(await session.call_tool("run_python", {"code": "y"}))
        return restarted, kept, lost

    restarted, kept, lost = _using(mcp_server, ALICE, work)
    assert restarted["execution_count"] == 0
    assert kept["result"] == "'k'"
    assert lost["error"].startswith("NameError")


def test_a_named_session_is_shared_with_http_but_not_with_other_tenants(
    mcp_server: Server,
) -> None:
    with mcp_server.client(ALICE) as alice:
        session_id = alice.post("/sessions").json()["session_id"]

        async def as_alice(session: ClientSession) -> dict[str, Any]:
            args = {"code": "z = 5", "session_id": session_id}
            return _reply(await session.call_tool("run_python", args))

        async def as_bob(session: ClientSession) -> str:
            args = {"code": "z", "session_id": session_id}
            return _error_text(await session.call_tool("run_python", args))

        assert _using(mcp_server, ALICE, as_alice)["session_id"] == session_id
        assert alice.post("/repl", json={"code": "z", "session_id": session_id}).json()[
            "result"
        ] == ("5")
        assert "no such session" in _using(mcp_server, BOB, as_bob)
        alice.delete(f"/sessions/{session_id}")


def test_ending_the_mcp_session_ends_its_codesherpa_session(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> str:
        session_id: str = _reply(await session.call_tool("run_python", {"code": "1"}))["session_id"]
        return session_id

    session_id = _using(mcp_server, ALICE, work)  # the SDK client sends DELETE on exit
    with mcp_server.client(ALICE) as alice:
        assert alice.get(f"/sessions/{session_id}").status_code == 410


_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


def test_wrong_or_missing_token_is_refused(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> None:
        raise AssertionError("initialize must not succeed")

    # The SDK client raises the HTTP error from inside its task group.
    with pytest.raises(BaseExceptionGroup, match="unhandled errors") as refused:
        _using(mcp_server, "wrong-token-0000000000000000", work)
    assert "401 Unauthorized" in repr(refused.value.exceptions)
    headers = {"Accept": "application/json, text/event-stream"}
    reply = httpx.post(f"{mcp_server.url}/mcp", json=_INITIALIZE, headers=headers)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["suggestion"]


def test_another_tenant_cannot_use_an_mcp_session_id(mcp_server: Server) -> None:
    async def main() -> int:
        async with _connect(mcp_server, ALICE) as (_, session_id):
            listing = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
            headers = {
                "Authorization": f"Bearer {BOB}",
                "Accept": "application/json, text/event-stream",
                "mcp-session-id": session_id,
                "mcp-protocol-version": "2025-06-18",
            }
            async with httpx.AsyncClient() as http:
                reply = await http.post(f"{mcp_server.url}/mcp", json=listing, headers=headers)
            return reply.status_code

    assert anyio.run(main) == 404


def _open_mcp_session(server: Server, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    return httpx.post(f"{server.url}/mcp", json=_INITIALIZE, headers=headers, timeout=30)


def _end_mcp_session(server: Server, token: str, session_id: str) -> int:
    headers = {
        "Authorization": f"Bearer {token}",
        "mcp-session-id": session_id,
        "mcp-protocol-version": "2025-06-18",
    }
    return httpx.delete(f"{server.url}/mcp", headers=headers, timeout=30).status_code


def test_one_tenant_cannot_take_every_mcp_session(mcp_server: Server) -> None:
    # The test policy allows 4 sessions per tenant, so 16 MCP sessions.
    opened: list[str] = []
    try:
        for _ in range(20):
            reply = _open_mcp_session(mcp_server, ALICE)
            if reply.status_code != 200:
                break
            opened.append(reply.headers["mcp-session-id"])
        assert reply.status_code == 429
        assert "MCP sessions open" in reply.json()["error"]
        assert 0 < len(opened) <= 16
        # The other tenant is not held up by alice's sessions.
        other = _open_mcp_session(mcp_server, BOB)
        assert other.status_code == 200
        assert _end_mcp_session(mcp_server, BOB, other.headers["mcp-session-id"]) == 200
        # Ending one of alice's sessions frees its slot.
        assert _end_mcp_session(mcp_server, ALICE, opened.pop()) == 200
        again = _open_mcp_session(mcp_server, ALICE)
        assert again.status_code == 200
        opened.append(again.headers["mcp-session-id"])
    finally:
        for session_id in opened:
            _end_mcp_session(mcp_server, ALICE, session_id)


def test_a_host_outside_the_public_url_is_refused(mcp_server: Server) -> None:
    """DNS rebinding: a page of evil.example must not drive the local server."""
    reply = httpx.post(
        f"{mcp_server.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "Authorization": f"Bearer {ALICE}",
            "Host": "evil.example",
            "Accept": "application/json, text/event-stream",
        },
    )
    assert reply.status_code == 421


def test_mcp_runs_are_audited_like_http_runs(mcp_server: Server) -> None:
    async def work(session: ClientSession) -> dict[str, Any]:
        return _reply(await session.call_tool("run_python", {"code": "'audited' * 2"}))

    session_id = _using(mcp_server, BOB, work)["session_id"]
    audit = Path(mcp_server.state_dir).parent / "audit.jsonl"
    lines = audit_entries(audit, lambda found: any(e["session"] == session_id for e in found))
    mine = [line for line in lines if line["session"] == session_id]
    assert [(line["tenant"], line["kind"], line["status"]) for line in mine] == [
        ("bob", "python", "ok")
    ]
