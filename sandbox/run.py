"""A run: one request to a session's worker, owned by its session from start to end.

The session starts each run as a task of its own and holds its run lock for the run's
whole life: the exchange with the worker, the wall clock, the sweep of what the run
left behind, and the recovery of a worker that failed.  The task, not its callers,
releases the lock, so nothing a caller does can cut any of that short.

Callers ``await run.outcome()``, which only the task completes: a caller that is
cancelled (an MCP client's cancellation, a client that hung up) abandons the run, which
ends it as a timeout does (interrupt, then kill after the grace period).  Whatever the run holds
beyond the session (a tenant's run slot, say) is handed back through ``when_done``.

A run publishes events as it goes: output text and displays while it runs (when it
was started to stream), then ``RunFinished``.  Subscribers read them and never change
the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox import protocol
from sandbox.output_stream import display_size
from sandbox.policy import Limits

log = logging.getLogger("codesherpa")

Request = protocol.RunPython | protocol.RunCommand
# Why a run was interrupted: the wall clock, a request (POST …/interrupt), or its caller
# went away.  Only the first two are seen in a reply.
InterruptReason = Literal["timeout", "request", "cancelled"]
# An interrupt that ends the run for sure: ignored for the grace period, the worker dies.
STOPPING: frozenset[InterruptReason] = frozenset({"timeout", "cancelled"})


@dataclass
class RunOutcome:
    reply: protocol.RunReply
    restarted: bool = False
    # The namespace was lost at some point since the last run that succeeded: a
    # NameError now most likely means setup code must run again.
    since_restart: bool = False
    duration_ms: float = 0.0
    limit: protocol.LimitName | None = None
    interrupted_by: InterruptReason | None = None


@dataclass(frozen=True)
class RunFinished:
    """The last event of a run that produced an outcome."""

    outcome: RunOutcome


@dataclass(frozen=True)
class OutputText:
    """Text a streamed run wrote to its stdout or stderr, in the order written."""

    name: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True)
class OutputDisplay:
    """An output a streamed run produced: a display(), a figure, the cell's value."""

    output: protocol.RichOutput


@dataclass(frozen=True)
class OutputDropped:
    """A subscriber fell behind: this many characters of events were not kept for it."""

    characters: int


RunEvent = OutputText | OutputDisplay | OutputDropped | RunFinished
_END = object()  # closes a subscriber's stream
# What one subscriber may hold unread, in characters of output: beyond it a subscriber
# that reads slowly (an SSE client on a slow link) misses output rather than growing
# the service's memory; a 60 MB print then costs it this much at most.
SUBSCRIBER_BUDGET_CHARS = 1_000_000
# What an event costs a subscriber's budget beyond its text: a worker sending a flood of
# empty chunks must fill it too.
_EVENT_COST = 100


def _characters(event: OutputText | OutputDisplay) -> int:
    if isinstance(event, OutputText):
        return len(event.text)
    return display_size(event.output)


class _Subscriber:
    """One reader's queue of events, bounded by the characters it holds unread."""

    def __init__(self, budget: int) -> None:
        # Each event with what it costs the budget while unread.
        self.queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        self._budget = budget
        self._held = 0
        self._dropped = 0  # characters not kept since the reader last fell behind

    def offer(self, event: object) -> None:
        cost = 0
        if isinstance(event, OutputText | OutputDisplay):
            characters = _characters(event)
            cost = characters + _EVENT_COST
            if self._held + cost > self._budget:
                self._dropped += characters
                return
            self._held += cost
        if self._dropped:  # told before the next event it does get, the end's included
            # Not counted: one at most between two events that are.
            self.queue.put_nowait((0, OutputDropped(self._dropped)))
            self._dropped = 0
        self.queue.put_nowait((cost, event))

    async def take(self) -> object:
        cost, event = await self.queue.get()
        self._held -= cost
        return event


