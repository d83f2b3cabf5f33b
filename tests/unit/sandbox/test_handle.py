"""The handle's side of a worker channel: whole frames in order, a failure for every
later read once the channel fails, and never more than one read held for a worker
that writes without being asked."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import itertools
import os
import socket
import subprocess
import termios
from collections.abc import Iterator

import pytest

from sandbox import protocol
from sandbox.errors import FrameTooLarge, WorkerLost
from sandbox.handle import WorkerHandle


@pytest.fixture
def channel() -> Iterator[tuple[WorkerHandle, socket.socket]]:
    """A handle around a stand-in process, and the worker's end of its channel."""
    stand_in = subprocess.Popen(["sleep", "60"])
    pidfd = os.pidfd_open(stand_in.pid)
    service_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    handle = WorkerHandle(
        stand_in.pid, pidfd, service_end, "/tmp", None, "test-session", quota=False
    )
    try:
        yield handle, worker_end
    finally:
        stand_in.kill()
        stand_in.wait()
        worker_end.close()
        service_end.close()
        if handle.process._pidfd is not None:  # else cleanup() closed it
            os.close(pidfd)


def _reply(run_id: int, stdout: str = "") -> bytes:
    return protocol.encode(protocol.RunReply(run_id=run_id, status="ok", stdout=stdout))


