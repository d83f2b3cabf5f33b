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

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

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


def add_route(app: FastAPI, channels: list[socket.socket]) -> None:
    locks = [asyncio.Lock() for _ in channels]  # one run at a time per worker, as a session

    @app.post("/bare/{worker}")
    async def bare(worker: int, cell: Cell) -> Response:
        if not 0 <= worker < len(channels):
            raise HTTPException(404, f"worker: 0 to {len(channels) - 1}")
        message = json.dumps(cell.code).encode()
        if len(message) > _MESSAGE_SIZE:
            raise HTTPException(413, f"code: at most {_MESSAGE_SIZE} bytes as JSON")
        loop = asyncio.get_running_loop()
        async with locks[worker]:
            await loop.sock_sendall(channels[worker], message)
            reply = await loop.sock_recv(channels[worker], _MESSAGE_SIZE)
        return Response(reply, media_type="application/json")
