"""A minimal Server-Sent Events client for the streaming measure, on a raw socket.

Like bench/rawhttp.py, it costs as little as it can, so the client's own CPU is not
taken from the service on a 2-core machine.  It reads the chunked body as it comes and
timestamps each event the moment its closing blank line is read, which is when any
SSE client could act on it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MEDIA_TYPE = "text/event-stream"
_READ = 256 * 1024


class EventStreamError(Exception):
    pass


@dataclass(frozen=True)
class Event:
    name: str
    data: str
    at: float  # time.perf_counter() when its last line was read


def parse_block(block: bytes, at: float) -> Event | None:
    """One event from the lines between two blank lines; None for comments only."""
    name = "message"
    data: list[str] = []
    for line in block.decode("utf-8").split("\n"):
        line = line.removesuffix("\r")
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    return Event(name, "\n".join(data), at) if data else None


class _Body:
    """The response body's bytes as they arrive, chunked or of a known length."""

    def __init__(self, sock: socket.socket, buffer: bytearray, headers: dict[str, str]) -> None:
        self._sock = sock
        self._buffer = buffer
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self._left = int(headers.get("content-length", "0"))

    def _fill(self) -> None:
        data = self._sock.recv(_READ)
        if not data:
            raise EventStreamError("the server closed the connection mid-stream")
        self._buffer += data

    def pieces(self) -> Iterator[bytes]:
        if not self._chunked:
            while self._left > 0:
                if not self._buffer:
                    self._fill()
                piece = bytes(self._buffer[: self._left])
                del self._buffer[: len(piece)]
                self._left -= len(piece)
                yield piece
            return
        while True:
            while (end := self._buffer.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(self._buffer[:end]).split(b";", 1)[0], 16)
            del self._buffer[: end + 2]
            if size == 0:
                while self._buffer.find(b"\r\n") < 0:
                    self._fill()
                del self._buffer[: self._buffer.find(b"\r\n") + 2]
                return
            while size > 0:
                if not self._buffer:
                    self._fill()
                piece = bytes(self._buffer[:size])
                del self._buffer[: len(piece)]
                size -= len(piece)
                yield piece
            while len(self._buffer) < 2:
                self._fill()
            del self._buffer[:2]


class EventStreamClient:
    """POST requests whose replies are event streams, on one keep-alive connection."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def prepare(self, path: str, body: Any) -> bytes:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Accept: {MEDIA_TYPE}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    def events(self, request: bytes) -> Iterator[Event]:
        """Send a prepared request and yield its events as each is read whole.

        Read the stream to its end before the next request: the connection is reused.
        """
        if self._sock is None:
            self._sock = socket.create_connection((self._host, self._port), self._timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer.clear()
        sock = self._sock
        try:
            sock.sendall(request)
            status, headers = self._read_head(sock)
            body = _Body(sock, self._buffer, headers)
            if status != 200 or MEDIA_TYPE not in headers.get("content-type", ""):
                raise EventStreamError(
                    f"{status}, not an event stream: {b''.join(body.pieces())[:300]!r}"
                )
            pending = bytearray()
            for piece in body.pieces():
                pending += piece
                while (end := pending.find(b"\n\n")) >= 0:
                    event = parse_block(bytes(pending[:end]), time.perf_counter())
                    del pending[: end + 2]
                    if event is not None:
                        yield event
        except BaseException:
            self.close()
            raise

    def _read_head(self, sock: socket.socket) -> tuple[int, dict[str, str]]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            data = sock.recv(_READ)
            if not data:
                raise EventStreamError("the server closed the connection before answering")
            self._buffer += data
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split(" ", 2)[1]), headers
