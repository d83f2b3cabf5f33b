"""Loopback HTTP servers as egress targets: each counts the connections and the bytes
it received, so a test can assert that a forbidden one saw nothing."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Seen:
    connections: int = 0
    requests: list[str] = field(default_factory=list)  # request lines
    bytes_received: int = 0


class _CountingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    seen: Seen
    name: str
    directory: str | None

    def get_request(self) -> tuple[socket.socket, object]:
        connection, address = super().get_request()
        self.seen.connections += 1
        return connection, address


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _CountingServer
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.server.seen.requests.append(self.requestline)
        if self.server.directory is not None:
            self._serve_file(self.server.directory)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(length) if length else b""
        self.server.seen.bytes_received += len(self.requestline) + len(body_in)
        body = f"hello from {self.server.name}; got {len(body_in)} bytes".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def _serve_file(self, directory: str) -> None:
        # A package index is files (a wheel, a page of links): served from a directory.
        path = Path(directory, self.path.split("?")[0].lstrip("/"))
        if path.is_dir():
            path = path / "index.html"
        inside = path.resolve().is_relative_to(Path(directory).resolve())
        if not inside or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        kind = "text/html" if path.suffix == ".html" else "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class LoopbackServer:
    name: str
    host: str
    port: int
    seen: Seen

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"


@contextmanager
def loopback_server(
    name: str, host: str = "127.0.0.1", port: int = 0, directory: str | None = None
) -> Iterator[LoopbackServer]:
    """An HTTP server on ``host`` (any address of 127.0.0.0/8 is this host's loopback),
    answering every request with a greeting, or with the files of ``directory``."""
    server = _CountingServer((host, port), _Handler)
    server.seen = Seen()
    server.name = name
    server.directory = directory
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LoopbackServer(name, host, server.server_address[1], server.seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
