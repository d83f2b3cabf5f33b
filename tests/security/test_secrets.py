"""Secrets never reach a worker (SECURITY.md guarantee 4: the service's environment,
tokens and config; and class "identity: reading other pids" for what a worker can read
in /proc).

The service process holds the tokens.  These tests put a canary in the test process's
environment *before* a dedicated zygote (or a real service process) starts, then look
for it everywhere a worker can look: ``os.environ``, ``/proc/self/environ``,
``/proc/1/environ``, every ``/proc/<pid>/environ`` and ``cmdline`` it can see, the
environment of programs it starts, and the files it can read.  The control shows that a
process started the ordinary way does inherit the canary, so a zygote that stopped
scrubbing its environment would fail these tests.  A last test lists the worker's file
descriptors: the channel and the standard streams, nothing inherited from the service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from sandbox import Session, ZygoteClient
from sandbox.policy import Policy
from tests.api.server import Server, start_server, stop_server
from tests.security.harness import everything_said, open_session
from tests.zygotes import stop_zygote

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

CANARY = "canary-secret-value-123"
TENANT_TOKEN = f"tenant:{CANARY}"
CANARY_VARIABLES = {
    "CODESHERPA_TOKENS": TENANT_TOKEN,
    "AWS_SECRET_ACCESS_KEY": CANARY,
    "OPENAI_API_KEY": CANARY,
}

# Everything a worker can read that might hold an inherited secret.  It prints, as JSON,
# the places searched, those holding the canary, and those it could read at all (the
# worker is not dumpable, so its own /proc/<pid>/environ is closed even to itself; the
# environment of a program it starts stands in for it).
_SEARCH = """
import glob, json, os, subprocess
canary = {canary!r}
places = {{"os.environ": "\\n".join(f"{{k}}={{v}}" for k, v in os.environ.items())}}
def read(path):
    try:
        with open(path, "rb") as handle:
            # Bounded: a checkout under /tmp is bound into the private /tmp, with its
            # large files; a canary would sit near the start of anything holding it.
            return handle.read(1 << 20).decode(errors="replace")
    except OSError as exc:
        return f"<{{type(exc).__name__}}>"
for pattern in ("/proc/*/environ", "/proc/*/cmdline", "/proc/*/task/*/environ"):
    for path in glob.glob(pattern):
        places[path] = read(path)
places["/proc/1/environ"] = read("/proc/1/environ")
places["/proc/self/environ"] = read("/proc/self/environ")
child = subprocess.run(["cat", "/proc/self/environ"], capture_output=True)
places["child environ"] = child.stdout.decode(errors="replace")
for root in ("/mnt/data", "/tmp", os.path.expanduser("~")):
    for directory, subdirectories, files in os.walk(root):
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            # The interpreter or checkout the mount view binds back, read-only: code.
            subdirectories[:] = []
            continue
        for name in files:
            places[os.path.join(directory, name)] = read(os.path.join(directory, name))
