"""The bare-worker anchor: the least any worker-per-session design can cost.

``POST /bare/{worker}`` takes the body a ``/repl`` call sends, hands the cell to one of
``WORKERS`` processes forked before the server started, and answers with what the cell
evaluated to.  Nothing else happens: no confinement, no output capture, no limits, no
authentication, audit, metrics or rate limit.  CodeSherpa's ``/repl`` does this and all
of that, so this round trip against the empty endpoint's, measured in the same run, is
the floor under the targets that compare ``/repl`` with the empty endpoint.

The workers are children of the anchor server and exit when it does: each holds only
its own end of a SOCK_SEQPACKET pair, which reads as closed once the server is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import NoReturn

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

WORKERS = 8  # the throughput measurement's sessions, one worker each
_MESSAGE_SIZE = 1 << 16  # a seqpacket message is read whole, up to this size


class Cell(BaseModel):
    code: str
    session_id: str


def _serve(channel: socket.socket) -> NoReturn:
    namespace: dict[str, object] = {}
    while True:
        message = channel.recv(_MESSAGE_SIZE)
        if not message:
            os._exit(0)
        code = json.loads(message)
        try:
            try:
                value: str | None = repr(eval(compile(code, "<cell>", "eval"), namespace))
            except SyntaxError:
                exec(compile(code, "<cell>", "exec"), namespace)
                value = None
            reply = {"result": value, "error": None}
        except Exception as exc:  # noqa: BLE001 - a cell's error is its reply
            reply = {"result": None, "error": f"{type(exc).__name__}: {exc}"}
        channel.sendall(json.dumps(reply).encode())


def start_workers(count: int = WORKERS) -> list[socket.socket]:
    """Fork the workers; call before any thread or event loop exists."""
    channels: list[socket.socket] = []
    for _ in range(count):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.fork() == 0:
            for channel in (mine, *channels):
                channel.close()
            _serve(theirs)
        theirs.close()
        mine.setblocking(False)
        channels.append(mine)
    return channels


class BareWorkerFront:
    """The ASGI app uvicorn calls: ``POST /bare/{worker}`` here, everything else to ``app``.

    Served in front of FastAPI's stack, as CodeSherpa serves a valid ``/repl``
    (``service/execution_fast_path.py``): routing, dependencies and body handling
    through FastAPI would put their cost in the floor, which CodeSherpa does not pay.
    """

    def __init__(self, app: ASGIApp, channels: list[socket.socket]) -> None:
        self.app = app
        self.channels = channels
        self.locks = [asyncio.Lock() for _ in channels]  # one run at a time per worker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        worker = self._worker(scope)
        if worker is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            cell = Cell.model_validate_json(b"".join(chunks))
        except ValidationError:
            await _answer(send, 422, b'{"detail":"the body is not a cell"}')
            return
        request = json.dumps(cell.code).encode()
        if len(request) > _MESSAGE_SIZE:
            await _answer(send, 413, b'{"detail":"the code is too long"}')
            return
        loop = asyncio.get_running_loop()
        async with self.locks[worker]:
            await loop.sock_sendall(self.channels[worker], request)
            reply = await loop.sock_recv(self.channels[worker], _MESSAGE_SIZE)
        await _answer(send, 200, reply)

    def _worker(self, scope: Scope) -> int | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        head, _, number = scope["path"].rpartition("/")
        if head != "/bare" or not number.isdigit():
            return None
        worker = int(number)
        return worker if worker < len(self.channels) else None


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
