"""POST /repl and POST /command: the seed-compatible execution routes, over the executor.

Each answers with Server-Sent Events instead when the request accepts them
(service/streaming.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from service.deps import CONVERSATION_PARAMETER, CurrentExecutor, RunCaller
from service.executor import Executor
from service.replies import Reply
from service.run_stream import RunStream
from service.schemas import (
    CommandRequest,
    CommandResponse,
    ErrorResponse,
    ReplRequest,
    ReplResponse,
)
from service.streaming import EventStreamResponse, wants_event_stream

router = APIRouter(tags=["execution"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 410, 413, 422, 429, 503)
}


@router.post(
    "/repl",
    operation_id="runPython",
    summary="Run Python in a stateful session",
    description=(
        "Runs Python in your session's persistent namespace (Jupyter semantics: the value of "
        "the last expression is shown; display() works). Files live in /mnt/data. Figures "
        "come back in `outputs` and `files`, with links to show the user. `!cmd` runs an "
        "allowed command. Read `suggestion` if `error` is set."
    ),
    response_model=ReplResponse,
    responses=_ERRORS,
    openapi_extra={"parameters": [CONVERSATION_PARAMETER]},
)
async def repl(
    body: ReplRequest, caller: RunCaller, executor: CurrentExecutor, request: Request
) -> Response:
    if wants_event_stream(request.headers.get("accept")):
        return _streamed(request, await executor.stream_python(caller, body))
    reply = await executor.run_python(caller, body)
    return reply.response()


@router.post(
    "/command",
    operation_id="runCommand",
    summary="Run an allowed terminal command in the session",
    description=(
        "Runs a command line in the session's workspace (/mnt/data), without a shell: allowed "
        "programs, pipes, &&, || and redirections. Shares files with runPython. A refused "
        "command names the rule, and `suggestion` lists what is allowed."
    ),
    response_model=CommandResponse,
    responses=_ERRORS,
    openapi_extra={"parameters": [CONVERSATION_PARAMETER]},
)
async def command(
    body: CommandRequest, caller: RunCaller, executor: CurrentExecutor, request: Request
) -> Response:
    if wants_event_stream(request.headers.get("accept")):
        return _streamed(request, await executor.stream_command(caller, body))
    reply = await executor.run_command(caller, body)
    return reply.response()


def _streamed(request: Request, stream: RunStream) -> Response:
    heartbeat_s: float = request.app.state.settings.sse_heartbeat_s
    return EventStreamResponse(stream, heartbeat_s)


# What the execution fast path (service/execution_fast_path.py) calls in place of each
# route's endpoint, for the bodies it serves itself.
EXECUTOR_METHODS: dict[Callable[..., Any], Callable[..., Awaitable[Reply]]] = {
    repl: Executor.run_python,
    command: Executor.run_command,
}
