"""The proxy's connections: read a head, check it, connect, relay, report.

Every connection a session opens ends in exactly one report (see ``Report``), whether
it was refused at the head, by the policy, by a budget, or relayed to its end.  A
refusal is an HTTP error whose reason phrase names the policy key, because that is the
part of a failed CONNECT that clients show (urllib: "Tunnel connection failed: 403
Forbidden by network.allow").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sandbox.egress.budget import (
    LOOKUPS_AT_ONCE,
    LOOKUPS_STUCK_MAX,
    RESOLVER_THREADS,
    SessionBudget,
)
from sandbox.egress.destinations import (
    DestinationPolicy,
    IPAddress,
    Refusal,
    ip_literal,
    normalise_host,
)
from sandbox.egress.http_head import (
    MAX_HEAD_BYTES,
    BadRequest,
    RequestHead,
    ResponseHeadRewriter,
    head_complete,
    parse_head,
)
from sandbox.egress.relay import Traffic, relay
from sandbox.policy.network import Network

HEAD_DEADLINE_S = 10.0  # to send a whole request head
RESOLVE_DEADLINE_S = 10.0
CONNECT_DEADLINE_S = 10.0
WRITE_DEADLINE_S = 5.0  # to take a refusal
REPORT_TEXT_MAX = 500  # characters of any text in a report (a host, a reason)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
Report = Callable[[dict[str, Any]], None]


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's resolver, off the event loop (getaddrinfo runs in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def refusal_response(status: int, phrase: str, body: str) -> bytes:
    data = body.encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


async def close_within(writer: asyncio.StreamWriter, deadline_s: float) -> None:
    """Close, letting buffered bytes go for ``deadline_s``; then drop them: a peer that
    never reads must not hold the proxy's descriptors."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), deadline_s)
    except (OSError, TimeoutError):
        writer.transport.abort()


