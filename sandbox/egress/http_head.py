"""A strict parser for the request heads the egress proxy accepts.

The proxy forwards only what it can read one way: a head that two servers could frame
differently (smuggling) is refused, not repaired.  Refused: bare LF or CR, obs-fold
(a line starting with whitespace), bytes outside visible ASCII in names and values,
whitespace before a colon, more than one Content-Length (even when equal), any
Transfer-Encoding (the proxy forwards no chunked request body, so CL+TE cannot arise),
heads over ``MAX_HEAD_BYTES`` or ``MAX_HEADERS``, userinfo in a URL, and any target but
``CONNECT host:port`` or an absolute ``http://`` URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HOST_CHARS = 255  # a DNS name has at most 253; brackets of an IPv6 literal

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?|")
_HOST = re.compile(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
_PATH = re.compile(r"[\x21-\x7e]*")

# Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)


class BadRequest(ValueError):
    """A head the proxy will not forward; the message says which rule it broke."""


@dataclass(frozen=True)
class RequestHead:
    method: str
    host: str  # as the client named it: a name or an IP literal (IPv6 without brackets)
    port: int
    path: str  # origin-form, for a forwarded request; "" for CONNECT
    headers: tuple[tuple[bytes, bytes], ...]
    content_length: int

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    def forwarded(self) -> bytes:
        """The head sent upstream: origin-form target, Host from the target, hop-by-hop
        headers dropped (and those the Connection header names), one connection only."""
        named = {
            token.strip().lower()
            for name, value in self.headers
            if name.lower() == b"connection"
            for token in value.split(b",")
        }
        lines = [
            f"{self.method} {self.path} HTTP/1.1".encode(),
            b"Host: " + self.authority().encode(),
        ]
        for name, value in self.headers:
            lowered = name.lower()
            if lowered not in _HOP_BY_HOP and lowered not in named:
                lines.append(name + b": " + value)
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"


def head_complete(buffer: bytes) -> int:
    """The length of the head in ``buffer`` (through its blank line), or -1."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def _authority(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text.partition("]")
        host += "]"
    else:
        host, _, rest = text.partition(":")
        rest = ":" + rest if _ else ""
    if not _HOST.fullmatch(host) or len(host) > MAX_HOST_CHARS:
        raise BadRequest(f"{text[:80]!r} is not host[:port]")
    if not rest:
        return host.strip("[]"), None
    port = rest[1:]
    if not rest.startswith(":") or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise BadRequest(f"{text!r} has no valid port")
    return host.strip("[]"), int(port)


def _target(method: str, target: str) -> tuple[str, int, str]:
    if method == "CONNECT":
        host, port = _authority(target)
        if port is None:
            raise BadRequest("CONNECT needs host:port")
        return host, port, ""
    if not target[:7].lower() == "http://":
        raise BadRequest("a proxied request needs an absolute http:// URL (https goes by CONNECT)")
    rest = target[7:]
    slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:slash], rest[slash:]
    if "@" in authority:
        raise BadRequest("a URL with userinfo is refused")
    if not _PATH.fullmatch(path):
        raise BadRequest("the URL has bytes outside visible ASCII")
    host, port = _authority(authority)
    if path.startswith("?"):
        path = "/" + path
    return host, port or 80, path or "/"


def _header(line: bytes) -> tuple[bytes, bytes]:
    if line[:1] in (b" ", b"\t"):
        raise BadRequest("obs-fold (a header line starting with whitespace) is refused")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise BadRequest(f"bad header name {name[:40]!r}")
    value = value.strip(b" \t")
    if not _VALUE.fullmatch(value):
        raise BadRequest(f"header {name.decode()} has bytes outside visible ASCII")
    return name, value


def parse_head(head: bytes) -> RequestHead:
    """Parse one request head (through its blank line); BadRequest if not strict HTTP/1."""
    if len(head) > MAX_HEAD_BYTES:
        raise BadRequest(f"the request head is over {MAX_HEAD_BYTES} bytes")
    if not head.endswith(b"\r\n\r\n"):
        raise BadRequest("the request head is incomplete")
    lines = head[:-4].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise BadRequest("a bare CR or LF in the head is refused")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest("the request line is not 'METHOD target HTTP/1.x'")
    if not _TOKEN.fullmatch(parts[0]) or not parts[1].isascii():
        raise BadRequest("bad method or target")
    method, target = parts[0].decode(), parts[1].decode()
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    headers = tuple(_header(line) for line in lines[1:])
    host, port, path = _target(method, target)
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    if any(name.lower() == b"transfer-encoding" for name, _value in headers):
        raise BadRequest("Transfer-Encoding in a request is refused (send Content-Length)")
    if len(lengths) > 1:
        raise BadRequest("more than one Content-Length is refused")
    length = 0
    if lengths:
        if not lengths[0].isdigit() or len(lengths[0]) > 12:
            raise BadRequest("Content-Length is not a number")
        length = int(lengths[0])
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"a request body over {MAX_BODY_BYTES} bytes is refused")
    if method == "CONNECT" and length:
        raise BadRequest("CONNECT with a body is refused")
    return RequestHead(method, host, port, path, headers, length)


MAX_RESPONSE_HEAD_BYTES = 64 * 1024
_CONNECTION_HEADERS = (b"connection:", b"keep-alive:", b"proxy-connection:")


class ResponseHeadRewriter:
    """Marks a forwarded response "Connection: close": the proxy serves one request per
    connection, and a client that kept the connection for its next request would find
    it closed under it.  Everything after the head passes through untouched."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """What to send the client for ``data``; BadRequest for a head out of bounds."""
        if self.done:
            return data
        self._buffer += data
        end = head_complete(self._buffer)
        if end < 0:
            if len(self._buffer) > MAX_RESPONSE_HEAD_BYTES:
                raise BadRequest("the response head is over the proxy's limit")
            return b""
        self.done = True
        head, rest = self._buffer[: end - 4], self._buffer[end:]
        self._buffer = b""
        lines = [
            line for line in head.split(b"\r\n") if not line.lower().startswith(_CONNECTION_HEADERS)
        ]
        return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest
