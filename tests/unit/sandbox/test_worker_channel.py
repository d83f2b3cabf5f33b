"""The service's end of a worker channel: a request handed to the socket before any wait."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from sandbox import protocol
from sandbox.worker_channel import WorkerChannel

Ends = tuple[socket.socket, socket.socket]


@pytest.fixture
def ends() -> Iterator[Ends]:
    service_end, worker_end = socket.socketpair()
    with service_end, worker_end:
        yield service_end, worker_end


def _frames(peer: socket.socket) -> list[bytes]:
    decoder = protocol.FrameDecoder()
    payloads: list[bytes] = []
    peer.setblocking(False)
    while True:
        try:
            data = peer.recv(1 << 20)
        except BlockingIOError:
            return payloads
        payloads.extend(decoder.feed(data))


def test_a_request_started_is_in_the_socket_before_the_caller_awaits_anything(ends: Ends) -> None:
    service_end, worker_end = ends
    channel = WorkerChannel(service_end)
    request = protocol.RunPython(run_id=1, code="1 + 1")

    assert channel.start_sending(request)
    assert [protocol.decode_request(p) for p in _frames(worker_end)] == [request]
    asyncio.run(channel.send(request))  # nothing of it is left to send
    assert _frames(worker_end) == []


def test_what_the_socket_did_not_take_at_once_is_sent_by_send(ends: Ends) -> None:
    service_end, worker_end = ends
    service_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    channel = WorkerChannel(service_end)
    request = protocol.RunPython(run_id=1, code="x = '" + "a" * 1_000_000 + "'")
    received: list[bytes] = []

    async def scenario() -> None:
        channel.start_sending(request)
        sending = asyncio.create_task(channel.send(request))
        decoder = protocol.FrameDecoder()
        loop = asyncio.get_running_loop()
        worker_end.setblocking(False)
        while not received:
            received.extend(decoder.feed(await loop.sock_recv(worker_end, 1 << 16)))
        await sending

    asyncio.run(scenario())
    assert [protocol.decode_request(p) for p in received] == [request]


def test_another_request_than_the_one_started_is_sent_whole(ends: Ends) -> None:
    service_end, worker_end = ends
    channel = WorkerChannel(service_end)
    started = protocol.RunPython(run_id=1, code="1")
    other = protocol.RunCommand(run_id=2, command="ls")
    channel.start_sending(started)
    asyncio.run(channel.send(other))
    assert [protocol.decode_request(p) for p in _frames(worker_end)] == [started, other]
