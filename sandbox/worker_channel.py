"""A worker's channel, from the service's side: framed messages over a socket.

Every frame is hostile: size-capped and validated by ``sandbox.protocol``.  Once the
channel fails (closed, an error, a bad frame) every later receive raises that failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket

from sandbox import protocol
from sandbox.errors import ProtocolError, WorkerLost


class WorkerChannel:
    def __init__(self, sock: socket.socket, max_frame: int = protocol.DEFAULT_MAX_FRAME) -> None:
        self._socket = sock
        self._socket.setblocking(False)
        self._max_frame = max_frame
        self._decoder = protocol.FrameDecoder(max_frame)
        self._frames: collections.deque[bytes] = collections.deque()
        # The socket is read by a callback that stays registered between runs.
        self._reading_on: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._failure: Exception | None = None  # raised by every later receive
        # A request ``start_sending`` began, and what of its frame the socket did not take.
        self._started: tuple[protocol.RunPython | protocol.RunCommand, bytes] | None = None

    def fileno(self) -> int:
        return self._socket.fileno()

    @property
    def failed(self) -> bool:
        return self._failure is not None

    async def receive(self) -> protocol.WorkerFrame:
        """The worker's next frame, or WorkerLost / ProtocolError once the channel failed.

        Read by ``_on_readable``, which stays registered with the event loop between
        runs: a ``sock_recv`` per run added and removed the reader and made a recv
        that found nothing, twice the CPU of this (docs/decisions.md).
        """
        while not self._frames:
            if self._failure is not None:
                raise self._failure
            loop = asyncio.get_running_loop()
            if self._reading_on is not loop:
                self._stop_reading()  # registered with another loop (a closed one, say)
                loop.add_reader(self._socket.fileno(), self._on_readable)
                self._reading_on = loop
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return protocol.decode_worker_message(self._frames.popleft())

    def _on_readable(self) -> None:
        if self._frames or (self._waiter is None and self._decoder.holds_partial_frame):
            # Nobody asked for what was read last: the rest waits in the socket, so a
            # worker writing unasked, whole frames or the start of a long one, makes
            # the service hold one read's worth at most until a receive asks for more.
            self._stop_reading()
            return
        try:
            data = self._socket.recv(protocol.READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(WorkerLost(f"channel error: {exc.strerror}"))
            return
        if not data:
            self.fail(WorkerLost("channel closed"))
            return
        try:
            self._frames.extend(self._decoder.feed(data))
        except ProtocolError as exc:
            self.fail(exc)
            return
        if self._frames and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, failure: Exception) -> None:
        """From now on every receive raises ``failure``; a pending one at once."""
        self._failure = failure
        self._stop_reading()  # a closed channel stays readable: stop being told so
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _stop_reading(self) -> None:
        loop, self._reading_on = self._reading_on, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._socket.fileno())

    def hang_up(self) -> None:
        """End the channel from this side: a pending ``receive`` fails at once.

        A killed worker's end closes only when its whole PID namespace is gone; this
        does not wait for that.
        """
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    def start_sending(self, message: protocol.RunPython | protocol.RunCommand) -> bool:
        """Hand the socket what it takes of ``message`` now, without waiting; whether it did.

        The worker starts on the request while the run's task is still to be scheduled;
        ``send(message)`` then sends the rest, and reports any failure.
        """
        if self._failure is not None:
            return False
        try:
            frame = protocol.encode(message, self._max_frame)
            sent = self._socket.send(frame)
        except (OSError, ProtocolError):
            return False  # nothing was sent: ``send`` tries again and says why it cannot
        self._started = (message, frame[sent:])
        return sent > 0

    async def send(self, message: protocol.RunPython | protocol.RunCommand) -> None:
        started, self._started = self._started, None
        if started is not None and started[0] is message:
            rest = started[1]
        else:
            rest = protocol.encode(message, self._max_frame)
        if not rest:
            return
        try:
            await asyncio.get_running_loop().sock_sendall(self._socket, rest)
        except OSError as exc:
            raise WorkerLost(f"channel error: {exc.strerror}") from None

    def close(self) -> None:
        if self._failure is None:
            self.fail(WorkerLost("the worker was stopped"))
        self._stop_reading()
        self._socket.close()
