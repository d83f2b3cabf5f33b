"""Attacks on the egress path (the threat model's "Network egress") from real sessions
against the real egress proxy, with loopback HTTP servers as the destinations.

The addresses: the allowed server listens on 127.0.0.2, which the policy's
allow_private covers; the forbidden ones listen on 127.0.0.1, which it does not (so a
name that resolves there, "localhost", is refused after resolution), or on ports no
allow entry names.  A stand-in for the service listens on 127.0.0.2 at a port the
zygote is told is the service's own: allowed by name and by allow_private, and still
refused.  Every attack asserts what the target saw (nothing), the error the session
got, and the audit report, beside a control that reaches the allowed server.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from sandbox import RunReply, Session, WorkerHandle, ZygoteClient, workspaces
from sandbox.egress.client import EgressReport
from sandbox.policy import parse_policy
from tests.api.server import TEST_POLICY
from tests.loopback_http import LoopbackServer, loopback_server
from tests.zygotes import stop_zygote

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

REPORT_WAIT_S = 5.0


@dataclass
class Targets:
    allowed: LoopbackServer  # 127.0.0.2, listed, covered by allow_private
    unlisted_port: LoopbackServer  # 127.0.0.2, a port no entry names
    loopback: LoopbackServer  # 127.0.0.1: listed as a literal and as "localhost", not covered
    service: LoopbackServer  # 127.0.0.2, listed and covered, but the service's own port


@pytest.fixture(scope="module")
def targets() -> Iterator[Targets]:
    with (
        loopback_server("allowed", "127.0.0.2") as allowed,
        loopback_server("unlisted", "127.0.0.2") as unlisted,
        loopback_server("loopback", "127.0.0.1") as loopback,
        loopback_server("service", "127.0.0.2") as service,
    ):
        yield Targets(allowed, unlisted, loopback, service)


def egress_policy_text(targets: Targets) -> str:
    base = TEST_POLICY.read_text().split("[network]")[0]
    allow = [
        f"127.0.0.2:{targets.allowed.port}",
        f"127.0.0.1:{targets.loopback.port}",
        f"localhost:{targets.loopback.port}",
        f"127.0.0.2:{targets.service.port}",
    ]
    return base + (
        f'[network]\nmode = "allowlist"\nallow = {allow!r}\nallow_private = ["127.0.0.2/32"]\n'
        "max_open_connections = 8\n"
    )


@pytest.fixture(scope="module")
def egress_zygote(targets: Targets) -> Iterator[ZygoteClient]:
    policy = parse_policy(egress_policy_text(targets))
    state_dir = tempfile.mkdtemp(prefix="codesherpa-egress-")
    client = ZygoteClient(policy, state_dir, service_ports=(targets.service.port,))
    client.start()
    try:
        yield client
    finally:
        stop_zygote(client)
        workspaces.remove_all(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


class Reports:
    """The proxy's reports, as the service's audit log receives them."""

    def __init__(self) -> None:
        self.received: list[EgressReport] = []

    async def of(self, session: str, count: int) -> list[EgressReport]:
        """The session's reports once there are ``count`` of them (they follow the reply)."""
        deadline = asyncio.get_running_loop().time() + REPORT_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            mine = [report for report in self.received if report.session == session]
            if len(mine) >= count:
                return mine
            await asyncio.sleep(0.02)
        return [report for report in self.received if report.session == session]


@pytest.fixture
async def reports(egress_zygote: ZygoteClient) -> Reports:
    found = Reports()
    assert egress_zygote.egress is not None
    egress_zygote.egress.report_to(found.received.append)
    return found


@dataclass
class Attacker:
    """A session whose listener the proxy serves, as the service's registry hands it."""

    session: Session
    name: str

    async def run(self, code: str) -> RunReply:
        return (await self.session.run_python(code, timeout=15)).reply


@pytest.fixture
async def attacker(egress_zygote: ZygoteClient, reports: Reports) -> AsyncIterator[Attacker]:
    started = await Session.start(egress_zygote)
    egress = egress_zygote.egress
    assert egress is not None
    name = f"attacker-{secrets.token_hex(4)}"

    def attach(worker: WorkerHandle) -> object:
        return egress.attach(worker, "tenant-a", name)

    started.on_new_worker = attach
    assert started.worker is not None
    attach(started.worker)
    try:
        yield Attacker(started, name)
    finally:
        await started.close()
        workspaces.remove(started.workspace)


URLOPEN = (
    "import urllib.request\n"
    "def fetch(url):\n"
    "    try:\n"
    "        return urllib.request.urlopen(url, timeout=10).read().decode()\n"
    "    except Exception as exc:\n"
    "        return f'{type(exc).__name__}: {exc}'\n"
)


# --- the way out that is allowed ------------------------------------------------------


async def test_urllib_reaches_an_allowed_host_through_the_proxy_and_is_audited(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    before = targets.allowed.seen.connections
    reply = await attacker.run(URLOPEN + f"fetch({targets.allowed.url!r})")
    assert reply.value == repr("hello from allowed; got 0 bytes"), reply
    assert targets.allowed.seen.connections == before + 1
    (report,) = await reports.of(attacker.name, 1)
    assert (report.tenant, report.host, report.port) == (
        "tenant-a",
        "127.0.0.2",
        targets.allowed.port,
    )
    assert report.verdict == "allowed"
    assert report.bytes_up > 0
    assert report.bytes_down > 0


async def test_a_port_no_entry_names_is_refused_naming_network_allow(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    reply = await attacker.run(URLOPEN + f"fetch({targets.unlisted_port.url!r})")
    assert reply.value == repr("HTTPError: HTTP Error 403: Forbidden by network.allow"), reply
    assert targets.unlisted_port.seen.connections == 0
    (report,) = await reports.of(attacker.name, 1)
    assert (report.verdict, report.key) == ("refused", "network.allow")
    assert report.port == targets.unlisted_port.port
