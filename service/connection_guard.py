"""Deadlines and a cap for HTTP connections, so slow or idle clients cannot take the service.

uvicorn times out only idle keep-alive connections: a connection that sends half a
request head, a byte a second, or a body that stops, is held open for good, and
``limit_concurrency`` answers 503 only once a head has arrived, without freeing a
descriptor.  ``guarded_protocol`` wraps uvicorn's HTTP protocol class (h11 or
httptools) with three rules:

* **Deadlines.**  The whole request head must arrive within ``header_timeout_s`` of the
  connection opening or of the previous response (a byte-at-a-time sender is cut off
  there).  A request body, or a response the client does not read, that makes no
  progress for ``stall_timeout_s`` ends the connection; time the service itself holds up
  (a body it has not asked for yet) does not count against the client.
* **A cap with eviction.**  At ``max_connections``, a new connection takes the place of
  the one that has waited longest on its client: first those still sending a request
  head (or idle between requests), then those that have waited at least a second for
  the rest of their body or for the client to read the response.  Only
  when every connection is being served does the new one get a JSON 503 (after its
  head, from a bounded pool), so thousands of half-open connections cannot keep
  ``/livez`` or anyone else out.
* Nothing is logged per connection: a flood would only move to the log.

The numbers and how the cap is derived from the descriptor limit are in
``service/descriptors.py`` and SECURITY.md.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from service.descriptors import REFUSED_POOL, connection_budget, raise_open_files_limit
from service.log_limits import limit_accept_error_logs
from service.settings import Settings

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol as UvicornHttpProtocol
else:
    # At run time the guard is mixed in before the real class (h11 or httptools).
    UvicornHttpProtocol = object


class Waiting(enum.Enum):
    """Whom a connection is waiting for; the order is the order of eviction."""

    HEAD = "head"  # the client: a request head not complete yet (new, or between requests)
    CLIENT = "client"  # the client: the rest of a body, or to read the response
    SERVICE = "service"  # the service: the request is being worked on


class Evictable(Protocol):
    def evict(self) -> None: ...


# A request's body often follows its head in a separate packet: a connection waits this
# long on its client's body or reading before a newcomer may take its place.
CLIENT_GRACE_S = 1.0


class ConnectionTable:
    """The admitted connections by whom they wait for, and since when, oldest first; the cap."""

    def __init__(
        self,
        max_connections: int,
        refused_pool: int = REFUSED_POOL,
        client_grace_s: float = CLIENT_GRACE_S,
    ) -> None:
        self.max_connections = max_connections
        self.refused_pool = refused_pool
        self.client_grace_s = client_grace_s
        self._waiting_for: dict[Evictable, Waiting] = {}
        self._by_wait: dict[Waiting, dict[Evictable, float]] = {wait: {} for wait in Waiting}
        self._refused: dict[Evictable, None] = {}
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._waiting_for)

    def count(self, waiting: Waiting) -> int:
        return len(self._by_wait[waiting])

    def admit(self, connection: Evictable, now: float) -> bool:
        """Admit a new connection, evicting one to make room; False: refuse it with a 503."""
        if len(self._waiting_for) >= self.max_connections:
            victim = self._longest_waiting_on_client(now)
            if victim is None:
                self._refuse(connection)
                return False
            self.discard(victim)
            self.evicted += 1
            victim.evict()
        self._waiting_for[connection] = Waiting.HEAD
        self._by_wait[Waiting.HEAD][connection] = now
        return True

    def move(self, connection: Evictable, waiting: Waiting, now: float) -> None:
        before = self._waiting_for.get(connection)
        if before is None or before is waiting:
            return  # refused, or already gone
        del self._by_wait[before][connection]
        self._by_wait[waiting][connection] = now
        self._waiting_for[connection] = waiting

    def discard(self, connection: Evictable) -> None:
        before = self._waiting_for.pop(connection, None)
        if before is not None:
            del self._by_wait[before][connection]
        self._refused.pop(connection, None)

    def _longest_waiting_on_client(self, now: float) -> Evictable | None:
        for connection in self._by_wait[Waiting.HEAD]:
            return connection
        for connection, since in self._by_wait[Waiting.CLIENT].items():
            return connection if now - since >= self.client_grace_s else None
        return None

    def _refuse(self, connection: Evictable) -> None:
        self.refused += 1
        if len(self._refused) >= self.refused_pool:
            oldest = next(iter(self._refused))
            del self._refused[oldest]
            oldest.evict()
        self._refused[connection] = None


@dataclass(frozen=True)
class ClientDeadlines:
    header_timeout_s: float
    stall_timeout_s: float


def _json_reply(status_line: bytes, error: str, suggestion: str, code: str) -> bytes:
    body = json.dumps({"error": error, "suggestion": suggestion, "code": code}).encode()
    head = (
        b"HTTP/1.1 " + status_line + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n"
    )
    return head + b"\r\n" + body


BUSY_BODY = json.dumps(
    {
        "error": "the service has no room for another connection",
        "suggestion": "Retry in a few seconds.",
        "code": "server_busy",
    }
).encode()


async def answer_busy(scope: Any, receive: Any, send: Any) -> None:
    """What a connection over the cap gets, in place of the service, once its head is in."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BUSY_BODY)).encode()),
                (b"retry-after", b"2"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BUSY_BODY, "more_body": False})


def _awaits_continue(cycle: Any) -> bool:
    # h11's cycle and httptools' cycle name it differently; either is cleared once the
    # service asks for the body and "100 Continue" has gone out.
    return bool(
        getattr(cycle, "waiting_for_100_continue", False)
        or getattr(cycle, "expect_100_continue", False)
    )


