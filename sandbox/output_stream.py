"""A streamed run's stdout and stderr, sent to the service as they are produced.

The capture's draining thread hands every read to ``feed`` and asks ``due_in`` after
each: what arrived is gathered for up to ``COALESCE_S`` (or ``CHUNK_BYTES``) and sent
as one ``OutputChunk`` per stream, the first at once.

What is cut from a reply is cut from the stream, so each stream's chunks add up to
exactly the reply's text.  While the run goes, a stream sends what the reply will
surely hold whatever comes next: its first ``live_characters(limit)`` characters, the
head a cut reply keeps.  At the end ``finish`` sends the rest of the reply's text: the
remainder of an output that fit, or the omission marker and the tail.  A 60 MB print
thus sends ``limit`` characters per stream, as its reply holds.
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
# A frame's text at most: one frame stays far below the frame cap, even when every
# character becomes a six-character JSON escape.
CHUNK_BYTES = 64 * 1024
_NAMES: tuple[Literal["stdout", "stderr"], ...] = ("stdout", "stderr")
# The longest omission marker a run can need (no run writes 10**19 bytes).
_MARKER_ROOM = len(OMISSION_MARKER.format(omitted=10**19))


def live_characters(limit: int) -> int:
    """How much of a stream is sent as it comes: no cut of it to ``limit`` keeps less."""
    return max((limit - _MARKER_ROOM) // 2, 0)


def display_size(output: protocol.RichOutput) -> int:
    """What one display counts against a run's room for displays, on either side."""
    return len(output.model_dump_json())


class OutputStream:
    """One streamed run's output on its way to the service, bounded per stream.

    ``send`` writes one frame to the channel; it is called from the draining thread
    and the worker's main thread alike, so it must hold the channel's lock.
    """

    def __init__(
        self,
        run_id: int,
        limit: int,
        send: Callable[[protocol.OutputChunk | protocol.DisplayOutput], None],
        display_room: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_id = run_id
        self._limit = limit
        self._send = send
        self._clock = clock
        # Bytes still taken as they come: the head a BoundedBuffer of ``limit`` keeps,
        # whose decoding the reply's text starts with.
        self._live_bytes = [limit, limit]
        self._live_characters = [live_characters(limit)] * 2
        self._pending = [bytearray(), bytearray()]
        # Incremental: a character split between two reads is sent whole.
        self._decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in _NAMES]
        self._sent: list[list[str]] = [[], []]
        self._last_sent = float("-inf")
        # Characters of displays this run may still stream (the reply's cap): a loop of
        # display() calls must not flood the channel either.
        self._display_room = display_room
        # Taken to send a display and to end the stream: a display from a thread of the
        # user's never follows the end, and so never follows the reply.
        self._ending = _thread.allocate_lock()
        self._ended = False
        self.broken = False  # the channel failed: the reply's send will say so

    def feed(self, index: int, data: bytes) -> None:
        """Take what stream ``index`` (0 stdout, 1 stderr) wrote; beyond its head, nothing."""
        room = self._live_bytes[index]
        if room > 0:
            part = data[:room]
            self._pending[index] += part
            self._live_bytes[index] = room - len(part)

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
        """Send everything gathered so far that the reply will surely hold."""
        for index, pending in enumerate(self._pending):
            if not pending:
                continue
            text = self._decoders[index].decode(pending)[: self._live_characters[index]]
            pending.clear()
            self._live_characters[index] -= len(text)
            if self._live_characters[index] == 0:
                self._live_bytes[index] = 0  # the rest waits for the end
            self._sent[index].append(text)
            self._emit(index, text)
        self._last_sent = self._clock()

    def send_display(self, output: protocol.RichOutput) -> None:
        """Send one of the run's outputs, while the run lasts and its room does."""
        size = display_size(output)
        with self._ending:
            if self._ended or self.broken or size > self._display_room:
                return
            self._display_room -= size
            try:
                self._send(protocol.DisplayOutput(run_id=self._run_id, output=output))
            except OSError:
                self.broken = True

    def finish(self, buffers: list[BoundedBuffer]) -> None:
        """At the run's end: send the rest of each stream's text as the reply holds it."""
        with self._ending:
            self._ended = True
        self.flush()
        for index, buffer in enumerate(buffers):
            text, _cut = buffer.text(self._limit)
            sent = "".join(self._sent[index])
            # Always so (see live_characters); were it not, the reply still has it all.
            if text.startswith(sent):
                self._emit(index, text[len(sent) :])

    def _emit(self, index: int, text: str) -> None:
        for start in range(0, len(text), CHUNK_BYTES):
            if self.broken:
                return
            chunk = protocol.OutputChunk(
                run_id=self._run_id, name=_NAMES[index], text=text[start : start + CHUNK_BYTES]
            )
            try:
                self._send(chunk)
            except OSError:
                self.broken = True
