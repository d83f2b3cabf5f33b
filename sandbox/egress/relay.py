"""Moving bytes between a session's connection and the destination, counted, bounded
by the session's byte budget and an idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from sandbox.egress.budget import SessionBudget
from sandbox.egress.http_head import BadRequest, ResponseHeadRewriter
from sandbox.policy.network import Network

CHUNK = 64 * 1024


@dataclass
class Traffic:
    up: int = 0  # session → destination
    down: int = 0  # destination → session
    cut: str | None = None  # why the proxy ended it early, if it did
    last_active: float = 0.0  # the loop's time of the last byte either way


async def _drained(sink: asyncio.StreamWriter, limits: Network, traffic: Traffic) -> bool:
    """Wait for the sink to take what it was given, as long as the connection is not
    idle: a peer that never reads must not pin the connection (and the other one)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await asyncio.wait_for(sink.drain(), limits.idle_timeout_s)
        except TimeoutError:
            if loop.time() - traffic.last_active < limits.idle_timeout_s:
                continue
            traffic.cut = traffic.cut or "network.idle_timeout_s"
            return False
        return True


async def _pump(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    budget: SessionBudget,
    limits: Network,
    traffic: Traffic,
    upward: bool,
    limit: int | None,
    rewriter: ResponseHeadRewriter | None = None,
) -> None:
    """Copy until EOF (or ``limit`` bytes); then half-close the sink."""
    loop = asyncio.get_running_loop()
    remaining = limit
    while remaining is None or remaining > 0:
        want = CHUNK if remaining is None else min(CHUNK, remaining)
        try:
            data = await asyncio.wait_for(source.read(want), limits.idle_timeout_s)
        except TimeoutError:
            # Idle means no byte either way: a download keeps the upload side alive.
            if loop.time() - traffic.last_active < limits.idle_timeout_s:
                continue
            traffic.cut = traffic.cut or "network.idle_timeout_s"
            break
        if not data:
            break
        traffic.last_active = loop.time()
        if len(data) > budget.bytes_left(limits):
            traffic.cut = "network.max_mb"
            break
        budget.bytes_moved += len(data)
        if upward:
            traffic.up += len(data)
        else:
            traffic.down += len(data)
        if remaining is not None:
            remaining -= len(data)
        if rewriter is not None:
            try:
                data = rewriter.feed(data)
            except BadRequest:
                traffic.cut = "response head"
                break
        sink.write(data)
        if not await _drained(sink, limits, traffic):
            break
    # A tunnel's half-close is passed on; a forwarded request's body just ends (its
    # connection closes once the answer has come).
    if limit is None and sink.can_write_eof() and traffic.cut is None:
        with contextlib.suppress(OSError):
            sink.write_eof()


async def relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    budget: SessionBudget,
    limits: Network,
    up_limit: int | None,
    rewriter: ResponseHeadRewriter | None = None,
) -> Traffic:
    """Relay both ways until the destination is done (or a budget ends it).

    ``up_limit``: for a forwarded request, its body's length; the session's side then
    sends nothing more (the next request on that connection is not this one's).
    """
    traffic = Traffic(last_active=asyncio.get_running_loop().time())
    up = asyncio.ensure_future(
        _pump(client[0], upstream[1], budget, limits, traffic, True, up_limit)
    )
    down = asyncio.ensure_future(
        _pump(upstream[0], client[1], budget, limits, traffic, False, None, rewriter)
    )
    try:
        # The destination's answer decides the end; a cut either way ends both.  Only
        # the tasks still running are waited on: a finished one (a request without a
        # body, a tunnel the session half-closed) would wake the loop at once, forever.
        pending: set[asyncio.Future[None]] = {up, down}
        while not down.done():
            _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if traffic.cut is not None or (up.done() and up.exception() is not None):
                break
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
                await task
    return traffic
