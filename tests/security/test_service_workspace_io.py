"""What a session plants in its workspace, against the service that reads and writes it.

SECURITY.md, "The service side is attack surface too": a FIFO, a file under a lease, a
file that grows after its size was read, a tree of 30,000 directories.  One real
service runs for the module, with real workers; the session's own code plants each
trap, then the test uploads, downloads, lists or reads through MCP, and checks that
the answer arrives (an error or the file), that ``/livez`` answers meanwhile (the
event loop was never blocked), and that no more is read or sent than the cap or the
declared length.  A restart must not re-own a workspace's files: the new worker
keeps the session's uid.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tests.api.server import TEST_POLICY, Server, start_server, stop_server

pytestmark = [pytest.mark.attack]

ALICE = "alice-token-" + secrets.token_hex(8)
# The test policy with room for the traps: 30,000 directories need inodes (one per
# 16 KiB of quota), and a sparse file of 500 MB needs RLIMIT_FSIZE above it.
ROOMY = {"workspace_mb = 64": "workspace_mb = 512", "file_size_mb = 16": "file_size_mb = 512"}
MCP_READ_CAP = 4 * 1024 * 1024  # service.mcp_content.MAX_IMAGE_BYTES, above reply_chars
GROWN_TO = 500 * 1024 * 1024
RSS_HEADROOM = 200 * 1024 * 1024
LIVEZ_DEADLINE_S = 5.0
ANSWER_DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("workspace-io")
    policy = TEST_POLICY.read_text()
    for old, new in ROOMY.items():
        assert old in policy
        policy = policy.replace(old, new)
    (tmp / "policy.toml").write_text(policy)
    running = start_server(
        tmp, env={"CODESHERPA_TOKENS": f"alice:{ALICE}"}, policy=tmp / "policy.toml"
    )
    try:
        yield running
    finally:
        # A service stuck opening a FIFO (the code before the fix) is let go, so the
        # module ends instead of waiting for it.
        _open_planted_fifos(running.state_dir)
        stop_server(running)


@pytest.fixture
def alice(server: Server) -> Iterator[httpx.Client]:
    with server.client(ALICE) as client:
        yield client


@pytest.fixture
def session_id(alice: httpx.Client, server: Server) -> Iterator[str]:
    created = alice.post("/sessions")
    assert created.status_code == 201, created.text
    yield str(created.json()["session_id"])
    _open_planted_fifos(server.state_dir)
    alice.delete(f"/sessions/{created.json()['session_id']}", timeout=ANSWER_DEADLINE_S)


def _open_planted_fifos(state_dir: Path) -> None:
    """Open every FIFO of every workspace for reading, and close it: a writer waiting
    in open() for a reader gets one."""
    for fifo in (state_dir / "workspaces").rglob("*"):
        try:
            if stat.S_ISFIFO(fifo.lstat().st_mode):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            continue


def run(client: httpx.Client, session_id: str, code: str) -> dict[str, Any]:
    reply: dict[str, Any] = client.post(
        "/repl", json={"code": code, "session_id": session_id, "timeout": 10}
    ).json()
    assert reply["status"] == "ok", reply
    return reply


def mcp_call(server: Server, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """One tool call in a fresh MCP session, as a stock client makes it."""

    async def call() -> CallToolResult:
        headers = {"Authorization": f"Bearer {ALICE}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60)) as http,
            streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool(tool, arguments)

    return anyio.run(call)


def tool_text(result: CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text


def livez_answers(server: Server) -> None:
    """``/livez`` answers, within a deadline far beyond what it needs when the loop is free."""
    response = httpx.get(f"{server.url}/livez", timeout=LIVEZ_DEADLINE_S)
    assert response.status_code == 200


def _upload(alice: httpx.Client, session_id: str, path: str) -> tuple[int, str]:
    response = alice.put(
        f"/sessions/{session_id}/files/{path}", content=b"from the client", timeout=60
    )
    return response.status_code, response.text


def _download(alice: httpx.Client, session_id: str, path: str) -> tuple[int, str]:
    response = alice.get(f"/sessions/{session_id}/files/{path}", timeout=60)
    return response.status_code, response.text


def _mcp_write(server: Server, session_id: str, path: str) -> tuple[int, str]:
    result = mcp_call(
        server, "write_file", {"path": path, "content": "from mcp", "session_id": session_id}
    )
    return (400 if result.isError else 200), tool_text(result)


def _mcp_read(server: Server, session_id: str, path: str) -> tuple[int, str]:
    result = mcp_call(server, "read_file", {"path": path, "session_id": session_id})
    return (400 if result.isError else 200), tool_text(result)


ACCESSES = ("upload", "download", "mcp write_file", "mcp read_file")


def _access(kind: str, server: Server, alice: httpx.Client, session_id: str, path: str) -> Any:
    if kind == "upload":
        return _upload(alice, session_id, path)
    if kind == "download":
        return _download(alice, session_id, path)
    if kind == "mcp write_file":
        return _mcp_write(server, session_id, path)
    return _mcp_read(server, session_id, path)


# A FIFO with no reader makes a plain open() for writing wait for one, forever; a
# socket cannot be opened at all.  Either must be refused, not waited on.
PLANTED = {
    "fifo": ("import os; os.mkfifo('trap')", "stat.S_ISFIFO"),
    "socket": (
        "import socket; listener = socket.socket(socket.AF_UNIX); listener.bind('trap')",
        "stat.S_ISSOCK",
    ),
}


@pytest.mark.parametrize("kind", ACCESSES)
@pytest.mark.parametrize("planted", PLANTED)
def test_a_planted_special_file_is_refused_at_once_and_blocks_no_one(
    server: Server, alice: httpx.Client, session_id: str, kind: str, planted: str
) -> None:
    plant, still_there = PLANTED[planted]
    run(alice, session_id, plant)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_access, kind, server, alice, session_id, "trap")
        livez_answers(server)
        status, text = pending.result(timeout=ANSWER_DEADLINE_S)
    assert status in (400, 404), text
    assert "not a regular file" in text
    # Nothing was written through it, and it is still what the session made.
    kept = run(alice, session_id, f"import os, stat; {still_there}(os.lstat('trap').st_mode)")
    assert kept["result"] == "True"


@pytest.mark.parametrize("kind", ACCESSES)
def test_a_leased_file_answers_at_once_and_blocks_no_one(
    server: Server, alice: httpx.Client, session_id: str, kind: str
) -> None:
    # A write lease conflicts with any other open; SIGIO ignored, the holder never lets
    # go and only the kernel's lease-break time (45 s) would end it.
    run(
        alice,
        session_id,
        "import os, fcntl, signal\n"
        "signal.signal(signal.SIGIO, signal.SIG_IGN)\n"
        "open('held.txt', 'w').write('the session wrote this')\n"
        "held = os.open('held.txt', os.O_RDONLY)\n"
        "fcntl.fcntl(held, fcntl.F_SETLEASE, fcntl.F_WRLCK)\n"
        "assert fcntl.fcntl(held, fcntl.F_GETLEASE) == fcntl.F_WRLCK",
    )
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_access, kind, server, alice, session_id, "held.txt")
        livez_answers(server)
        status, text = pending.result(timeout=ANSWER_DEADLINE_S)
    assert status == 400, text
    assert "under a lease" in text
    # Read through the holder's own descriptor: any other open waits for the lease.
    kept = run(alice, session_id, "os.pread(held, 100, 0)")
    assert kept["result"] == repr(b"the session wrote this")


# The session grows the file the moment the service first reads it (inotify
# IN_ACCESS): the service saw a size within its cap, and the file becomes 500 MB (sparse)
# while it reads.
GROWER = f"""
import ctypes, os, select, threading, time
libc = ctypes.CDLL(None, use_errno=True)
SMALL, BIG = {MCP_READ_CAP}, {GROWN_TO}
grown = os.open('grow.txt', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.ftruncate(grown, SMALL)
watch = libc.inotify_init1(os.O_NONBLOCK)
assert libc.inotify_add_watch(watch, b'grow.txt', 0x1) >= 0  # IN_ACCESS

def drain():
    try:
        while os.read(watch, 65536):
            pass
    except BlockingIOError:
        pass

def grow():
    while True:
        select.select([watch], [], [])
        os.ftruncate(grown, BIG)
        time.sleep(2)
        os.ftruncate(grown, SMALL)
        drain()

threading.Thread(target=grow, daemon=True).start()
"""


def _peak_rss_reset(pid: int) -> int:
    """Reset the process's peak resident size to its current one; return that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _peak_rss(pid)


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def _wait_until_small(alice: httpx.Client, session_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        size = run(alice, session_id, "os.stat('grow.txt').st_size")["result"]
        if int(size) == MCP_READ_CAP:
            return
        time.sleep(0.2)
    raise AssertionError("the file never went back to its small size")


def test_mcp_read_file_never_reads_past_its_cap_of_a_growing_file(
    server: Server, alice: httpx.Client, session_id: str
) -> None:
    run(alice, session_id, GROWER)
    baseline = _peak_rss_reset(server.process.pid)
    answers = []
    for _ in range(4):
        _wait_until_small(alice, session_id)
        result = mcp_call(server, "read_file", {"path": "grow.txt", "session_id": session_id})
        answers.append((result.isError, tool_text(result)))
    grew_by = _peak_rss(server.process.pid) - baseline
    assert grew_by < RSS_HEADROOM, f"the service grew by {grew_by >> 20} MB"
    for refused, text in answers:
        if refused:
            assert f"larger than {MCP_READ_CAP} bytes" in text
        else:  # read before it grew: cut to the reply cap
            assert len(text) <= MCP_READ_CAP
    assert any(refused for refused, _ in answers), "the file never grew in time"


def test_a_download_of_a_growing_file_sends_only_the_length_it_declared(
    server: Server, alice: httpx.Client, session_id: str
) -> None:
    run(alice, session_id, GROWER)
    log = server.state_dir.parent / "server.log"
    log_before = log.read_text()
    baseline = _peak_rss_reset(server.process.pid)
    for _ in range(2):
        _wait_until_small(alice, session_id)
        with alice.stream("GET", f"/sessions/{session_id}/files/grow.txt") as response:
            assert response.status_code == 200
            declared = int(response.headers["content-length"])
            received = sum(len(chunk) for chunk in response.iter_raw())
        assert declared == MCP_READ_CAP
        assert received == declared
    assert _peak_rss(server.process.pid) - baseline < RSS_HEADROOM
    # The service sent no byte past the declared length: h11 would have refused it,
    # and the service logged the failed response.
    written = log.read_text()[len(log_before) :]
    assert "Too much data for declared Content-Length" not in written
    assert "Exception in ASGI application" not in written


DIRECTORIES = 30_000


def test_listing_thirty_thousand_directories_keeps_the_service_answering(
    server: Server, alice: httpx.Client, session_id: str
) -> None:
    made = run(
        alice,
        session_id,
        "import os\n"
        f"for i in range({DIRECTORIES}): os.mkdir(f'd{{i:05d}}')\n"
        "open('d00000/kept.txt', 'w').write('x')\n"
        f"len(os.listdir('.'))",
    )
    assert made["result"] == str(DIRECTORIES)
    listings = 40
    with ThreadPoolExecutor(listings) as pool:
        pending = [
            pool.submit(alice.get, f"/sessions/{session_id}/files", timeout=120)
            for _ in range(listings)
        ]
        time.sleep(0.3)  # the listings have reached the service
        # Before the fix each listing held the event loop for a quarter second, one after
        # another: this answer waited for all of them.
        livez_answers(server)
        answered = [future.result(timeout=120) for future in pending]
    for response in answered:
        assert response.status_code == 200, response.text
        assert len(response.json()) <= 1000


def test_a_restart_keeps_the_uid_and_re_owns_nothing(
    server: Server, alice: httpx.Client, session_id: str
) -> None:
    before = run(
        alice,
        session_id,
        "import os\n"
        "for i in range(20):\n"
        "    os.makedirs(f'tree/{i}', exist_ok=True)\n"
        "    for j in range(200): open(f'tree/{i}/{j}', 'w').close()\n"
        "(os.getuid(), os.stat('tree/7/7').st_uid)",
    )["result"]
    uid, owner = json.loads(before.replace("(", "[").replace(")", "]"))
    assert uid == owner
    restarted = alice.post(f"/sessions/{session_id}/restart", timeout=60)
    assert restarted.status_code == 200, restarted.text
    after = run(
        alice,
        session_id,
        "import os\n"
        "open('tree/7/7', 'w').write('still mine')\n"
        "(os.getuid(), os.stat('tree/7/7').st_uid, os.stat('tree/19/199').st_uid)",
    )["result"]
    assert json.loads(after.replace("(", "[").replace(")", "]")) == [uid, uid, uid]
