"""Bounded output: keep the head and the tail of a stream while it is produced.

An infinite ``os.write(1, ...)`` loop must not grow any process's memory, so the
collector never holds more than ``2 * keep`` bytes whatever flows through it, and
counts the rest.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import select
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # output_stream builds on this module
    from sandbox.output_stream import OutputStream

OMISSION_MARKER = "\n[... {omitted} characters omitted ...]\n"


def truncate_output(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` characters, keeping head and tail."""
    if len(text) <= limit:
        return text, False
    marker_room = len(OMISSION_MARKER.format(omitted=len(text)))
    keep = max(limit - marker_room, 0)
    head, tail = keep // 2, keep - keep // 2
    omitted = len(text) - head - tail
    cut = text[:head] + OMISSION_MARKER.format(omitted=omitted) + (text[-tail:] if tail else "")
    return cut, True


class BoundedBuffer:
    """Head bytes up to ``keep``, then a rolling tail of ``keep`` bytes."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._keep - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail and self._tail_size - len(self._tail[0]) >= self._keep:
            self._tail_size -= len(self._tail.popleft())

    def text(self, limit: int) -> tuple[str, bool]:
        tail = b"".join(self._tail)[-self._keep :] if self._tail else b""
        dropped = self.total - len(self._head) - len(tail)
        head_text = self._head.decode("utf-8", errors="replace")
        tail_text = tail.decode("utf-8", errors="replace")
        if dropped == 0:
            return truncate_output(head_text + tail_text, limit)
        # Announce what was dropped and keep the marker within ``limit``.
        marker = OMISSION_MARKER.format(omitted=dropped)
        room = max(limit - len(marker), 0)
        head_text, tail_text = head_text[: room // 2], tail_text[-(room - room // 2) :]
        return head_text + marker + tail_text, True


class CaptureBroken(Exception):
    """The capture's pipes or thread are gone (user code closed them): build a new one."""


class OutputCapture:
    """Standard output and error of every run, drained by one thread for the worker's life.

    Starting a thread and making pipes for each run cost more than a trivial run
    itself.  Here the pipes and the draining thread stay: fds 1 and 2 point at the
    pipes while a run lasts, and the thread moves whatever arrives into the run's
    ``BoundedBuffer``s, so a writer never blocks on a full pipe.  At the end of a run
    the caller takes what is left in the pipes itself: whatever a finished ``write``
    put there is there, so no waiting is needed.  A process the run left behind may
    keep writing; between runs that output is read and dropped, and during a later run
    it is that run's, as in Jupyter.  A streamed run's output also goes to its
    ``OutputStream`` (sandbox/output_stream.py), which the thread sends from as well.

    The thread is a bare ``_thread`` one: ``threading.Thread`` runs a few dozen
    functions of ``threading.py`` to start, and in a fork of the zygote each object they
    touch copies a shared page (figures: docs/decisions.md).
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._lock = _thread.allocate_lock()
        # Held by the thread while it runs: free again means it has ended.
        self._alive = _thread.allocate_lock()
        self._buffers: list[BoundedBuffer] | None = None
        self._stream: OutputStream | None = None
        self._read_fds: list[int] = []
        self._write_fds: list[int] = []
        try:
            for _ in range(2):
                read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(read_fd, False)
                self._read_fds.append(read_fd)
                self._write_fds.append(write_fd)
            self._identity = [_identity(fd) for fd in self._read_fds + self._write_fds]
            self._alive.acquire()
            try:
                _thread.start_new_thread(self._drain_forever, ())
            except BaseException:
                self._alive.release()
                raise
        except BaseException:
            self.close()
            raise

    @property
    def intact(self) -> bool:
        """Whether the pipes are still this capture's and its thread still drains them."""
        if not self._alive.locked():
            return False
        try:
            return [_identity(fd) for fd in self._read_fds + self._write_fds] == self._identity
        except OSError:
            return False

    def _drain_forever(self) -> None:
        try:
            poller = select.poll()
            for fd in self._read_fds:
                poller.register(fd, select.POLLIN)
            # While a streamed run's output is gathered: when it is due to be sent.
            due_ms: int | None = None
            while True:
                events = poller.poll(due_ms)
                if any(event & _GONE for _fd, event in events):
                    return  # user code closed a pipe: ``intact`` is now false
                with self._lock:
                    self._take_available()
                    due_ms = None
                    if self._stream is not None and (due := self._stream.due_in()) is not None:
                        due_ms = max(1, int(due * 1000))
        finally:
            self._alive.release()

    def _take_available(self) -> None:
        """Read what the pipes hold now, at most ``_TAKE_BYTES`` from each.

        Bounded: a process writing without pause must not keep the lock (and so the end
        of a run) waiting for the pipe to run dry.
        """
        for index, fd in enumerate(self._read_fds):
            taken = 0
            while taken < _TAKE_BYTES:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return
                if not data:
                    break
                taken += len(data)
                if self._buffers is not None:
                    self._buffers[index].write(data)
                    if self._stream is not None:
                        self._stream.feed(index, data)

    def begin(self, stream: OutputStream | None = None) -> tuple[int, int]:
        """Open a run's buffers, and its stream if it streams; returns the write ends to
        point fds 1 and 2 at."""
        with self._lock:
            self._take_available()  # what arrived between runs is not this run's
            self._buffers = [BoundedBuffer(self._keep) for _ in self._read_fds]
            self._stream = stream
        return self._write_fds[0], self._write_fds[1]

    def flush_stream(self) -> None:
        """Send what the run wrote so far: what comes next (a display) then follows it."""
        with self._lock:
            self._take_available()
            if self._stream is not None:
                self._stream.flush()

    def end(self) -> list[BoundedBuffer]:
        """Close the run's buffers, with everything written to the pipes so far.

        Call it once fds 1 and 2 no longer point at the pipes.
        """
        with self._lock:
            self._take_available()
            buffers, self._buffers = self._buffers, None
            self._stream = None
        if buffers is None:
            raise CaptureBroken("end() without begin()")
        return buffers

    def close(self) -> None:
        """Close the pipes that are still this capture's (user code may reuse the numbers)."""
        fds = self._read_fds + self._write_fds
        for fd, identity in zip(fds, getattr(self, "_identity", [None] * len(fds)), strict=True):
            with contextlib.suppress(OSError):
                if identity is None or _identity(fd) == identity:
                    os.close(fd)
        self._read_fds, self._write_fds = [], []


# At most this much is read from one pipe while the lock is held: more than a pipe
# holds (64 KiB by default, 1 MiB at most without privilege).
_TAKE_BYTES = 2 * 1024 * 1024
# Poll results that mean a pipe is no longer ours to read.
_GONE = select.POLLNVAL | select.POLLERR | select.POLLHUP


def _identity(fd: int) -> tuple[int, int]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino
