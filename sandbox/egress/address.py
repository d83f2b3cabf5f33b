"""Where a session finds the egress proxy: a fixed port on loopback in its own network
namespace.

The listening socket is made in the worker's namespace before the worker starts (by
the intermediate process, ``sandbox.zygote``) and handed out of it, so every connection
accepted on it comes from that one session: attribution needs no credential.
"""

from __future__ import annotations

import fcntl
import socket
import struct

PROXY_HOST = "127.0.0.1"
PROXY_PORT = 3128
PROXY_URL = f"http://{PROXY_HOST}:{PROXY_PORT}"
LISTEN_BACKLOG = 64

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def proxy_environment() -> dict[str, str]:
    """What urllib, requests, httpx and pip read to use a proxy; nothing bypasses it."""
    return {
        "HTTP_PROXY": PROXY_URL,
        "HTTPS_PROXY": PROXY_URL,
        "http_proxy": PROXY_URL,
        "https_proxy": PROXY_URL,
        "NO_PROXY": "",
        "no_proxy": "",
    }


def bring_loopback_up() -> None:
    """In a new network namespace, loopback starts down; the listener needs it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(probe, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def open_session_listener() -> socket.socket:
    """Loopback up and the proxy's listening socket, in the calling process's network
    namespace (which must be the session's own)."""
    bring_loopback_up()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((PROXY_HOST, PROXY_PORT))
        listener.listen(LISTEN_BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener


def hand_over_listener(spec_enabled: bool, unshare_error: str | None, to: socket.socket) -> None:
    """In the intermediate process, in the session's new namespaces: send the zygote the
    proxy's listener, or nothing (network off, or no namespace of its own: a listener
    on the host's loopback would be no session's)."""
    if not spec_enabled or unshare_error is not None:
        to.send(b"-")
        return
    with open_session_listener() as listener:
        socket.send_fds(to, [b"L"], [listener.fileno()])


def receive_listener(source: socket.socket) -> socket.socket | None:
    """In the zygote: the listener the intermediate sent, if any."""
    _data, fds, _flags, _address = socket.recv_fds(source, 16, 1)
    return socket.socket(fileno=fds[0]) if fds else None
