"""Server-Sent Events for POST /repl and POST /command (spec: "Streaming").

A request whose ``Accept`` names ``text/event-stream`` is answered, once its run has
started, with one event per output as the run produces it, then ``done``:

    event: stdout              data: {"text": "..."}      (and stderr alike)
    event: display             data: <Output>             (a rich output, as in ``outputs``)
    event: dropped             data: {"characters": N}    (this reader fell behind: N
                                                           characters of output were not
                                                           sent to it; ``done`` has the reply)
    event: done                data: <the reply>          (exactly the plain request's body)
    event: error               data: {"error", "suggestion", "code"}  (the run could not end
                                                           in a reply, e.g. its sandbox failed)

and a comment line (``: keepalive``) after every ``heartbeat_s`` without an event, so
proxies and clients keep an idle stream open.  Errors of the request itself (404, 429,
422, ...) are plain JSON responses: they are raised before the stream starts.

The response watches for the client's disconnect the whole time, whatever the ASGI
server's spec version (Starlette's ``StreamingResponse`` only does so below 2.4, and a
server that stops writing to a closed connection says nothing): a client that hangs up
abandons its run at once, as a cancelled caller does.
"""

from __future__ import annotations

import json
import logging
import re

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sandbox.run import OutputDisplay, OutputText
from service.errors import ServiceError, error_body
from service.replies import Reply
from service.run_stream import Idle, RunStream, StreamItem

log = logging.getLogger("codesherpa")

MEDIA_TYPE = "text/event-stream"
# The spec's bound on silence; the setting CODESHERPA_SSE_HEARTBEAT_S may shorten it.
HEARTBEAT_S = 15.0
KEEPALIVE = b": keepalive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx (and proxies that copy it) would otherwise buffer the stream.
    (b"x-accel-buffering", b"no"),
]


def wants_event_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` header names ``text/event-stream`` among its media ranges."""
    if not accept or MEDIA_TYPE not in accept.lower():
        return False
    return any(part.split(";", 1)[0].strip().lower() == MEDIA_TYPE for part in accept.split(","))


def frame(event: str, data: str) -> bytes:
    """One event; a line break in ``data`` would end its field, so each line gets one."""
    lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return f"event: {event}\n{lines}\n".encode()


def _json(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: JSON's own escape carries it
        return json.dumps(value)
    return text


def encode(item: StreamItem) -> bytes:
    """The bytes that send one item of a run's stream."""
    if isinstance(item, Idle):
        return KEEPALIVE
    if isinstance(item, Reply):
        return frame("done", item.body)
    if isinstance(item, OutputText):
        return frame(item.name, _json({"text": item.text}))
    if isinstance(item, OutputDisplay):
        return frame("display", item.output.model_dump_json())
    return frame("dropped", _json({"characters": item.characters}))


class EventStreamResponse(Response):
    """A run's events as SSE; the run is abandoned if the client leaves before ``done``."""

    media_type = MEDIA_TYPE

    def __init__(self, stream: RunStream, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.stream = stream
        self.heartbeat_s = heartbeat_s
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(until_disconnect)
                await self._send_events(send)
                group.cancel_scope.cancel()
        finally:
            self.stream.close()

    async def _send_events(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            # Each write is awaited: a client that reads slowly slows this reader only.
            async for item in self.stream.items(self.heartbeat_s):
                await send({"type": "http.response.body", "body": encode(item), "more_body": True})
        except ServiceError as error:
            await send({"type": "http.response.body", "body": _error(error), "more_body": True})
        except Exception:
            # Headers are gone: the client learns of it in the stream, never a traceback.
            log.exception("unexpected error in an event stream")
            body = error_body(
                "internal error",
                "Retry once; if it persists, report it to the operator.",
                "internal_error",
            )
            await send({"type": "http.response.body", "body": frame("error", _json(body))})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error(error: ServiceError) -> bytes:
    return frame("error", _json(error.body()))