def _unread_bytes(sock: socket.socket) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def test_frames_arrive_whole_and_in_order_however_they_are_cut(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    handle, worker_end = channel
    stream = _reply(1) + _reply(2, "x" * 5000) + _reply(3)

    async def exchange() -> list[int]:
        received = []
        # A byte stream, not messages: cut inside a header, a payload, and between frames.
        cuts = sorted([0, 2, 9, len(_reply(1)) + 1, 3000, len(stream) - 5, len(stream)])
        for start, end in itertools.pairwise(cuts):
            worker_end.sendall(stream[start:end])
        for _ in range(3):
            message = await handle.receive()
            assert isinstance(message, protocol.RunReply)
            received.append(message.run_id)
        return received

    assert asyncio.run(exchange()) == [1, 2, 3]


def test_a_reply_that_comes_while_the_service_waits_wakes_it(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    handle, worker_end = channel

    async def exchange() -> int:
        asyncio.get_running_loop().call_later(0.05, worker_end.sendall, _reply(9))
        message = await handle.receive()
        assert isinstance(message, protocol.RunReply)
        return message.run_id

    assert asyncio.run(exchange()) == 9


def test_a_closed_channel_fails_this_read_and_every_later_one(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    handle, worker_end = channel
    worker_end.sendall(_reply(1))
    worker_end.close()

    async def exchange() -> None:
        first = await handle.receive()  # what was sent before the close still arrives
        assert isinstance(first, protocol.RunReply)
        for _ in range(2):
            with pytest.raises(WorkerLost, match="channel closed"):
                await handle.receive()

    asyncio.run(exchange())


def test_hanging_up_ends_a_pending_read(channel: tuple[WorkerHandle, socket.socket]) -> None:
    handle, _ = channel

    async def exchange() -> None:
        asyncio.get_running_loop().call_later(0.05, handle.hang_up)
        with pytest.raises(WorkerLost):
            await asyncio.wait_for(handle.receive(), timeout=30)

    asyncio.run(exchange())


def test_a_frame_announcing_more_than_the_cap_is_refused_before_it_is_buffered(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    handle, worker_end = channel
    worker_end.sendall(protocol.HEADER.pack(protocol.DEFAULT_MAX_FRAME + 1) + b"x" * 1000)

    async def exchange() -> None:
        with pytest.raises(FrameTooLarge):
            await handle.receive()
        with pytest.raises(FrameTooLarge):  # the channel is no use after that
            await handle.receive()

    asyncio.run(exchange())


def test_a_worker_writing_unasked_gets_one_read_taken_and_the_rest_waits(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    handle, worker_end = channel
    worker_end.setblocking(False)
    flood = b"".join(_reply(run_id, "y" * 1000) for run_id in range(1, 2001))
    written = 0
    while written < len(flood):
        try:
            written += worker_end.send(flood[written:])
        except BlockingIOError:
            break
    service_end = socket.socket(fileno=os.dup(handle.channel.fileno()))

    async def exchange() -> int:
        first = await handle.receive()  # reading starts here, and stops with unread frames
        assert isinstance(first, protocol.RunReply)
        assert first.run_id == 1
        await asyncio.sleep(0.2)  # time for the reader to take more, were it to
        return written - _unread_bytes(service_end)

    try:
        taken = asyncio.run(exchange())
    finally:
        service_end.close()
    assert taken <= protocol.READ_SIZE


def test_the_start_of_a_long_frame_written_unasked_gets_one_read_taken_and_the_rest_waits(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    # A frame is read whole only while a receive waits for it: between runs, a worker
    # announcing a frame of the largest size and sending all but its last byte must
    # not make the service hold that frame while the session sits idle.
    handle, worker_end = channel
    worker_end.setblocking(False)
    announced = protocol.DEFAULT_MAX_FRAME
    almost = protocol.HEADER.pack(announced) + b"x" * (announced - 1)
    service_end = socket.socket(fileno=os.dup(handle.channel.fileno()))

    async def between_runs() -> int:
        worker_end.sendall(_reply(1))
        first = await handle.receive()  # a run: reading starts here and stays registered
        assert isinstance(first, protocol.RunReply)
        written = 0
        for _ in range(5):  # fill the socket, give the reader time to empty it, again
            with contextlib.suppress(BlockingIOError):
                while written < len(almost):
                    written += worker_end.send(almost[written:])
            await asyncio.sleep(0.1)
        return written - _unread_bytes(service_end)

    try:
        taken = asyncio.run(between_runs())
    finally:
        service_end.close()
    assert taken <= protocol.READ_SIZE


def test_a_receive_pending_when_the_handle_is_cleaned_up_fails_as_a_lost_worker(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    # The worker's end stays open (its process outlived the kill, say): the pending
    # receive must not wait forever, and a later one must not reach a closed descriptor.
    handle, _worker_end = channel

    async def exchange() -> tuple[object, BaseException | None]:
        pending = asyncio.ensure_future(handle.receive())
        await asyncio.sleep(0.05)
        await handle.cleanup()
        first = await asyncio.wait_for(asyncio.gather(pending, return_exceptions=True), 5)
        try:
            await handle.receive()
        except Exception as later:  # the type is what is checked
            return first[0], later
        return first[0], None

    pending_failure, later_failure = asyncio.run(exchange())
    assert isinstance(pending_failure, WorkerLost)
    assert isinstance(later_failure, WorkerLost)


def test_two_cleanups_at_once_both_end_when_the_worker_does(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    # A session ended while its abandoned run is being ended cleans the same handle up
    # twice.  Each must return once the worker is reaped, not at its 5 s deadline.
    handle, _worker_end = channel

    async def clean_up_twice() -> set[asyncio.Future[None]]:
        both = {asyncio.ensure_future(handle.cleanup()) for _ in range(2)}
        _done, pending = await asyncio.wait(both, timeout=3)
        for late in pending:
            await late
        return pending

    assert asyncio.run(clean_up_twice()) == set()
    assert handle.returncode is not None  # reaped, not left for the orphan reaper


def test_two_waits_at_once_both_end_when_the_worker_does(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    # A run's failure path waits for the worker while a session's end cleans it up.
    handle, _worker_end = channel

    async def wait_twice_then_kill() -> set[asyncio.Future[int | None]]:
        both = {asyncio.ensure_future(handle.wait(timeout=30)) for _ in range(2)}
        await asyncio.sleep(0.05)
        handle.kill()
        _done, pending = await asyncio.wait(both, timeout=3)
        for late in pending:
            late.cancel()
        return pending

    assert asyncio.run(wait_twice_then_kill()) == set()
    assert handle.returncode == -9


def test_a_cleanup_cut_short_by_its_loop_ending_is_done_again_by_the_next_call(
    channel: tuple[WorkerHandle, socket.socket],
) -> None:
    handle, worker_end = channel

    async def start_cleanup_then_leave() -> None:
        started = asyncio.ensure_future(handle.cleanup())
        await asyncio.sleep(0)  # the cleanup task exists; asyncio.run cancels it on leaving
        started.cancel()

    asyncio.run(start_cleanup_then_leave())
    asyncio.run(asyncio.wait_for(handle.cleanup(), 10))
    assert handle.returncode == -9  # reaped
    worker_end.settimeout(5)
    assert worker_end.recv(1) == b""  # and the service's end of the channel closed
