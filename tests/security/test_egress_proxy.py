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
import base64
import errno
import hashlib
import os
import secrets
import shutil
import signal
import tempfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import RunReply, Session, ZygoteClient, workspaces
from sandbox.egress.client import PROXY_UID, EgressReport, give_network
from sandbox.policy import parse_policy
from tests.api.server import TEST_POLICY
from tests.loopback_http import LoopbackServer, loopback_server
from tests.security.harness import probe
from tests.zygotes import stop_zygote

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

REPORT_WAIT_S = 5.0


@dataclass
class Targets:
    allowed: LoopbackServer  # 127.0.0.2, listed, covered by allow_private
    unlisted_port: LoopbackServer  # 127.0.0.2, a port no entry names
    loopback: LoopbackServer  # 127.0.0.1: listed as a literal and as "localhost", not covered
    service: LoopbackServer  # 127.0.0.2, listed and covered, but the service's own port
    index: LoopbackServer  # 127.0.0.2, listed: a package index holding one wheel


def build_index(root: Path) -> Path:
    """A "simple" package index with one pure-Python wheel, tinypkg 0.1."""
    project = root / "simple" / "tinypkg"
    project.mkdir(parents=True)
    wheel = "tinypkg-0.1-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": "X = 1\n",
        "tinypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        "tinypkg-0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    with zipfile.ZipFile(project / wheel, "w") as archive:
        record = []
        for name, text in files.items():
            archive.writestr(name, text)
            digest = hashlib.sha256(text.encode()).digest()
            encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            record.append(f"{name},sha256={encoded},{len(text)}")
        record.append("tinypkg-0.1.dist-info/RECORD,,")
        archive.writestr("tinypkg-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    (project / "index.html").write_text(f'<a href="{wheel}">{wheel}</a>\n')
    return root


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    index = str(build_index(tmp_path_factory.mktemp("index")))
    with (
        loopback_server("allowed", "127.0.0.2") as allowed,
        loopback_server("unlisted", "127.0.0.2") as unlisted,
        loopback_server("loopback", "127.0.0.1") as loopback,
        loopback_server("service", "127.0.0.2") as service,
        loopback_server("index", "127.0.0.2", directory=index) as package_index,
    ):
        yield Targets(allowed, unlisted, loopback, service, package_index)


def egress_policy_text(targets: Targets) -> str:
    base = TEST_POLICY.read_text().split("[network]")[0]
    allow = [
        f"127.0.0.2:{targets.allowed.port}",
        f"127.0.0.1:{targets.loopback.port}",
        f"localhost:{targets.loopback.port}",
        f"127.0.0.2:{targets.service.port}",
        f"127.0.0.2:{targets.index.port}",
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
    name = f"attacker-{secrets.token_hex(4)}"
    assert give_network(started, "tenant-a", name)
    try:
        yield Attacker(started, name)
    finally:
        await started.close()
        workspaces.remove(started.workspace)


# Raw bytes to the proxy from inside the session; the proxy's status line back.
RAW = (
    "import socket\n"
    "def raw(data):\n"
    "    with socket.create_connection(('127.0.0.1', 3128), timeout=10) as proxy:\n"
    "        proxy.sendall(data)\n"
    "        answer = b''\n"
    "        while chunk := proxy.recv(65536):\n"
    "            answer += chunk\n"
    "    return answer.split(b'\\r\\n')[0].decode()\n"
)

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


async def test_httpx_reads_the_proxy_from_the_environment_for_http_and_https(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    """httpx (which honours HTTP_PROXY and HTTPS_PROXY as requests and pip do) reaches an
    allowed host; for https it asks for a CONNECT tunnel (TLS then fails: the loopback
    server speaks plain HTTP), so both variables lead to the proxy."""
    pytest.importorskip("httpx")
    code = (
        "import httpx\n"
        f"plain = httpx.get({targets.allowed.url!r}, timeout=10).text\n"
        "try:\n"
        f"    httpx.get('https://127.0.0.2:{targets.allowed.port}/', timeout=10)\n"
        "except Exception as exc:\n"
        "    tunnel = type(exc).__name__\n"
        "(plain, tunnel)"
    )
    reply = await attacker.run(code)
    assert reply.value == repr(("hello from allowed; got 0 bytes", "ConnectError")), reply
    methods = sorted((r.method, r.verdict) for r in await reports.of(attacker.name, 2))
    assert methods == [("CONNECT", "allowed"), ("GET", "allowed")]


async def test_pip_downloads_from_an_allowed_index_through_the_proxy(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    """pip reads HTTP_PROXY as it is: no option names the proxy."""
    index = f"http://127.0.0.2:{targets.index.port}/simple/"
    code = (
        "import contextlib, io, os\n"
        "from pip._internal.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = main(['download', '--no-deps', '--only-binary=:all:', '-d', 'wheels',\n"
        f"                 '--index-url', {index!r}, '--trusted-host', '127.0.0.2',\n"
        "                 '--disable-pip-version-check', '--no-cache-dir', 'tinypkg'])\n"
        "(code, os.listdir('wheels'))"
    )
    reply = await attacker.run(code)
    assert reply.value == repr((0, ["tinypkg-0.1-py3-none-any.whl"])), reply
    assert targets.index.seen.requests == [
        "GET /simple/tinypkg/ HTTP/1.1",
        "GET /simple/tinypkg/tinypkg-0.1-py3-none-any.whl HTTP/1.1",
    ]
    lines = await reports.of(attacker.name, 2)
    assert [(r.port, r.verdict) for r in lines] == [(targets.index.port, "allowed")] * 2


async def test_a_port_no_entry_names_is_refused_naming_network_allow(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    reply = await attacker.run(URLOPEN + f"fetch({targets.unlisted_port.url!r})")
    assert reply.value == repr("HTTPError: HTTP Error 403: Forbidden by network.allow"), reply
    assert targets.unlisted_port.seen.connections == 0
    (report,) = await reports.of(attacker.name, 1)
    assert (report.verdict, report.key) == ("refused", "network.allow")
    assert report.port == targets.unlisted_port.port


async def test_a_name_that_resolves_to_a_forbidden_address_is_refused_after_resolution(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    """ "localhost" is listed, but resolves to loopback that allow_private does not cover
    (the same check a rebinding name meets: the proxy resolves, checks, connects to
    what it checked; the injected-resolver unit tests cover a changing answer)."""
    url = f"http://localhost:{targets.loopback.port}/"
    reply = await attacker.run(URLOPEN + f"fetch({url!r})")
    assert reply.value == repr("HTTPError: HTTP Error 403: Forbidden by network.allow_private")
    literal = f"http://127.0.0.1:{targets.loopback.port}/"
    reply = await attacker.run(URLOPEN + f"fetch({literal!r})")
    assert reply.value == repr("HTTPError: HTTP Error 403: Forbidden by network.allow_private")
    assert targets.loopback.seen.connections == 0
    refused = await reports.of(attacker.name, 2)
    assert [(r.host, r.verdict, r.key) for r in refused] == [
        ("localhost", "refused", "network.allow_private"),
        ("127.0.0.1", "refused", "network.allow_private"),
    ]


async def test_the_services_own_port_is_refused_though_listed_and_covered(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    reply = await attacker.run(URLOPEN + f"fetch({targets.service.url!r})")
    assert reply.value == repr("HTTPError: HTTP Error 403: Forbidden by network.allow_private")
    tunnel = f"raw(b'CONNECT 127.0.0.2:{targets.service.port} HTTP/1.1\\r\\n\\r\\n')"
    reply = await attacker.run(RAW + tunnel)
    assert reply.value == repr("HTTP/1.1 403 Forbidden by network.allow_private")
    assert targets.service.seen.connections == 0
    for report in await reports.of(attacker.name, 2):
        assert report.verdict == "refused"
        assert "the service itself" in (report.reason or "")


async def test_connect_tunnels_only_to_a_listed_port(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    tunnel = (
        "import http.client\n"
        "def through_tunnel(port):\n"
        "    connection = http.client.HTTPConnection('127.0.0.1', 3128, timeout=10)\n"
        "    connection.set_tunnel('127.0.0.2', port)\n"
        "    try:\n"
        "        connection.request('GET', '/')\n"
        "        return connection.getresponse().read().decode()\n"
        "    except OSError as exc:\n"
        "        return str(exc)\n"
    )
    reply = await attacker.run(tunnel + f"through_tunnel({targets.allowed.port})")
    assert reply.value == repr("hello from allowed; got 0 bytes")  # the control
    reply = await attacker.run(tunnel + f"through_tunnel({targets.unlisted_port.port})")
    assert reply.value == repr("Tunnel connection failed: 403 Forbidden by network.allow")
    assert targets.unlisted_port.seen.connections == 0
    # A tunnel is reported when it closes, so the refusal may come first.
    found = {(r.method, r.port, r.verdict) for r in await reports.of(attacker.name, 2)}
    assert found == {
        ("CONNECT", targets.allowed.port, "allowed"),
        ("CONNECT", targets.unlisted_port.port, "refused"),
    }


async def test_sockets_that_bypass_the_proxy_are_refused(
    attacker: Attacker, targets: Targets
) -> None:
    before = targets.allowed.seen.connections
    allowed = ("127.0.0.2", targets.allowed.port)
    results = await probe(
        attacker.session,
        f"""
        attempt("tcp_to_the_allowed_server", lambda: socket.create_connection({allowed!r}, 2))
        connect = socket.create_connection
        attempt("tcp_to_another_loopback_port", lambda: connect(("127.0.0.1", 3129), 2))
        attempt("tcp6_to_the_proxy_port_elsewhere", lambda: connect(("::1", 3128), 2))
        attempt("udp_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        attempt("udp6_socket", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
        icmp = socket.IPPROTO_ICMP
        attempt("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, icmp))
        attempt("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        attempt("netlink_socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
        def bind_a_port():
            with socket.socket() as server:
                server.bind(("127.0.0.1", 8080))
        attempt("tcp_bind", bind_a_port)
        def interfaces():
            with open("/proc/net/dev") as table:
                return sorted(line.split(":")[0].strip() for line in table if ":" in line)
        attempt("interfaces", interfaces)
        """,
    )
    refused = {name: result.get("errno") for name, result in results.items()}
    assert refused == {
        "tcp_to_the_allowed_server": errno.EACCES,
        "tcp_to_another_loopback_port": errno.EACCES,
        # Landlock allows the port whatever the address; nothing listens there.
        "tcp6_to_the_proxy_port_elsewhere": errno.ECONNREFUSED,
        "udp_socket": errno.EACCES,
        "udp6_socket": errno.EACCES,
        "raw_socket": errno.EACCES,
        "packet_socket": errno.EAFNOSUPPORT,
        "netlink_socket": errno.EAFNOSUPPORT,
        "tcp_bind": errno.EACCES,
        "interfaces": None,
    }
    assert results["interfaces"]["value"] == repr(["lo"])
    assert targets.allowed.seen.connections == before


SMUGGLED = {
    "two_content_lengths": "POST {url} HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\n",
    "content_length_and_chunked": (
        "POST {url} HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "obs_fold": "GET {url} HTTP/1.1\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    "bare_lf": "GET {url} HTTP/1.1\nX-A: 1\n\n\r\n\r\n",
    "nul_in_a_header": "GET {url} HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "head_too_long": "GET {url} HTTP/1.1\r\nX-A: " + "a" * 20000 + "\r\n\r\n",
    "origin_form_to_the_proxy": "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
}


@pytest.mark.parametrize("attack", SMUGGLED, ids=list(SMUGGLED))
async def test_ambiguous_framing_is_refused_before_anything_reaches_a_server(
    attacker: Attacker, targets: Targets, reports: Reports, attack: str
) -> None:
    host = f"127.0.0.2:{targets.allowed.port}"
    good = f"GET http://{host}/ HTTP/1.1\r\n\r\n"
    reply = await attacker.run(RAW + f"raw({good.encode()!r})")
    assert reply.value == repr("HTTP/1.1 200 OK")  # the control: one request arrives
    requests = len(targets.allowed.seen.requests)
    bad = SMUGGLED[attack].format(url=f"http://{host}/", host=host)
    reply = await attacker.run(RAW + f"raw({bad.encode()!r})")
    assert reply.value == repr("HTTP/1.1 400 Bad Request by request")
    assert len(targets.allowed.seen.requests) == requests
    assert [r.verdict for r in await reports.of(attacker.name, 2)] == ["allowed", "refused"]


async def test_a_request_pipelined_after_an_allowed_one_never_reaches_its_target(
    attacker: Attacker, targets: Targets
) -> None:
    """The proxy forwards one request per connection: bytes after the first request's
    body are never read as a second request (to a host the policy refuses)."""
    allowed = f"http://127.0.0.2:{targets.allowed.port}/"
    hidden = f"GET http://127.0.0.1:{targets.loopback.port}/ HTTP/1.1\r\n\r\n"
    pipelined = f"POST {allowed} HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody{hidden}"
    reply = await attacker.run(RAW + f"raw({pipelined.encode()!r})")
    assert reply.value == repr("HTTP/1.1 200 OK")
    assert targets.allowed.seen.requests[-1] == "POST / HTTP/1.1"
    assert targets.loopback.seen.connections == 0


async def test_each_connection_is_attributed_to_the_session_whose_listener_took_it(
    egress_zygote: ZygoteClient, attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    other = await Session.start(egress_zygote)
    egress = egress_zygote.egress
    assert egress is not None
    assert other.worker is not None
    egress.attach(other.worker, "tenant-b", "neighbour")
    try:
        fetch = URLOPEN + f"fetch({targets.allowed.url!r})"
        await attacker.run(fetch)
        await other.run_python(fetch, timeout=15)
        await attacker.run(fetch)
        mine = await reports.of(attacker.name, 2)
        theirs = await reports.of("neighbour", 1)
    finally:
        await other.close()
        workspaces.remove(other.workspace)
    assert [(r.tenant, r.session) for r in mine] == [("tenant-a", attacker.name)] * 2
    assert [(r.tenant, r.session) for r in theirs] == [("tenant-b", "neighbour")]


async def test_a_restarted_session_keeps_its_way_out_and_its_name(
    attacker: Attacker, targets: Targets, reports: Reports
) -> None:
    await attacker.session.restart()
    reply = await attacker.run(URLOPEN + f"fetch({targets.allowed.url!r})")
    assert reply.value == repr("hello from allowed; got 0 bytes")
    (report,) = await reports.of(attacker.name, 1)
    assert report.verdict == "allowed"


async def test_the_proxy_lets_go_of_a_sessions_listener_when_its_worker_ends(
    egress_zygote: ZygoteClient,
) -> None:
    egress = egress_zygote.egress
    assert egress is not None
    assert egress.pid is not None

    def proxy_sockets() -> int:
        return sum(
            os.readlink(f"/proc/{egress.pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{egress.pid}/fd")
        )

    before = proxy_sockets()
    session = await Session.start(egress_zygote)
    assert session.worker is not None
    egress.attach(session.worker, "tenant-a", "short-lived")
    for _ in range(100):
        if proxy_sockets() == before + 1:
            break
        await asyncio.sleep(0.02)
    assert proxy_sockets() == before + 1
    await session.close()
    workspaces.remove(session.workspace)
    for _ in range(100):
        if proxy_sockets() == before:
            break
        await asyncio.sleep(0.02)
    assert proxy_sockets() == before


def test_the_proxy_runs_confined_with_nothing_of_the_service(egress_zygote: ZygoteClient) -> None:
    egress = egress_zygote.egress
    assert egress is not None
    assert egress.pid is not None
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{egress.pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == [str(PROXY_UID)] * 4
    assert status["Gid"].split() == [str(PROXY_UID)] * 4
    assert status["Groups"].strip() == ""
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    environment = Path(f"/proc/{egress.pid}/environ").read_bytes().split(b"\0")
    names = sorted(entry.split(b"=")[0].decode() for entry in environment if entry)
    assert names == ["LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH"]
    command = Path(f"/proc/{egress.pid}/cmdline").read_bytes().split(b"\0")[1:-1]
    assert command == [b"-P", b"-m", b"sandbox.egress"]


async def test_a_zygote_restart_leaves_the_proxy_and_running_sessions_their_way_out(
    egress_zygote: ZygoteClient, attacker: Attacker, targets: Targets
) -> None:
    egress = egress_zygote.egress
    assert egress is not None
    proxy = egress.pid
    zygote = egress_zygote.pid
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)
    for _ in range(500):
        if not egress_zygote.alive():
            break
        await asyncio.sleep(0.01)
    newcomer = await Session.start(egress_zygote)  # restarts the zygote
    try:
        assert egress_zygote.pid != zygote
        assert egress.pid == proxy
        reply = await attacker.run(URLOPEN + f"fetch({targets.allowed.url!r})")
        assert reply.value == repr("hello from allowed; got 0 bytes")
    finally:
        await newcomer.close()
        workspaces.remove(newcomer.workspace)


async def test_a_proxy_that_dies_is_replaced_for_new_sessions(
    egress_zygote: ZygoteClient, targets: Targets, reports: Reports
) -> None:
    egress = egress_zygote.egress
    assert egress is not None
    killed = egress.pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    for _ in range(500):
        if egress.pid not in (None, killed) and egress.ready:
            break
        await asyncio.sleep(0.02)
    assert egress.pid not in (None, killed)
    session = await Session.start(egress_zygote)
    try:
        assert session.worker is not None
        assert egress.attach(session.worker, "tenant-a", "after-the-crash")
        outcome = await session.run_python(URLOPEN + f"fetch({targets.allowed.url!r})")
        assert outcome.reply.value == repr("hello from allowed; got 0 bytes")
        (report,) = await reports.of("after-the-crash", 1)
        assert report.verdict == "allowed"
    finally:
        await session.close()
        workspaces.remove(session.workspace)
