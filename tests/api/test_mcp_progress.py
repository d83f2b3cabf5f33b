"""/mcp tells a client that asked for progress how its run goes (spec: "Streaming").

Through the official SDK's own client, as a stock MCP client hears it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, LoggingLevel, LoggingMessageNotificationParams, TextContent

from tests.api.server import Server, start_server, stop_server

# The spec's bound on the silence between two progress notifications.
PROGRESS_AT_MOST_APART_S = 2.0
TICKS = (
    "import time\nfor i in range({n}):\n    print(f'tick {{i}}', flush=True)\n    time.sleep(1)\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("mcp-progress"))
    yield running
    stop_server(running)


@dataclass
class Heard:
    """What the client heard during one call, with when (time.monotonic)."""

    progress: list[tuple[float, float, float | None, str | None]] = field(default_factory=list)
    logs: list[tuple[float, LoggingMessageNotificationParams]] = field(default_factory=list)
    result: CallToolResult | None = None
    returned_at: float = 0.0

    def reply(self) -> dict[str, Any]:
        assert self.result is not None
        assert not self.result.isError
        first = self.result.content[0]
        assert isinstance(first, TextContent)
        body: dict[str, Any] = json.loads(first.text)
        return body


def call(
    server: Server,
    tool: str,
    arguments: dict[str, Any],
    with_progress: bool = True,
    log_level: LoggingLevel | None = None,
) -> Heard:
    heard = Heard()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.progress.append((time.monotonic(), progress, total, message))

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        heard.logs.append((time.monotonic(), params))

    async def main() -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30, read=120)) as http,
            streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write, _),
            ClientSession(read, write, logging_callback=on_log) as session,
        ):
            await session.initialize()
            if log_level is not None:
                await session.set_logging_level(log_level)
            heard.result = await session.call_tool(
                tool, arguments, progress_callback=on_progress if with_progress else None
            )
            heard.returned_at = time.monotonic()

    anyio.run(main)
    return heard


def test_a_run_that_asked_for_progress_hears_it_at_most_2_s_apart(server: Server) -> None:
    heard = call(server, "run_python", {"code": TICKS.format(n=5) + "'done'", "timeout": 10})

    assert heard.reply()["status"] == "ok"
    assert heard.reply()["result"].endswith("tick 4\n'done'")
    during = [entry for entry in heard.progress if entry[0] < heard.returned_at]
    assert len(during) >= 2
    values = [progress for _, progress, _, _ in during]
    assert values == sorted(set(values))  # it grows
    assert all(total == 10 for _, _, total, _ in during)
    assert str(during[-1][3]).startswith("running")
    times = [at for at, _, _, _ in during] + [heard.returned_at]
    assert max(b - a for a, b in itertools.pairwise(times)) <= PROGRESS_AT_MOST_APART_S


def test_a_command_that_asked_for_progress_hears_it_too(server: Server) -> None:
    heard = call(server, "run_command", {"command": "sleep 3", "timeout": 10})

    assert heard.reply()["status"] == "ok"
    assert len([entry for entry in heard.progress if entry[0] < heard.returned_at]) >= 2


def test_a_call_without_a_progress_token_hears_nothing(server: Server) -> None:
    heard = call(server, "run_python", {"code": TICKS.format(n=2)}, with_progress=False)

    assert heard.reply()["result"] == "tick 0\ntick 1\n"
    assert heard.progress == []
    assert heard.logs == []


def test_the_output_arrives_as_log_messages_before_the_result(server: Server) -> None:
    code = TICKS.format(n=3) + "import sys\nprint('careful', file=sys.stderr)"
    heard = call(server, "run_python", {"code": code, "timeout": 10})

    assert all(at < heard.returned_at for at, _ in heard.logs)
    stdout = [params for _, params in heard.logs if params.logger == "stdout"]
    stderr = [params for _, params in heard.logs if params.logger == "stderr"]
    assert "".join(str(params.data) for params in stdout) == "tick 0\ntick 1\ntick 2\n"
    assert {params.level for params in stdout} == {"info"}
    assert "".join(str(params.data) for params in stderr) == "careful\n"
    assert {params.level for params in stderr} == {"warning"}
    # The first line was heard while the run still had two seconds to go.
    first_at = next(at for at, params in heard.logs if params.logger == "stdout")
    assert heard.returned_at - first_at > 1.5


def test_a_client_that_set_a_log_level_hears_only_what_reaches_it(server: Server) -> None:
    code = "import sys\nprint('plain')\nprint('careful', file=sys.stderr)"
    heard = call(server, "run_python", {"code": code}, log_level="warning")

    assert heard.reply()["result"] == "plain\n"
    assert [(params.logger, params.data) for _, params in heard.logs] == [("stderr", "careful\n")]
