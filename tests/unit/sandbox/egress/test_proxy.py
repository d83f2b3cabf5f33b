"""The proxy's connection handling, in this process, with an injected resolver and
loopback destinations: what it connects to, what it refuses, and what it reports."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandbox.egress import proxy as proxy_module
from sandbox.egress.budget import SessionBudget
from sandbox.egress.client import REPORT_MAX_BYTES, EgressReport
from sandbox.egress.destinations import DestinationPolicy, IPAddress
from sandbox.egress.proxy import EgressProxy
from sandbox.policy import Network

pytestmark = pytest.mark.anyio


@dataclass
class Destination:
    """A loopback server that answers each request line with a fixed reply."""

    host: str
    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                self.received += data
                if b"\r\n\r\n" in data and data.startswith((b"GET", b"POST")):
                    # Asked for "Connection: close", as the proxy always asks.
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    break
                writer.write(data)  # a tunnel echoes
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving(destination: Destination) -> AsyncIterator[Destination]:
    server = await asyncio.start_server(destination.handle, destination.host, destination.port)
    destination.port = server.sockets[0].getsockname()[1]
    try:
        yield destination
    finally:
        server.close()
        await closed(destination.writers)
        await server.wait_closed()


async def closed(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class Resolver:
    """Answers from a script, one answer per call, and counts the calls."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        return [ipaddress.ip_address(address) for address in answer]


@dataclass
class Rig:
    proxy: EgressProxy
    budget: SessionBudget
    reports: list[dict[str, Any]]
    port: int

    async def exchange(self, request: bytes, read_until_close: bool = True) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(
            reader.read(65536) if not read_until_close else reader.read(), 5
        )
        await closed([writer])
        return data


@contextlib.asynccontextmanager
async def rig(
    network: Network, resolver: Resolver, service_ports: tuple[int, ...] = ()
) -> AsyncIterator[Rig]:
    reports: list[dict[str, Any]] = []
    policy = DestinationPolicy(network, (), service_ports)
    proxy = EgressProxy(network, lambda: policy, reports.append, resolver)
    current = Rig(proxy, SessionBudget("tenant-a", "session-a"), reports, 0)
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await proxy.handle(reader, writer, current.budget)  # a test may swap the session

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    current.port = server.sockets[0].getsockname()[1]
    try:
        yield current
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def allowlist(*allow: str, **more: Any) -> Network:
    return Network(mode="allowlist", allow=list(allow), allow_private=["127.0.0.2/32"], **more)


async def settle(reports: list[dict[str, Any]], count: int) -> None:
    for _ in range(200):
        if len(reports) >= count:
            return
        await asyncio.sleep(0.01)


# --- resolution: one answer, checked, and connected to ---------------------------------


async def test_a_name_resolving_to_a_forbidden_address_is_refused_and_nothing_connects() -> None:
    async with serving(Destination("127.0.0.1")) as target:
        resolver = Resolver(["127.0.0.1"])
        async with rig(allowlist(f"rebind.example:{target.port}"), resolver) as proxy:
            answer = await proxy.exchange(
                f"GET http://rebind.example:{target.port}/ HTTP/1.1\r\n\r\n".encode()
            )
            await settle(proxy.reports, 1)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden by network.allow_private\r\n")
    assert target.connections == 0
    assert proxy.reports[0]["key"] == "network.allow_private"


async def test_rebinding_after_the_check_cannot_redirect_the_connection() -> None:
    """The resolver answers an allowed address, then (were it asked again) a forbidden
    one with a server at the same port: the proxy asks once and connects to the address
    it checked."""
    async with (
        serving(Destination("127.0.0.2")) as allowed,
        serving(Destination("127.0.0.1", allowed.port)) as forbidden,
    ):
        resolver = Resolver(["127.0.0.2"], ["127.0.0.1"])
        async with rig(allowlist(f"rebind.example:{allowed.port}"), resolver) as proxy:
            answer = await proxy.exchange(
                f"GET http://rebind.example:{allowed.port}/ HTTP/1.1\r\n\r\n".encode()
            )
            await settle(proxy.reports, 1)
    assert answer.endswith(b"ok")
    assert resolver.calls == 1
    assert (allowed.connections, forbidden.connections) == (1, 0)
    assert proxy.reports[0]["address"] == "127.0.0.2"


