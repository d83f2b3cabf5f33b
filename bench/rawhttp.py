"""A minimal HTTP/1.1 keep-alive client for the timed loops.

The benchmark compares servers, so the client should cost as little as it can: a
request is one prepared ``sendall`` and a response is read up to its Content-Length.
An httpx client spends more CPU per request than the empty endpoint does, and on a
2-core machine that CPU is taken from the server being measured.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    pass


class _StaleConnection(Exception):
    """The server closed the connection before answering anything."""


class RawClient:
    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self._host, self._port), self._timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer.clear()
        return self._sock

    def prepare(self, method: str, path: str, body: Any = None) -> bytes:
        """The request's bytes, built once and sent as often as a loop needs."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    def send(self, request: bytes) -> tuple[int, bytes]:
        reused = self._sock is not None
        try:
            return self._exchange(request)
        except (_StaleConnection, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
        # uvicorn closes a keep-alive connection idle for 5 s; the request never reached
        # it, so sending it again on a fresh connection is safe.
        try:
            return self._exchange(request)
        except _StaleConnection:
            self.close()
            raise HttpError("the server closed a fresh connection") from None

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        sock = self._connect()
        try:
            sock.sendall(request)
            return self._read_response(sock)
        except BaseException:
            self.close()
            raise

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, payload = self.send(self.prepare(method, path, body))
        return status, json.loads(payload) if payload else None

    def _fill(self, sock: socket.socket) -> None:
        chunk = sock.recv(65536)
        if not chunk:
            raise HttpError("the server closed the connection")
        self._buffer += chunk

    def _read_response(self, sock: socket.socket) -> tuple[int, bytes]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if not self._buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise _StaleConnection
                self._buffer += chunk
                continue
            self._fill(sock)
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status in (204, 304) or 100 <= status < 200:
            return status, b""
        if "content-length" not in headers:
            raise HttpError(f"no Content-Length in a {status} response: {head!r}")
        length = int(headers["content-length"])
        while len(self._buffer) < length:
            self._fill(sock)
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body