class GuardedConnection(UvicornHttpProtocol):
    """Mixed in before a uvicorn HTTP protocol class; see the module's docstring."""

    table: ClassVar[ConnectionTable]
    deadlines: ClassVar[ClientDeadlines]

    _waiting: Waiting | None = None
    # One timer per connection, moved only when a deadline comes sooner than it: a
    # request that takes the connection from its head to served and back then sets two
    # attributes, not a timer (cancelling and arming one per transition was half of
    # the guard's cost per trivial run).
    _deadline: asyncio.TimerHandle | None = None
    _due: float | None = None  # when the current deadline falls; None while served
    _overdue: Callable[[], None] | None = None  # what happens then
    _last_progress = 0.0
    _head_bytes_received = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.table.admit(self, self.loop.time()):
            # uvicorn runs self.app for each request it parses: this one gets the 503.
            self.app = answer_busy
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.table.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_progress = self.loop.time()
        self._head_bytes_received = True
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._follow()

    def resume_writing(self) -> None:
        self._last_progress = self.loop.time()
        super().resume_writing()
        self._follow()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        # The connection now belongs to the WebSocket protocol; it no longer reports here.
        self._cancel_deadline()
        self.table.discard(self)
        super().handle_websocket_upgrade(*args)

    def evict(self) -> None:
        self._cancel_deadline()
        self.transport.abort()

    def _waiting_for(self) -> Waiting:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return Waiting.HEAD
        if self.flow.write_paused or cycle.more_body:
            return Waiting.CLIENT
        return Waiting.SERVICE

    def _follow(self) -> None:
        waiting = self._waiting_for()
        if waiting is self._waiting:
            return
        self._waiting = waiting
        now = self.loop.time()
        self.table.move(self, waiting, now)
        if waiting is Waiting.HEAD:
            self._head_bytes_received = False
            self._set_deadline(now + self.deadlines.header_timeout_s, self._head_overdue)
        elif waiting is Waiting.CLIENT:
            self._last_progress = now
            self._set_deadline(now + self.deadlines.stall_timeout_s, self._check_stall)
        else:
            self._due = None  # a timer still set finds nothing due, and is not set again

    def _set_deadline(self, due: float, overdue: Callable[[], None]) -> None:
        self._due = due
        self._overdue = overdue
        timer = self._deadline
        if timer is not None and timer.when() <= due:
            return  # it fires first, and moves itself to ``due`` then
        if timer is not None:
            timer.cancel()
        self._deadline = self.loop.call_at(due, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        due, overdue = self._due, self._overdue
        if due is None or overdue is None:
            return
        if self.loop.time() < due:
            self._deadline = self.loop.call_at(due, self._on_deadline)
            return
        self._due = None
        overdue()

    def _cancel_deadline(self) -> None:
        self._due = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_overdue(self) -> None:
        if self.transport.is_closing():
            return
        if self._head_bytes_received:
            timeout = self.deadlines.header_timeout_s
            self.transport.write(
                _json_reply(
                    b"408 Request Timeout",
                    f"the request head did not arrive within {timeout:g} s",
                    "Send the whole request at once.",
                    "request_timeout",
                )
            )
        # An idle connection that never sent a byte is closed without a word.
        self.transport.close()

    def _service_holds_up(self) -> bool:
        if self.flow.write_paused:
            return False  # the client does not read what the service writes
        return self.flow.read_paused or _awaits_continue(self.cycle)

    def _check_stall(self) -> None:
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._service_holds_up():
            self._last_progress = now
        idle = now - self._last_progress
        limit = self.deadlines.stall_timeout_s
        if idle < limit:
            self._set_deadline(now + limit - idle, self._check_stall)
            return
        if self.cycle is not None and not self.cycle.response_started:
            self.transport.write(
                _json_reply(
                    b"408 Request Timeout",
                    f"the request body stopped arriving: nothing for {limit:g} s",
                    "Send the body without pauses, or upload large data in smaller files.",
                    "request_timeout",
                )
            )
            self.transport.close()
        else:
            # A response the client stopped reading: what is buffered cannot be sent.
            self.transport.abort()


def guarded_protocol(
    base: type[asyncio.Protocol],
    max_connections: int,
    header_timeout_s: float,
    stall_timeout_s: float,
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) under the cap and deadlines, for ``http=``."""
    attributes = {
        "table": ConnectionTable(max_connections),
        "deadlines": ClientDeadlines(header_timeout_s, stall_timeout_s),
    }
    guarded: type[asyncio.Protocol] = type(
        f"Guarded{base.__name__}", (GuardedConnection, base), attributes
    )
    return guarded


def guard_connections(settings: Settings, max_sessions: int) -> dict[str, Any]:
    """Raise the descriptor limit, log the budget, and give uvicorn.run its options.

    ValueError with a sentence when the descriptor limit leaves too few connections.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    budget = connection_budget(
        raise_open_files_limit(), max_sessions, settings.fd_reserve, settings.max_connections
    )
    log = logging.getLogger("codesherpa.connections")
    log.info("at most %s", budget.describe())
    if budget.overcommitted():
        log.warning(
            "CODESHERPA_MAX_CONNECTIONS leaves less than the reserve: a flood of "
            "connections can take the descriptors sessions need"
        )
    limit_accept_error_logs()
    protocol = guarded_protocol(
        AutoHTTPProtocol,
        budget.max_connections,
        settings.header_timeout_s,
        settings.stall_timeout_s,
    )
    # asyncio accepts up to ``backlog`` connections at a time: the budget counts them.
    return {"http": protocol, "backlog": budget.accept_batch}
