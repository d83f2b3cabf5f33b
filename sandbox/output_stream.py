"""A streamed run's stdout and stderr, sent to the service as they are produced.

The capture's draining thread hands every read to ``feed`` and asks ``due_in`` after
each: what arrived is gathered for up to ``COALESCE_S`` (or ``CHUNK_BYTES``) and sent
as one ``OutputChunk`` per stream, the first at once.  What is streamed obeys the
reply's cap: the head of each stream (its first ``keep`` bytes, what the run's
``BoundedBuffer`` keeps as its head) as it comes, then nothing until the run ends,
when ``finish`` sends the rest (the whole of it, or the omission marker and the tail
the reply holds).  A 60 MB print thus sends about twice ``keep`` per stream.
"""

from __future__ import annotations

import _thread
import codecs
import time
from collections.abc import Callable
from typing import Literal

from sandbox import protocol
from sandbox.output import OMISSION_MARKER, BoundedBuffer

# How long output is gathered into one frame after the last one went.
COALESCE_S = 0.05
# A frame's text at most, in bytes of output: one frame stays far below the frame cap
# even when every byte becomes a six-character JSON escape.
CHUNK_BYTES = 64 * 1024
_NAMES: tuple[Literal["stdout", "stderr"], ...] = ("stdout", "stderr")


class OutputStream:
    """One streamed run's output on its way to the service, bounded per stream.

    ``send`` writes one frame to the channel; it is called from the draining thread
    and the worker's main thread alike, so it must hold the channel's lock.
    """

    def __init__(
        self,
        run_id: int,
        keep: int,
        send: Callable[[protocol.OutputChunk | protocol.DisplayOutput], None],
        display_room: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_id = run_id
        self._keep = keep
        self._send = send
        # Characters of displays this run may still stream (the reply's cap): a loop of
        # display() calls must not flood the channel either.
        self._display_room = display_room
        # Taken to send a display and to end the stream: a display from a thread of the
        # user's never follows the end, and so never follows the reply.
        self._ending = _thread.allocate_lock()
        self._ended = False
        self._clock = clock
        self._head_room = [keep, keep]
        self._pending = [bytearray(), bytearray()]
        # Incremental: a character split between two reads is sent whole.
        self._decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in _NAMES]
        self._last_sent = float("-inf")
        self.broken = False  # the channel failed: the reply's send will say so

    def feed(self, index: int, data: bytes) -> None:
        """Take what stream ``index`` (0 stdout, 1 stderr) wrote; beyond its head, nothing."""
        room = self._head_room[index]
        if room > 0:
            part = data[:room]
            self._pending[index] += part
            self._head_room[index] = room - len(part)

    def due_in(self) -> float | None:
        """Send what is due; the seconds until the rest is, or None if nothing waits."""
        if not (self._pending[0] or self._pending[1]):
            return None
        wait = self._last_sent + COALESCE_S - self._clock()
        if wait > 0 and max(len(self._pending[0]), len(self._pending[1])) < CHUNK_BYTES:
            return wait
        self.flush()
        return None

    def flush(self) -> None:
        """Send everything gathered so far."""
        for index, pending in enumerate(self._pending):
            decoder = self._decoders[index]
            for start in range(0, len(pending), CHUNK_BYTES):
                self._emit(index, decoder.decode(pending[start : start + CHUNK_BYTES]))
            pending.clear()
        self._last_sent = self._clock()

    def send_display(self, output: protocol.RichOutput) -> None:
        """Send one of the run's outputs, while the run lasts and its room does."""
        message = protocol.DisplayOutput(run_id=self._run_id, output=output)
        size = len(message.model_dump_json())
        with self._ending:
            if self._ended or self.broken or size > self._display_room:
                return
            self._display_room -= size
            try:
                self._send(message)
            except OSError:
                self.broken = True

    def finish(self, buffers: list[BoundedBuffer]) -> None:
        """At the run's end: send what is left, then each stream's rest beyond its head."""
        with self._ending:
            self._ended = True
        self.flush()
        for index, buffer in enumerate(buffers):
            decoder = self._decoders[index]
            dropped, tail = buffer.beyond_head()
            if dropped:
                rest = decoder.decode(b"", final=True) + OMISSION_MARKER.format(omitted=dropped)
                rest += tail.decode("utf-8", errors="replace")
            else:
                rest = decoder.decode(tail, final=True)
            for start in range(0, len(rest), CHUNK_BYTES):
                self._emit(index, rest[start : start + CHUNK_BYTES])

    def _emit(self, index: int, text: str) -> None:
        if not text or self.broken:
            return
        try:
            self._send(protocol.OutputChunk(run_id=self._run_id, name=_NAMES[index], text=text))
        except OSError:
            self.broken = True