async def test_a_listed_ip_literal_is_connected_to_without_asking_the_resolver() -> None:
    async with serving(Destination("127.0.0.2")) as target:
        resolver = Resolver(["127.0.0.1"])
        async with rig(allowlist(f"127.0.0.2:{target.port}"), resolver) as proxy:
            answer = await proxy.exchange(
                f"CONNECT 127.0.0.2:{target.port} HTTP/1.1\r\n\r\nping".encode(),
                read_until_close=False,
            )
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert resolver.calls == 0
    assert target.received.startswith(b"ping")


async def test_a_listed_ip_literal_with_a_final_dot_is_connected_to() -> None:
    async with serving(Destination("127.0.0.2")) as target:
        resolver = Resolver(["127.0.0.1"])
        async with rig(allowlist(f"127.0.0.2:{target.port}"), resolver) as proxy:
            answer = await proxy.exchange(
                f"CONNECT 127.0.0.2.:{target.port} HTTP/1.1\r\n\r\nping".encode(),
                read_until_close=False,
            )
            refused = await proxy.exchange(
                f"CONNECT 127.0.0.1.:{target.port} HTTP/1.1\r\n\r\n".encode()
            )
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert resolver.calls == 0
    assert refused.startswith(b"HTTP/1.1 403 Forbidden by network.allow\r\n")


async def test_an_ipv4_address_in_another_form_is_refused_without_a_lookup() -> None:
    async with serving(Destination("127.0.0.2")) as target:
        resolver = Resolver(["127.0.0.2"])
        network = allowlist(f"*:{target.port}", allow_all_reason="the test")
        async with rig(network, resolver) as proxy:
            answer = await proxy.exchange(
                f"CONNECT 2130706434:{target.port} HTTP/1.1\r\n\r\n".encode()
            )
    assert answer.startswith(b"HTTP/1.1 403 Forbidden by network.allow\r\n")
    assert (resolver.calls, target.connections) == (0, 0)


async def test_the_services_own_port_is_refused_though_listed_and_covered() -> None:
    async with serving(Destination("127.0.0.2")) as service:
        network = allowlist(f"127.0.0.2:{service.port}")
        async with rig(network, Resolver(), service_ports=(service.port,)) as proxy:
            answer = await proxy.exchange(
                f"CONNECT 127.0.0.2:{service.port} HTTP/1.1\r\n\r\n".encode()
            )
            await settle(proxy.reports, 1)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden by network.allow_private\r\n")
    assert service.connections == 0
    assert "the service itself" in proxy.reports[0]["reason"]


# --- budgets -----------------------------------------------------------------------------


async def test_connections_beyond_max_connections_are_refused_naming_the_key() -> None:
    async with serving(Destination("127.0.0.2")) as target:
        network = allowlist(f"127.0.0.2:{target.port}", max_connections=2)
        async with rig(network, Resolver()) as proxy:
            request = f"GET http://127.0.0.2:{target.port}/ HTTP/1.1\r\n\r\n".encode()
            answers = [await proxy.exchange(request) for _ in range(3)]
            await settle(proxy.reports, 3)
    assert [answer.endswith(b"ok") for answer in answers] == [True, True, False]
    assert answers[2].startswith(b"HTTP/1.1 403 Forbidden by network.max_connections\r\n")
    assert target.connections == 2
    assert [report["verdict"] for report in proxy.reports] == ["allowed", "allowed", "refused"]


async def test_open_connections_beyond_max_open_connections_are_refused() -> None:
    async with serving(Destination("127.0.0.2")) as target:
        network = allowlist(f"127.0.0.2:{target.port}", max_open_connections=1)
        async with rig(network, Resolver()) as proxy:
            held_reader, held = await asyncio.open_connection("127.0.0.1", proxy.port)
            held.write(f"CONNECT 127.0.0.2:{target.port} HTTP/1.1\r\n\r\n".encode())
            await held_reader.readuntil(b"\r\n\r\n")
            second = await proxy.exchange(
                f"GET http://127.0.0.2:{target.port}/ HTTP/1.1\r\n\r\n".encode()
            )
            await closed([held])
    assert second.startswith(b"HTTP/1.1 403 Forbidden by network.max_open_connections\r\n")
    assert target.connections == 1