print(json.dumps({{
    "searched": sorted(places),
    "found": sorted(path for path, text in places.items() if canary in text),
    "readable": sorted(path for path, text in places.items() if not text.startswith("<")),
    "child": places["child environ"],
}}))
"""


def search_code(canary: str) -> str:
    return _SEARCH.format(canary=canary)


@pytest.fixture(scope="module")
def secret_holding_zygote(
    policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ZygoteClient]:
    """A zygote of our own, started while the canary is in our environment.

    (The suite's shared zygote started before any canary was set.)
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CANARY_VARIABLES.items():
            patch.setenv(name, value)
        zygote = ZygoteClient(policy, str(tmp_path_factory.mktemp("secret-state")))
        zygote.start()
    try:
        yield zygote
    finally:
        stop_zygote(zygote)


@pytest.fixture
async def secret_holding_session(
    secret_holding_zygote: ZygoteClient,
) -> AsyncIterator[tuple[ZygoteClient, Session]]:
    async with open_session(secret_holding_zygote) as session:
        yield secret_holding_zygote, session


def test_control_an_ordinary_child_inherits_the_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CANARY_VARIABLES.items():
        monkeypatch.setenv(name, value)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['CODESHERPA_TOKENS'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == TENANT_TOKEN


async def test_the_zygote_holds_no_secret_of_the_service(
    secret_holding_session: tuple[ZygoteClient, Session],
) -> None:
    zygote, _ = secret_holding_session
    assert zygote.pid is not None
    with open(f"/proc/{zygote.pid}/environ", "rb") as environ:
        assert CANARY.encode() not in environ.read()


async def test_the_services_environment_is_nowhere_a_worker_can_read(
    secret_holding_session: tuple[ZygoteClient, Session],
) -> None:
    _, session = secret_holding_session
    outcome = await session.run_python(search_code(CANARY), timeout=10)
    assert outcome.reply.status == "ok", outcome.reply.error
    report = json.loads(outcome.reply.stdout)
    assert report["found"] == []
    # Control: the search really read things: the zygote's command line (the worker's
    # /proc/1/cmdline) and the environment a program started inside receives.
    assert {"/proc/1/cmdline", "child environ"} <= set(report["readable"])
    assert "PATH=" in report["child"]
    commands = [
        (await session.run_command(line)).reply
        for line in ("cat /proc/self/environ", "cat /proc/1/environ", "grep -r canary /proc/1")
    ]
    assert CANARY not in everything_said(outcome.reply, *commands)


async def test_a_worker_reads_neither_the_state_directory_nor_the_service_pid(
    secret_holding_session: tuple[ZygoteClient, Session],
) -> None:
    # The zygote's command line and environment block are every worker's; the start
    # order that names the host's paths and pids came on the zygote's stdin.
    zygote, session = secret_holding_session
    outcome = await session.run_python(search_code(zygote.state_dir), timeout=10)
    assert outcome.reply.status == "ok", outcome.reply.error
    report = json.loads(outcome.reply.stdout)
    assert report["found"] == []
    assert "/proc/1/cmdline" in report["readable"]
    command_line = await session.run_python("open('/proc/1/cmdline', 'rb').read()")
    expected = b"\0".join([sys.executable.encode(), b"-P", b"-m", b"sandbox.zygote", b""])
    assert command_line.reply.value == repr(expected)


async def test_a_worker_has_only_its_channel_and_standard_streams(
    secret_holding_session: tuple[ZygoteClient, Session],
) -> None:
    _, session = secret_holding_session
    code = textwrap.dedent(
        """
        import json, os, stat
        listing = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                listing[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass  # the directory fd listdir itself held, closed by now
        print(json.dumps(listing))
        """
    )
    outcome = await session.run_python(code)
    assert outcome.reply.status == "ok", outcome.reply.error
    listing = {int(fd): target for fd, target in json.loads(outcome.reply.stdout).items()}
    sockets = [fd for fd, target in listing.items() if target.startswith("socket:")]
    assert len(sockets) == 1, listing  # the channel, nothing else
    assert {0, 1, 2} <= set(listing)
    # The rest is the worker's own plumbing for this run: /dev/null and output pipes.
    others = {
        fd: target
        for fd, target in listing.items()
        if fd not in sockets and target != "/dev/null" and not target.startswith("pipe:")
    }
    assert others == {}, others
    # Programs the worker starts inherit none of it: not even the channel.
    command = await session.run_command("ls -l /proc/self/fd")
    assert command.reply.status == "ok", command.reply
    assert "socket:" not in command.reply.stdout
    assert "pipe:" in command.reply.stdout or "/dev/null" in command.reply.stdout


# --- through a real service process -----------------------------------------------------


@pytest.fixture
def server_with_canary_token(tmp_path: Path) -> Iterator[Server]:
    token = f"{CANARY}-http"
    running = start_server(tmp_path, env={"CODESHERPA_TOKENS": f"alice:{token}"})
    try:
        yield running
    finally:
        stop_server(running)


def test_the_services_tokens_never_reach_a_worker_over_http(
    server_with_canary_token: Server,
) -> None:
    token = f"{CANARY}-http"
    with server_with_canary_token.client(token) as client:
        # Control: the service holds the token (it authenticates with it).
        assert client.get("/sessions").status_code == 200
        reply = client.post("/repl", json={"code": search_code(CANARY), "timeout": 10})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["status"] == "ok", body
        report = json.loads(body["result"])
        assert report["found"] == []
        assert "PATH=" in report["child"]
        service_pid = server_with_canary_token.process.pid
        probe = client.post(
            "/repl",
            json={
                "code": f"import os\nprint(os.path.exists('/proc/{service_pid}'))\n"
                f"open('/proc/{service_pid}/environ', 'rb').read()"
            },
        ).json()
        # Whatever that pid number names inside the worker's PID namespace, never the
        # service: its environment (and the token) stays out of every field.
        assert CANARY not in json.dumps(probe)
    with httpx.Client(base_url=server_with_canary_token.url) as anonymous:
        assert anonymous.get("/sessions").status_code == 401