@dataclass(slots=True)
class Run:
    """One run's request and its life; made and started by a Session only."""

    request: Request
    timeout: float
    interrupted_by: InterruptReason | None = None
    # Set once the request went to the worker: a run abandoned before that ran nothing.
    sent: bool = False
    abandoned: bool = False
    # While the run waits for its reply: how to interrupt the worker (see Session).
    on_interrupt: Callable[[InterruptReason], None] | None = None
    _task: asyncio.Task[RunOutcome | None] | None = None
    # One future per waiting caller, each settled by the run's task as it ends: a caller
    # wakes one loop step after (a shield of a shared future took two), and a caller
    # cancelled meanwhile cancels only its own.
    _waiters: list[asyncio.Future[RunOutcome]] = field(default_factory=list)
    _outcome: RunOutcome | None = None
    _failure: Exception | None = None
    _on_end: list[Callable[[], None]] = field(default_factory=list)
    subscriber_budget: int = SUBSCRIBER_BUDGET_CHARS
    # The caps a streamed run's worker must keep to (sandbox/output_stream.py): set by
    # the session, and counted against as frames come.
    limits: Limits | None = None
    _streamed: list[int] | None = None  # characters of stdout, stderr, displays
    _subscribers: list[_Subscriber] = field(default_factory=list)

    def start(self, life: Coroutine[Any, Any, RunOutcome]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._live(life))

    async def _live(self, life: Coroutine[Any, Any, RunOutcome]) -> RunOutcome | None:
        try:
            outcome = await life
        except asyncio.CancelledError:  # the loop is going away: so are its callers
            for waiter in self._waiters:
                waiter.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the callers that still wait
            self._failure = exc
            waiting = [waiter for waiter in self._waiters if not waiter.done()]
            for waiter in waiting:
                waiter.set_exception(exc)
            if not waiting:  # nobody will read it there: the log does
                log.warning("a run whose caller went away failed: %s", exc)
            return None
        else:
            self._outcome = outcome
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(outcome)
            return outcome
        finally:
            self._waiters.clear()
            for subscriber in self._subscribers:
                subscriber.offer(_END)
            for callback in self._on_end:
                try:
                    callback()
                except Exception:  # one holder's failure must not keep the others'
                    log.exception("a run's end callback failed")

    @property
    def task(self) -> asyncio.Task[RunOutcome | None]:
        assert self._task is not None, "a run is started by its session"
        return self._task

    def done(self) -> bool:
        return self.task.done()

    async def outcome(self) -> RunOutcome:
        """The run's outcome; a caller cancelled meanwhile abandons the run."""
        task = self.task
        if task.done():
            if self._failure is not None:
                raise self._failure
            if self._outcome is None:
                raise asyncio.CancelledError  # the run was cancelled with its loop
            return self._outcome
        waiter: asyncio.Future[RunOutcome] = task.get_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # settled as the caller went: nobody else reads it
            self.abandon()
            raise

    def abandon(self) -> None:
        """Nobody waits for this run any more: end it as a timed-out run is ended."""
        self.abandoned = True
        self.interrupt("cancelled")

    def interrupt(self, reason: InterruptReason) -> bool:
        """Interrupt the run if its worker is running it; whether that was so."""
        if self.done() or self.on_interrupt is None:
            return False
        self.on_interrupt(reason)
        return True

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the run has ended, however it ended."""
        if self.done():
            callback()
        else:
            self._on_end.append(callback)

    def publish(self, event: RunEvent) -> None:
        """Hand ``event`` to every subscriber; one that fell behind misses output."""
        for subscriber in self._subscribers:
            subscriber.offer(event)

    def take_output(self, message: protocol.StreamedOutput) -> bool:
        """Publish a frame of output the worker streamed; False if it should not have.

        Only a run started to stream, and only its own run_id, may send output, and no
        more than its reply could hold: a stream cut as the reply is (see
        sandbox/output_stream.py), displays within the reply's cap.
        """
        if not self.request.stream or message.run_id != self.request.run_id:
            return False
        limits = self.limits
        if isinstance(message, protocol.OutputChunk):
            slot, size = (0 if message.name == "stdout" else 1), len(message.text)
            room = limits.output_chars if limits is not None else 0
        else:
            slot, size = 2, display_size(message.output)
            # Measured again here, so a little slack: the worker's own count is exact.
            room = 2 * limits.reply_chars if limits is not None else 0
        if self._streamed is None:
            self._streamed = [0, 0, 0]
        self._streamed[slot] += size
        if self._streamed[slot] > room:
            return False
        if self._subscribers:  # else nobody reads it: dropped unbuilt
            if isinstance(message, protocol.OutputChunk):
                self.publish(OutputText(message.name, message.text))
            else:
                self.publish(OutputDisplay(message.output))
        return True

    @property
    def watched(self) -> bool:
        """Whether anyone reads the run's events (else nothing need be published)."""
        return bool(self._subscribers)

    def events(self) -> AsyncIterator[RunEvent]:
        """The events published from this call on, until the run ends.

        Subscribed here, not at the first read: the run's task can publish output its
        worker sent before the reader's task first runs (uvloop runs I/O callbacks
        before the tasks scheduled with them).
        """
        subscriber = _Subscriber(self.subscriber_budget)
        if not self.done():
            self._subscribers.append(subscriber)  # closed by the run's end
        return self._read(subscriber)

    async def _read(self, subscriber: _Subscriber) -> AsyncIterator[RunEvent]:
        if subscriber not in self._subscribers:
            return
        try:
            while (event := await subscriber.take()) is not _END:
                assert isinstance(event, OutputText | OutputDisplay | OutputDropped | RunFinished)
                yield event
        finally:
            self._subscribers.remove(subscriber)
