"""POST /repl and POST /command on a short path: a valid request skips FastAPI's machinery.

py-spy on the service under the benchmark put FastAPI and Starlette at about a fifth of
a trivial /repl's CPU: matching the path against every route, resolving the dependency,
reading the body through a ``Request``, decoding the JSON and then validating it.  This
middleware serves a POST to either route itself when the body is JSON its model accepts,
with the routes' own dependency (``run_caller``) and functions (``run_python``,
``run_command``), so the reply is the same bytes.  Anything else (another method or
content type, a body the model refuses) goes on to FastAPI with the body replayed, so
every error keeps the format FastAPI's handlers give it; the OpenAPI document still
comes from the FastAPI routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import run_caller
from service.errors import ApiError, api_error_response
from service.registry import SessionRegistry
from service.replies import Reply
from service.routes.execution import run_command, run_python
from service.schemas import CommandRequest, ReplRequest

RouteFunction = Callable[[Request, Any, str, SessionRegistry, str | None], Awaitable[Reply]]


@dataclass(frozen=True)
class _Route:
    model: type[BaseModel]
    run: RouteFunction


_ROUTES = {
    "/repl": _Route(ReplRequest, run_python),
    "/command": _Route(CommandRequest, run_command),
}


def _declares_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json"
    return False


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None if the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: a disconnect, when it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class ExecutionFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = _ROUTES.get(scope["path"])
        if route is None or not _declares_json(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return
        try:
            parsed = route.model.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replay(body, receive), send)
            return
        request = Request(scope, receive)
        try:
            caller = await run_caller(request)
            reply = await route.run(
                request, parsed, caller.tenant, caller.registry, caller.conversation
            )
            response = reply.response()
        except ApiError as error:
            response = api_error_response(request, error)
        await response(scope, receive, send)
