"""Bounded output: keep the head and the tail of a stream while it is produced.

An infinite ``os.write(1, ...)`` loop must not grow any process's memory, so the
collector never holds more than ``2 * keep`` bytes whatever flows through it, and
counts the rest.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Sequence

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


class StreamCollector:
    """Drain several pipes into ``BoundedBuffer``s on one background thread.

    One thread for stdout and stderr together: starting a thread is a visible share of
    a trivial run's cost.
    """

    _POLL_MS = 50

    def __init__(self, read_fds: Sequence[int], keep: int) -> None:
        self._fds = list(read_fds)
        self.buffers = [BoundedBuffer(keep) for _ in self._fds]
        self._finishing = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        poller = select.poll()
        buffer_of = dict(zip(self._fds, self.buffers, strict=True))
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        while buffer_of:
            events = poller.poll(self._POLL_MS)
            if self._finishing.is_set() and (not events or time.monotonic() > self._deadline):
                return
            for fd, _event in events:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if data:
                    buffer_of[fd].write(data)
                else:
                    # Every writer is gone: this stream is complete.
                    poller.unregister(fd)
                    del buffer_of[fd]

    def finish(self, linger_s: float = 0.2) -> list[BoundedBuffer]:
        """Stop once the writers are gone or ``linger_s`` passes with the pipes quiet.

        A background process that keeps a write end open must not hold the reply.
        """
        self._deadline = time.monotonic() + linger_s
        self._finishing.set()
        self._thread.join()
        for fd in self._fds:
            os.close(fd)
        return self.buffers
