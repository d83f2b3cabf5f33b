"""POST /repl and POST /command on a short path: a valid request skips FastAPI's machinery.

FastAPI and Starlette are a large share of a trivial /repl's CPU (docs/decisions.md):
the middleware stack, matching the path against every route, resolving the dependency,
reading the body through a ``Request``, decoding the JSON and then validating it, and a
``Response`` object for the reply.  This app stands in front of the whole FastAPI app
and serves a POST to either route itself when the body is JSON its model accepts, with
the routes' own dependency (``run_caller``) and the executor methods the routes adapt
(``EXECUTOR_METHODS``), so the reply is the same bytes (tests/api/test_fast_path_parity.py).

Anything else goes to FastAPI, with the body replayed when it was read: another method
or path, a body not declared JSON, no Content-Length or one above the body cap (so the
cap's middleware refuses it), a body the model refuses (so every error keeps the format
FastAPI's handlers give it).  The OpenAPI document still comes from the FastAPI routes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, get_type_hints

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.body_limit import BodySizeLimit
from service.callers import Caller
from service.deps import run_caller
from service.errors import ServiceError
from service.executor import Executor
from service.http_errors import internal_error_response, service_error_response
from service.replies import Reply
from service.routes import execution
from service.routes.execution import EXECUTOR_METHODS

log = logging.getLogger("codesherpa")

RouteFunction = Callable[[Executor, Caller, Any], Awaitable[Reply]]


@dataclass(frozen=True)
class _Route:
    model: type[BaseModel]
    run: RouteFunction


class _RouteTable(Protocol):
    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath: ...


def fast_routes(router: _RouteTable) -> dict[str, _Route]:
    """The POST routes this path serves, read from the router's own table.

    Each is the route whose endpoint names the executor method it adapts
    (``EXECUTOR_METHODS``), found by its name wherever the router mounted it; its body
    model is the endpoint's own.  A route moved or given another model is followed,
    never shadowed by a stale copy.
    """
    return {
        str(router.url_path_for(endpoint.__name__)): _Route(get_type_hints(endpoint)["body"], run)
        for endpoint, run in EXECUTOR_METHODS.items()
    }


def check_skipped_middleware(app: FastAPI) -> None:
    """Refuse to start if the fast path would skip middleware it does not do itself.

    It stands in front of the whole app, so every middleware is skipped for the runs it
    serves; it re-implements only the body cap (it serves only a declared length within
    the cap, and leaves the rest to ``BodySizeLimit``) and the error handlers.
    """
    skipped: list[object] = [middleware.cls for middleware in app.user_middleware]
    if skipped != [BodySizeLimit]:
        names = ", ".join(getattr(cls, "__name__", str(cls)) for cls in skipped)
        raise RuntimeError(
            f"the execution fast path would skip middleware it does not re-implement: {names}"
        )


def _servable(scope: Scope, max_body_bytes: int) -> bool:
    """Whether the headers declare a JSON body of a known length within the cap.

    A Transfer-Encoding overrides the Content-Length (h11 reads the body chunked), so a
    request naming one is the full stack's, whose body cap counts what arrives.  So is
    one that accepts an event stream: the routes stream, this path only replies.  And
    one with two Content-Types: Starlette reads the first, and only its reading counts.
    """
    json_declared: bool | None = None
    length: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if json_declared is not None:
                return False
            json_declared = value.split(b";", 1)[0].strip().lower() == b"application/json"
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            return False
        elif name == b"accept" and b"text/event-stream" in value.lower():
            return False  # a stream is the route's (service/streaming.py)
    return bool(
        json_declared and length is not None and length.isdigit() and int(length) <= max_body_bytes
    )


async def _read_body(receive: Receive, max_bytes: int) -> tuple[bytes, bool] | None:
    """The body and whether it is whole, or None if the client went away first.

    Reading stops once more than ``max_bytes`` arrived, whatever the headers said.
    """
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if not more or size > max_bytes:
            return b"".join(chunks), not more


def _replay(body: bytes, receive: Receive, more_body: bool = False) -> Receive:
    """``receive`` with what was read of the body put back in front."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # the rest of the body, then a disconnect when it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": more_body}

    return replayed


class ExecutionFastPath:
    """The ASGI app uvicorn calls: valid runs here, everything else to ``full_stack``.

    ``app`` is the FastAPI app whose state the routes read (``Request.app``).
    """

    def __init__(
        self,
        app: ASGIApp,
        full_stack: ASGIApp,
        max_body_bytes: int,
        routes: _RouteTable = execution.router,
    ) -> None:
        self.app = app
        self.full_stack = full_stack
        self.max_body_bytes = max_body_bytes
        self.routes = fast_routes(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(scope["path"])
        if route is None or not _servable(scope, self.max_body_bytes):
            await self.full_stack(scope, receive, send)
            return
        read = await _read_body(receive, self.max_body_bytes)
        if read is None:
            return
        body, whole = read
        if not whole:  # more than the cap: the full stack's body cap refuses it
            await self.full_stack(scope, _replay(body, receive, more_body=True), send)
            return
        try:
            parsed = route.model.model_validate_json(body)
        except ValidationError:
            await self.full_stack(scope, _replay(body, receive), send)
            return
        scope["app"] = self.app  # as Starlette sets it, for Request.app
        request = Request(scope, receive)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            try:
                # The routes' own dependency: the same caller, so the same owner check.
                executor: Executor = self.app.state.executor  # type: ignore[attr-defined]
                reply = await route.run(executor, await run_caller(request), parsed)
            except ServiceError as error:
                await service_error_response(request, error)(scope, receive, tracking_send)
                return
            for message in reply.asgi_messages():
                await tracking_send(message)
        except Exception:
            # What FastAPI's outermost middleware would do: log it, answer 500 without
            # the traceback if nothing was sent yet.
            log.exception("unexpected error on POST %s", scope["path"])
            if not started:
                await internal_error_response()(scope, receive, send)
