"""What an MCP client hears while run_python or run_command runs (spec: "Streaming").

A ``tools/call`` that carries a ``progressToken`` gets its run as a stream
(service/run_stream.py), told as it goes:

* ``notifications/progress`` when the run starts and then every ``PROGRESS_EVERY_S``
  (the spec asks for at most 2 s apart): ``progress`` is the seconds elapsed, ``total``
  the run's wall timeout while the run is within it, and ``message`` says the same.
* ``notifications/message`` (log messages) with the output as it is produced:
  logger ``stdout`` at level ``info``, logger ``stderr`` at level ``warning``; each
  ``display()`` output's ``text/plain`` on logger ``display`` at ``info``; and, if the
  client read too slowly for the run's buffer, a ``warning`` on logger ``stream``
  saying how much was left out.  A client's ``logging/setLevel`` filters them.

The tool's result is the same either way.  A call without a progress token runs as
before, with no notifications.
"""

from __future__ import annotations

import time
from typing import Any
from weakref import WeakKeyDictionary

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.session import ServerSession
from mcp.types import LoggingLevel

from sandbox.run import OutputDisplay, OutputText
from service.callers import Caller
from service.executor import Executor
from service.replies import Reply
from service.run_stream import Idle, RunOutput, RunStream
from service.schemas import CommandRequest, ReplRequest

PROGRESS_EVERY_S = 1.0
_LEVELS: tuple[LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
# The least severe level each MCP session asked for (logging/setLevel); unset: all.
_least_level: WeakKeyDictionary[ServerSession, int] = WeakKeyDictionary()


def requested(ctx: Context[ServerSession, Any, Any]) -> bool:
    """Whether the call asked for progress (it carries a progress token)."""
    meta = ctx.request_context.meta
    return meta is not None and meta.progressToken is not None


def accept_log_levels(server: FastMCP[Any]) -> None:
    """Serve ``logging/setLevel``: the SDK then declares the logging capability."""
    low_level = server._mcp_server  # FastMCP has no decorator of its own for it

    @low_level.set_logging_level()  # type: ignore[no-untyped-call, untyped-decorator]
    async def set_level(level: LoggingLevel) -> None:
        _least_level[low_level.request_context.session] = _LEVELS.index(level)


async def execute(
    ctx: Context[ServerSession, Any, Any],
    executor: Executor,
    caller: Caller,
    body: ReplRequest | CommandRequest,
) -> Reply:
    """The run's reply; a call that asked for progress hears of the run as it goes."""
    if not requested(ctx):
        if isinstance(body, ReplRequest):
            return await executor.run_python(caller, body)
        return await executor.run_command(caller, body)
    if isinstance(body, ReplRequest):
        stream = await executor.stream_python(caller, body)
    else:
        stream = await executor.stream_command(caller, body)
    return await told_as_it_runs(ctx, stream)


async def told_as_it_runs(ctx: Context[ServerSession, Any, Any], stream: RunStream) -> Reply:
    """The run's reply, once the client has been told of its progress and output."""
    started = time.monotonic()
    reported = started
    try:
        await _progress(ctx, 0.0, stream.timeout)
        async for item in stream.items(PROGRESS_EVERY_S):
            if isinstance(item, Reply):
                return item
            if not isinstance(item, Idle):
                await _log(ctx, item)
            now = time.monotonic()
            if now - reported >= PROGRESS_EVERY_S:
                reported = now
                await _progress(ctx, now - started, stream.timeout)
    finally:
        stream.close()
    raise AssertionError("a run's stream ends with its reply")


async def _progress(
    ctx: Context[ServerSession, Any, Any], elapsed: float, timeout: float | None
) -> None:
    # Progress must grow: past the wall time (interrupt, grace) it goes on without a total.
    within = timeout is not None and elapsed <= timeout
    message = f"running, {elapsed:.0f} s" if within or timeout is None else "stopping"
    await ctx.report_progress(round(elapsed, 1), timeout if within else None, message)


async def _log(ctx: Context[ServerSession, Any, Any], output: RunOutput) -> None:
    level: LoggingLevel
    logger: str
    if isinstance(output, OutputText):
        level = "info" if output.name == "stdout" else "warning"
        logger, data = output.name, output.text
    elif isinstance(output, OutputDisplay):
        level, logger, data = "info", "display", output.output.data.get("text/plain", "")
    else:
        level, logger = "warning", "stream"
        data = (
            f"{output.characters} characters of output were left out of these messages "
            "(read too slowly); the result holds the reply"
        )
    session = ctx.request_context.session
    if _LEVELS.index(level) < _least_level.get(session, 0):
        return
    await session.send_log_message(level, data, logger, related_request_id=ctx.request_id)
