"""A run read while it goes: its output as it comes, idle beats, and last its reply.

The SSE response (service/streaming.py) and the MCP tools' notifications
(service/mcp_progress.py) both read a run this way.  What it holds is one event at a
time: the run's own bounded subscriber queue (sandbox/run.py) is the buffer, so a slow
reader makes only itself wait, never the run.

A reader that goes away (a client that hung up, a cancelled MCP call) calls ``close``:
a run still going is abandoned, as a cancelled caller abandons it (interrupt, grace,
kill), and its tenant's slot comes back when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from sandbox.run import OutputDisplay, OutputDropped, OutputText, Run, RunEvent, RunFinished
from service.replies import Reply

RunOutput = OutputText | OutputDisplay | OutputDropped


class Idle:
    """Nothing came for the reader's idle interval: time for a heartbeat."""


IDLE = Idle()
StreamItem = RunOutput | Idle | Reply


class RunStream:
    """A started run's events for one reader; ``items`` ends with the run's ``Reply``.

    ``finish`` gives the reply once the run has ended (it raises the ServiceError a
    plain request would meet); ``abandon`` ends a run nobody reads any more.
    """

    def __init__(
        self,
        run: Run | None,
        finish: Callable[[], Awaitable[Reply]],
        abandon: Callable[[], None],
    ) -> None:
        self.timeout = run.timeout if run is not None else None
        self._finish = finish
        self._abandon = abandon
        self._events: AsyncIterator[RunEvent] | None = None
        self._next: asyncio.Task[RunEvent | None] | None = None
        if run is not None:
            self._events = run.events()  # subscribed now: nothing published is missed
            self._next = asyncio.ensure_future(self._pull())

    async def _pull(self) -> RunEvent | None:
        assert self._events is not None
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            return None

    async def items(self, idle_s: float) -> AsyncIterator[StreamItem]:
        """The run's output as it comes, ``IDLE`` after each ``idle_s`` without any, then
        the reply a plain request gets."""
        while self._next is not None:
            done, _ = await asyncio.wait({self._next}, timeout=idle_s)
            if not done:
                yield IDLE
                continue
            event = self._next.result()
            # The next event is read while this one is handed on: one event held, at most.
            self._next = asyncio.ensure_future(self._pull()) if event is not None else None
            if event is not None and not isinstance(event, RunFinished):
                yield event
        yield await self._finish()

    def close(self) -> None:
        """The reader is gone: stop reading, and abandon the run if it still goes."""
        if self._next is not None:
            self._next.cancel()
            self._next = None
        self._abandon()
