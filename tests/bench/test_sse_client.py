"""The benchmark's SSE client reads events whole, however the chunks of the body split them."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bench.sse import EventStreamClient, EventStreamError

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def serve_once(responses: list[bytes]) -> tuple[str, threading.Thread]:
    """A server that answers each request on one connection with the next response."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        connection, _ = listener.accept()
        with connection, listener:
            for response in responses:
                connection.recv(65536)
                connection.sendall(response)

    thread = threading.Thread(target=answer)
    thread.start()
    return f"http://127.0.0.1:{port}", thread


@pytest.fixture
def split_stream() -> Iterator[tuple[str, threading.Thread]]:
    body = chunked(
        b": keepalive\n\n",
        b'event: stdout\ndata: {"text": "a"}\n',
        b'\nevent: stdout\ndata: {"text":',
        b' "b"}\n\nevent: done\ndata: {"status": "ok"}\n\n',
    )
    url, thread = serve_once([HEAD + body, HEAD + chunked(b"event: done\ndata: {}\n\n")])
    yield url, thread
    thread.join(5)


def test_events_split_across_chunks_arrive_whole_and_comments_are_skipped(
    split_stream: tuple[str, threading.Thread],
) -> None:
    url, _ = split_stream
    client = EventStreamClient(url, timeout=5)
    request = client.prepare("/repl", {"code": "1"})

    events = [(event.name, event.data) for event in client.events(request)]

    assert events == [
        ("stdout", '{"text": "a"}'),
        ("stdout", '{"text": "b"}'),
        ("done", '{"status": "ok"}'),
    ]
    # The chunked body was read to its end: the connection serves the next stream.
    assert [event.name for event in client.events(request)] == ["done"]
    client.close()


def test_a_reply_that_is_not_an_event_stream_is_an_error() -> None:
    url, thread = serve_once(
        [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"]
    )
    client = EventStreamClient(url, timeout=5)
    with pytest.raises(EventStreamError, match="not an event stream"):
        list(client.events(client.prepare("/repl", {"code": "1"})))
    thread.join(5)