async def test_a_tunnel_is_cut_when_the_session_has_moved_max_mb() -> None:
    async with serving(Destination("127.0.0.2")) as target:
        network = allowlist(f"127.0.0.2:{target.port}", max_mb=1)
        async with rig(network, Resolver()) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(f"CONNECT 127.0.0.2:{target.port} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            chunk = b"x" * 65536
            echoed = 0
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                for _ in range(64):  # 4 MiB offered
                    writer.write(chunk)
                    await writer.drain()
                    echoed += len(await asyncio.wait_for(reader.readexactly(len(chunk)), 5))
            await closed([writer])
            await settle(proxy.reports, 1)
    (report,) = proxy.reports
    assert report["cut"] == "network.max_mb"
    assert report["bytes_up"] + report["bytes_down"] <= 1024 * 1024
    assert echoed < 1024 * 1024


async def test_a_silent_tunnel_is_closed_after_idle_timeout_s() -> None:
    async with serving(Destination("127.0.0.2")) as target:
        network = allowlist(f"127.0.0.2:{target.port}", idle_timeout_s=0.2)
        async with rig(network, Resolver()) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(f"CONNECT 127.0.0.2:{target.port} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the proxy closed it
            await closed([writer])
            await settle(proxy.reports, 1)
    assert rest == b""
    assert proxy.reports[0]["cut"] == "network.idle_timeout_s"


async def test_a_head_that_never_ends_is_refused_after_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxy_module, "HEAD_DEADLINE_S", 0.2)
    async with rig(allowlist("h.example"), Resolver()) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET http://h.example/ HTTP/1.1\r\nX-Slow: ")
        answer = await asyncio.wait_for(reader.read(), 5)
        await closed([writer])
        await settle(proxy.reports, 1)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request by request\r\n")
    assert proxy.budget.open_now == 0


async def test_a_session_that_stops_reading_cannot_hold_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A download nobody reads: the connection is cut after idle_timeout_s, its bytes
    are dropped after the close deadline, and the session's slot is free again."""
    monkeypatch.setattr(proxy_module, "WRITE_DEADLINE_S", 0.2)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            for _ in range(512):
                writer.write(b"x" * 65536)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(flood, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        network = allowlist(f"127.0.0.2:{port}", idle_timeout_s=0.3)
        async with rig(network, Resolver()) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(f"CONNECT 127.0.0.2:{port} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            # ... and read nothing more.
            await settle(proxy.reports, 1)
            assert proxy.budget.open_now == 0
            writer.transport.abort()
    finally:
        server.close()
    (report,) = proxy.reports
    assert report["cut"] == "network.idle_timeout_s"
    assert report["bytes_down"] < 512 * 65536


async def test_a_request_with_outsized_names_is_still_reported_in_bounds() -> None:
    async with rig(allowlist("h.example"), Resolver()) as proxy:
        method = "M" * 12000  # a token, so the head parses: refused by the allowlist
        await proxy.exchange(f"{method} http://other.example/ HTTP/1.1\r\n\r\n".encode())
        await proxy.exchange(f"CONNECT {'a' * 250}.example:443 HTTP/1.1\r\n\r\n".encode())
        await settle(proxy.reports, 2)
    for report in proxy.reports:
        assert report["verdict"] == "refused"
        assert all(len(value) <= 500 for value in report.values() if isinstance(value, str))
        encoded = json.dumps(report).encode()
        assert len(encoded) <= REPORT_MAX_BYTES
        assert EgressReport.model_validate_json(encoded).verdict == "refused"


async def test_names_that_never_resolve_hold_at_most_two_lookups_of_a_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxy_module, "RESOLVE_DEADLINE_S", 0.2)
    in_flight = {"now": 0, "most": 0}

    async def never_answers(host: str, port: int) -> list[IPAddress]:
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            await asyncio.sleep(3600)
        finally:
            in_flight["now"] -= 1
        return []

    network = allowlist("*.example", allow_all_reason="unused")
    async with rig(network, Resolver()) as proxy:
        proxy.proxy.resolve = never_answers
        request = b"GET http://slow.example/ HTTP/1.1\r\n\r\n"
        answers = await asyncio.gather(*(proxy.exchange(request) for _ in range(6)))
        await settle(proxy.reports, 6)
    assert in_flight["most"] == 2
    assert all(answer.startswith(b"HTTP/1.1 502 Bad Gateway by destination") for answer in answers)
    assert {report["key"] for report in proxy.reports} == {"destination"}


async def test_a_slow_answer_to_a_bodyless_request_does_not_spin_the_proxy() -> None:
    """The request's side is done at once (no body); the answer takes a second.  The
    proxy waits for it: its CPU time stays far below the wall time."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0.1)
            writer.write(b"x")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with rig(allowlist(f"127.0.0.2:{port}"), Resolver()) as proxy:
            cpu = time.process_time()
            answer = await proxy.exchange(f"GET http://127.0.0.2:{port}/ HTTP/1.1\r\n\r\n".encode())
            cpu = time.process_time() - cpu
    finally:
        server.close()
    assert answer.endswith(b"xxxxxxxxxx")
    assert cpu < 0.2


async def test_lookups_past_their_deadline_hold_their_threads_and_bound_new_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resolver whose threads block: the deadline answers the session (502), but the
    threads stay taken, so the session's slots stay taken too.  Its next lookup is
    refused at once, without a thread; and once the proxy has LOOKUPS_STUCK_MAX stuck
    lookups, another session's are refused too, though it has a slot left."""
    monkeypatch.setattr(proxy_module, "RESOLVE_DEADLINE_S", 0.2)
    monkeypatch.setattr(proxy_module, "LOOKUPS_STUCK_MAX", 3)
    release = threading.Event()
    threads = {"started": 0}

    async def blocks(host: str, port: int) -> list[IPAddress]:
        threads["started"] += 1
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return [ipaddress.ip_address("127.0.0.2")]

    network = allowlist("*.example", allow_all_reason="unused")
    request = b"GET http://slow.example/ HTTP/1.1\r\n\r\n"
    try:
        async with rig(network, Resolver()) as proxy:
            proxy.proxy.resolve = blocks
            first = await asyncio.gather(*(proxy.exchange(request) for _ in range(2)))
            again = await proxy.exchange(request)
            assert threads["started"] == 2  # the third lookup took no thread
            proxy.budget = SessionBudget("tenant-a", "session-b")
            await proxy.exchange(request)
            other = await proxy.exchange(request)  # 3 stuck in the proxy: refused
            assert threads["started"] == 3
            await settle(proxy.reports, 5)
    finally:
        release.set()
    for answer in [*first, again, other]:
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway by destination")
    assert "all stuck" in proxy.reports[2]["reason"]
    assert "proxy's name lookups are stuck" in proxy.reports[4]["reason"]


async def test_an_answer_the_session_never_reads_is_cut_after_idle_timeout_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forwarded request (its side is done once sent) whose answer nobody reads: the
    proxy's write to the session stalls, and is given up after idle_timeout_s."""
    monkeypatch.setattr(proxy_module, "WRITE_DEADLINE_S", 0.2)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        with contextlib.suppress(OSError):
            for _ in range(512):
                writer.write(b"x" * 65536)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(flood, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        network = allowlist(f"127.0.0.2:{port}", idle_timeout_s=0.3)
        async with rig(network, Resolver()) as proxy:
            _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.transport.pause_reading()  # ... and reads nothing
            writer.write(f"GET http://127.0.0.2:{port}/ HTTP/1.1\r\n\r\n".encode())
            await settle(proxy.reports, 1)
            assert proxy.budget.open_now == 0
            writer.transport.abort()
    finally:
        server.close()
    (report,) = proxy.reports
    assert report["cut"] == "network.idle_timeout_s"
    assert report["bytes_down"] < 512 * 65536