class EgressProxy:
    def __init__(
        self,
        network: Network,
        destinations: Callable[[], DestinationPolicy],
        report: Report,
        resolve: Resolver = system_resolver,
    ) -> None:
        self.network = network
        self.destinations = destinations  # fresh: the host's own addresses may change
        self.report = report
        self.resolve = resolve
        self.lookup_threads = asyncio.Semaphore(RESOLVER_THREADS)
        self.lookups_stuck = 0  # lookups past their deadline whose threads are still out

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        buffer = b""
        while (end := head_complete(buffer)) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise BadRequest(f"the request head is over {MAX_HEAD_BYTES} bytes")
            chunk = await reader.read(4096)
            if not chunk:
                raise BadRequest("the connection closed before the head ended")
            buffer += chunk
        return buffer[:end], buffer[end:]

    async def _refuse(
        self, writer: asyncio.StreamWriter, status: int, refusal: Refusal, facts: dict[str, Any]
    ) -> None:
        phrase = "Forbidden" if status == 403 else "Bad Request" if status == 400 else "Bad Gateway"
        body = f"codesherpa egress proxy: refused by {refusal.key}: {refusal.reason}"
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(refusal_response(status, f"{phrase} by {refusal.key}", body))
            await asyncio.wait_for(writer.drain(), WRITE_DEADLINE_S)
        self._emit(facts, verdict="refused", key=refusal.key, reason=refusal.reason)

    def _emit(self, facts: dict[str, Any], **outcome: Any) -> None:
        started = facts.pop("started", None)
        if started is not None:
            outcome["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
        # Bounded, so that every report fits one datagram: a connection a session made
        # with an outsized name is still audited (cut short), never dropped.
        report = {
            name: value[:REPORT_TEXT_MAX] if isinstance(value, str) else value
            for name, value in {**facts, **outcome}.items()
        }
        self.report(report)

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        budget: SessionBudget,
    ) -> None:
        facts: dict[str, Any] = {
            "started": time.monotonic(),
            "tenant": budget.tenant,
            "session": budget.session,
            "host": None,
            "port": None,
            "bytes_up": 0,
            "bytes_down": 0,
        }
        refusal = budget.admit(self.network)
        try:
            if refusal is not None:
                await self._refuse(writer, 403, refusal, facts)
                return
            try:
                await self._serve(reader, writer, budget, facts)
            finally:
                budget.release()
        except Exception as exc:  # noqa: BLE001 - one connection must never end the proxy
            if "started" in facts:  # else it was answered and reported already
                failure = Refusal("proxy", f"the proxy failed: {type(exc).__name__}: {exc}")
                await self._refuse(writer, 502, failure, facts)
        finally:
            await close_within(writer, WRITE_DEADLINE_S)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        budget: SessionBudget,
        facts: dict[str, Any],
    ) -> None:
        try:
            raw, rest = await asyncio.wait_for(self._read_head(reader), HEAD_DEADLINE_S)
            head = parse_head(raw)
        except (BadRequest, TimeoutError) as exc:
            reason = str(exc) or "no complete request head in time"
            await self._refuse(writer, 400, Refusal("request", reason), facts)
            return
        facts.update(host=head.host, port=head.port, method=head.method)
        destinations = self.destinations()
        refusal = destinations.check_name(head.host, head.port)
        if refusal is not None:
            await self._refuse(writer, 403, refusal, facts)
            return
        address, refusal = await self._address(head, destinations, budget)
        if refusal is not None or address is None:
            refusal = refusal or Refusal("destination", "the name has no address")
            # The policy refused (403), or the name could not be resolved (502).
            status = 502 if refusal.key == "destination" else 403
            await self._refuse(writer, status, refusal, facts)
            return
        facts["address"] = str(address)
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(str(address), head.port), CONNECT_DEADLINE_S
            )
        except (OSError, TimeoutError) as exc:
            reason = f"cannot connect to {address}:{head.port}: {exc or 'timed out'}"
            await self._refuse(writer, 502, Refusal("destination", reason), facts)
            return
        traffic = Traffic()
        try:
            traffic = await self._exchange(reader, writer, upstream, head, rest, budget)
        finally:
            await close_within(upstream[1], WRITE_DEADLINE_S)
            facts.update(bytes_up=traffic.up, bytes_down=traffic.down, cut=traffic.cut)
            self._emit(facts, verdict="allowed", key=None)

    async def _address(
        self, head: RequestHead, destinations: DestinationPolicy, budget: SessionBudget
    ) -> tuple[IPAddress | None, Refusal | None]:
        """Resolve once, check, and return the very address to connect to: a second
        lookup (by the connect) could answer otherwise (DNS rebinding)."""
        host, _is_ip = normalise_host(head.host)
        literal = ip_literal(head.host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                addresses = await self._lookup(host, head.port, budget)
            except (OSError, TimeoutError) as exc:
                reason = str(exc) or f"no answer in {RESOLVE_DEADLINE_S:g} s"
                return None, Refusal("destination", f"cannot resolve {head.host}: {reason}")
        return destinations.pick_address(addresses, head.port)

    async def _lookup(self, host: str, port: int, budget: SessionBudget) -> list[IPAddress]:
        """Resolve in one of the resolver's threads, shared by all sessions.

        The deadline ends the wait, not the thread (getaddrinfo cannot be stopped): the
        session's slot and the thread's are held until the lookup itself returns, so a
        session's names that never answer hold at most LOOKUPS_AT_ONCE threads, and
        once those are all stuck its new lookups are refused at once.
        """
        if budget.lookups_stuck >= LOOKUPS_AT_ONCE:
            raise OSError("this session's name lookups are all stuck")
        if self.lookups_stuck >= LOOKUPS_STUCK_MAX:
            raise OSError("the proxy's name lookups are stuck; try again later")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESOLVE_DEADLINE_S
        async with asyncio.timeout_at(deadline):
            await budget.lookups.acquire()
            try:
                await self.lookup_threads.acquire()
            except BaseException:
                budget.lookups.release()
                raise
        stuck = False

        def returned(task: asyncio.Future[list[IPAddress]]) -> None:
            budget.lookups.release()
            self.lookup_threads.release()
            if stuck:
                budget.lookups_stuck -= 1
                self.lookups_stuck -= 1
            if not task.cancelled():
                task.exception()  # retrieved: nobody may be waiting for it any more

        lookup = asyncio.ensure_future(self.resolve(host, port))
        lookup.add_done_callback(returned)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(lookup)
        except TimeoutError:
            if not lookup.done():
                stuck = True
                budget.lookups_stuck += 1
                self.lookups_stuck += 1
            raise

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        head: RequestHead,
        rest: bytes,
        budget: SessionBudget,
    ) -> Traffic:
        if head.is_connect:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            limit = None
        else:
            forwarded = head.forwarded()
            budget.bytes_moved += len(forwarded)
            upstream[1].write(forwarded)
            limit = head.content_length
        # Bytes the session sent after its head: the start of the tunnel or the body.
        early = rest if limit is None else rest[:limit]
        if early:
            budget.bytes_moved += len(early)
            upstream[1].write(early)
        await upstream[1].drain()
        remaining = None if limit is None else limit - len(early)
        rewriter = None if head.is_connect else ResponseHeadRewriter()
        traffic = await relay((reader, writer), upstream, budget, self.network, remaining, rewriter)
        traffic.up += len(early) + (0 if head.is_connect else len(forwarded))
        return traffic
