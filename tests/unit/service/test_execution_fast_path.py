"""The short path for /repl and /command hands FastAPI every request it does not serve,
with the body intact."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import Message, Receive, Scope, Send

from service import execution_fast_path
from service.body_limit import BodySizeLimit
from service.execution_fast_path import ExecutionFastPath
from service.routes import execution
from service.schemas import CommandRequest, ReplRequest


class RecordingApp:
    """Stands in for FastAPI: reads the body it is given and answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"from fastapi"})


CAP = 64 * 1024


def _scope(method: str, path: str, content_type: bytes | None, length: int | None = None) -> Scope:
    headers = [] if content_type is None else [(b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": method, "path": path, "headers": headers}


class RefusingReceive:
    """A client whose body must never be read: FastAPI's stack is to read (or refuse) it."""

    async def __call__(self) -> Message:
        raise AssertionError("the fast path read a body it should have left alone")


def _serve(scope: Scope, chunks: list[bytes]) -> tuple[RecordingApp, list[Message]]:
    inner = RecordingApp()
    sent: list[Message] = []
    pending: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(ExecutionFastPath(inner, inner, CAP)(scope, receive, send))
    return inner, sent


@pytest.mark.parametrize(
    "body",
    [
        b'{"code": "1", "surprise": true}',  # a field the model refuses
        b'{"code": 5}',
        b"{not json",
        b"[" * 10_000 + b"]" * 10_000,  # nested too deep for any parser
    ],
)
@pytest.mark.parametrize("path", ["/repl", "/command"])
def test_a_body_the_model_refuses_reaches_fastapi_byte_for_byte(body: bytes, path: str) -> None:
    # Sent in two pieces, as a slow client would.
    scope = _scope("POST", path, b"application/json", len(body))
    inner, sent = _serve(scope, [body[:3], body[3:]])
    assert inner.bodies == [body]
    assert sent[0]["status"] == 299


@pytest.mark.parametrize(
    "content_type", [None, b"text/plain", b"application/vnd.api+json", b"multipart/form-data"]
)
def test_a_body_not_declared_json_is_fastapis_to_read(content_type: bytes | None) -> None:
    body = b'{"code": "1"}'
    inner, sent = _serve(_scope("POST", "/repl", content_type, len(body)), [body])
    assert inner.bodies == [body]
    assert sent[0]["status"] == 299


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/repl"), ("POST", "/sessions"), ("POST", "/repl/")]
)
def test_other_routes_and_methods_are_fastapis(method: str, path: str) -> None:
    inner, _ = _serve(_scope(method, path, b"application/json", 13), [b'{"code": "1"}'])
    assert inner.bodies == [b'{"code": "1"}']


def test_a_client_gone_before_its_body_gets_nothing_and_runs_nothing() -> None:
    inner = RecordingApp()
    sent: list[Any] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = _scope("POST", "/repl", b"application/json", 13)
    asyncio.run(ExecutionFastPath(inner, inner, CAP)(scope, receive, send))
    assert inner.bodies == []
    assert sent == []


def _assert_passed_on_unread(headers: list[tuple[bytes, bytes]]) -> None:
    """The request reaches the full stack with its body unread and no answer from here."""
    scope = {"type": "http", "method": "POST", "path": "/repl", "headers": headers}
    reached: list[Scope] = []

    async def full_stack(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    async def send(message: Message) -> None:
        raise AssertionError("the fast path answered a request it should have passed on")

    asyncio.run(ExecutionFastPath(full_stack, full_stack, CAP)(scope, RefusingReceive(), send))
    assert reached == [scope]


@pytest.mark.parametrize(
    "length",
    [None, b"", b"12x", b"-1", str(CAP + 1).encode()],
    ids=["none", "empty", "junk", "negative", "over-cap"],
)
def test_a_body_without_a_length_within_the_cap_is_left_to_the_body_cap(
    length: bytes | None,
) -> None:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", length))
    _assert_passed_on_unread(headers)


def test_a_chunked_body_is_left_to_the_body_cap_whatever_length_it_declares() -> None:
    # h11 reads a body chunked when Transfer-Encoding is named, Content-Length or not.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"13"),
        (b"transfer-encoding", b"chunked"),
    ]
    _assert_passed_on_unread(headers)


@pytest.mark.parametrize(
    "types", [(b"text/plain", b"application/json"), (b"application/json", b"text/plain")]
)
def test_a_request_with_two_content_types_is_left_to_fastapi(types: tuple[bytes, bytes]) -> None:
    # Starlette reads the first; this path must not run a body on the strength of the last.
    headers = [(b"content-type", declared) for declared in types]
    _assert_passed_on_unread([*headers, (b"content-length", b"13")])


def test_a_body_outgrowing_the_cap_stops_being_read_and_goes_to_the_body_cap_whole() -> None:
    # Whatever the headers said: the fast path holds at most one chunk beyond the cap.
    chunk = b"x" * 4096
    chunks = [b'{"code": "'] + [chunk] * (4 * CAP // len(chunk))
    pending = [
        {"type": "http.request", "body": piece, "more_body": index < len(chunks) - 1}
        for index, piece in enumerate(chunks)
    ]
    taken = 0
    taken_at_handover: list[int] = []
    received: list[bytes] = []

    async def receive() -> Message:
        nonlocal taken
        taken += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def full_stack(scope: Scope, receive: Receive, send: Send) -> None:
        taken_at_handover.append(taken)
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def send(message: Message) -> None:
        raise AssertionError("the full stack sends nothing here")

    scope = _scope("POST", "/repl", b"application/json", 13)
    asyncio.run(ExecutionFastPath(full_stack, full_stack, CAP)(scope, receive, send))
    assert taken_at_handover[0] <= CAP // len(chunk) + 2
    assert b"".join(received) == b"".join(chunks)


def test_an_unexpected_error_is_a_500_without_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_caller(request: object) -> object:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(execution_fast_path, "run_caller", broken_caller)
    inner, sent = _serve(_scope("POST", "/repl", b"application/json", 13), [b'{"code": "1"}'])
    assert inner.bodies == []
    assert sent[0]["status"] == 500
    body = b"".join(message.get("body", b"") for message in sent[1:])
    assert json.loads(body)["error"] == "internal error"
    assert b"secret internals" not in body
    assert b"Traceback" not in body


def test_the_routes_served_are_read_from_the_routers_own_table() -> None:
    table = execution_fast_path.fast_routes(execution.router)
    assert set(table) == {"/repl", "/command"}
    assert table["/repl"].model is ReplRequest
    assert table["/command"].model is CommandRequest
    # A route moved elsewhere is followed, never shadowed by a stale path.
    moved = APIRouter()
    moved.add_api_route("/run", execution.repl, methods=["POST"])
    moved.add_api_route("/cmd", execution.command, methods=["POST"])
    app = FastAPI()
    app.include_router(moved, prefix="/v2")
    assert set(execution_fast_path.fast_routes(app)) == {"/v2/run", "/v2/cmd"}


def test_an_app_with_middleware_the_fast_path_would_skip_is_refused() -> None:
    app = FastAPI()
    app.add_middleware(BodySizeLimit, max_bytes=1, upload_max_bytes=1)
    execution_fast_path.check_skipped_middleware(app)  # the one it re-implements
    app.add_middleware(GZipMiddleware)
    with pytest.raises(RuntimeError, match="GZipMiddleware"):
        execution_fast_path.check_skipped_middleware(app)
