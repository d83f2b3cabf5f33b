"""Slow and idle clients against a real service process (the threat "Slow or idle
clients (headers sent a byte at a time, thousands of half-open connections) cannot take
the service away from others, with or without a token").

The service runs with a small connection cap and short deadlines set through its
settings, so floods of a hundred connections reach the cap and deadlines pass in
seconds; the numbers scale (service/descriptors.py).  Two more services run with a low
RLIMIT_NOFILE (soft and hard, so the service cannot raise it): one with the cap derived
from that limit, one with a cap set above what the limit allows, to provoke the accept
loop's EMFILE storm and bound its log.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from service.connection_guard import CLIENT_GRACE_S
from tests.api.server import Server, start_server, stop_server

pytestmark = [pytest.mark.attack]

TOKEN = "alice-token-" + secrets.token_hex(8)
CAP = 8
HEADER_TIMEOUT_S = 3.0
STALL_TIMEOUT_S = 3.0
SLACK_S = 3.0
FLOOD = 100  # half-open connections, 12 times the cap
# The service's own descriptors besides connections vary a little (a session, a log).
FD_SLACK = 8
HALF_HEAD = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Waiting: "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("slow"),
        env={
            "CODESHERPA_TOKENS": f"alice:{TOKEN}",
            "CODESHERPA_MAX_CONNECTIONS": str(CAP),
            "CODESHERPA_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "CODESHERPA_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S),
            # Enough runs at once that the cap, not the tenant's quota, is what is reached.
            "CODESHERPA_RUNS_AT_ONCE_PER_TENANT": "32",
        },
    )
    try:
        yield running
    finally:
        stop_server(running)


def address(server: Server) -> tuple[str, int]:
    return "127.0.0.1", int(server.url.rsplit(":", 1)[1])


def open_fds(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def log_size(server: Server) -> int:
    return (server.state_dir.parent / "server.log").stat().st_size


@contextlib.contextmanager
def half_heads(
    server: Server, count: int, connect_timeout_s: float = 5.0
) -> Iterator[list[socket.socket]]:
    """``count`` connections that each sent half a request head (fewer if connects fail)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                sock = socket.create_connection(address(server), timeout=connect_timeout_s)
                sock.sendall(HALF_HEAD)
            except OSError:
                continue
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def closed_by_service(sock: socket.socket) -> bool:
    """Whether the service has closed this connection (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_for_close(sock: socket.socket, within_s: float) -> tuple[float | None, bytes]:
    """Seconds until the service closed the connection (None: still open), and what it sent."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < within_s:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started, received
        if not chunk:
            return time.monotonic() - started, received
        received += chunk
    return None, received


def livez(server: Server, timeout_s: float = 5.0) -> int:
    try:
        return httpx.get(f"{server.url}/livez", timeout=timeout_s).status_code
    except httpx.HTTPError:
        return 0


def test_half_open_flood_leaves_livez_answering(server: Server) -> None:
    """Twelve times the cap in half heads: /livez answers, the service holds the cap."""
    baseline = open_fds(server)
    with half_heads(server, FLOOD) as held:
        assert len(held) == FLOOD
        answers = [livez(server) for _ in range(5)]
        held_fds = open_fds(server)
        let_go = sum(closed_by_service(sock) for sock in held)
    assert answers == [200] * 5
    assert held_fds <= baseline + CAP + FD_SLACK, (baseline, held_fds)
    # The oldest half heads made room: all but the cap's worth were closed.
    assert let_go >= FLOOD - CAP


def test_stalled_bodies_with_a_token_leave_livez_answering(server: Server) -> None:
    """A token holder's bodies that stop after the head are let go for new connections."""
    stalled_head = (
        b"POST /repl HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n{"
    )
    baseline = open_fds(server)
    held: list[socket.socket] = []
    try:
        for _ in range(3 * CAP):
            sock = socket.create_connection(address(server), timeout=5)
            sock.sendall(stalled_head)
            held.append(sock)
        # A body just begun keeps its place for a moment (CLIENT_GRACE_S); then it yields.
        time.sleep(CLIENT_GRACE_S + 0.5)
        answers = [livez(server) for _ in range(5)]
        held_fds = open_fds(server)
    finally:
        for sock in held:
            sock.close()
    assert answers == [200] * 5
    assert held_fds <= baseline + CAP + FD_SLACK, (baseline, held_fds)


def test_header_sent_a_byte_at_a_time_is_cut_at_the_deadline(server: Server) -> None:
    # Long enough that, at two bytes a second, it would still be arriving past the deadline.
    head = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 40 + b"\r\n\r\n"
    sock = socket.create_connection(address(server), timeout=5)
    started = time.monotonic()
    closed_at = None
    reply = b""
    try:
        for byte in head:
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed_at = time.monotonic() - started
                break
            waited, received = wait_for_close(sock, 0.5)
            reply += received
            if waited is not None:
                closed_at = time.monotonic() - started
                break
            if time.monotonic() - started > HEADER_TIMEOUT_S + SLACK_S:
                break
    finally:
        sock.close()
    assert closed_at is not None
    assert closed_at <= HEADER_TIMEOUT_S + SLACK_S
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b'"code": "request_timeout"' in reply


def test_idle_connection_is_closed_at_the_deadline(server: Server) -> None:
    with socket.create_connection(address(server), timeout=5) as sock:
        closed_after, sent = wait_for_close(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert closed_after is not None
    assert sent == b""  # it asked nothing, so it is told nothing


def test_half_head_after_a_keep_alive_response_is_cut(server: Server) -> None:
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(HALF_HEAD)
        closed_after, sent = wait_for_close(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert closed_after is not None
    # The first reply's body may arrive in the same read as the 408.
    assert b"HTTP/1.1 408 " in first + sent


def test_stalled_body_is_cut_off(server: Server) -> None:
    head = (
        b"POST /repl HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n"
    )
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(head + b'{"code": "1 +')
        closed_after, sent = wait_for_close(sock, STALL_TIMEOUT_S + SLACK_S)
    assert closed_after is not None
    assert sent.startswith(b"HTTP/1.1 408 "), sent[:200]
    assert b"stopped arriving" in sent
    assert livez(server) == 200
    log = (server.state_dir.parent / "server.log").read_text()
    assert "Traceback" not in log


def test_past_the_cap_with_every_connection_served_is_a_json_503(server: Server) -> None:
    """Only when no connection waits on its client does a new one get 503 server_busy."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        made = client.post("/repl", json={"code": "1"})
        assert made.status_code == 200, made.text
        session_id = made.json()["session_id"]
    # One run sleeps; the others queue for the same session: all are the service's work.
    busy: list[int] = []

    def run() -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            body = {"command": "sleep 2", "session_id": session_id}
            busy.append(client.post("/command", json=body).status_code)

    runs = [threading.Thread(target=run) for _ in range(CAP)]
    for thread in runs:
        thread.start()
    # Probe only once the runs' heads are in: a probe that comes first takes the place of
    # a connection still sending its head, as the cap's eviction says it must.
    time.sleep(0.3)
    refusal = None
    deadline = time.monotonic() + 1.5
    while refusal is None and time.monotonic() < deadline:
        reply = httpx.get(f"{server.url}/livez", timeout=5)
        if reply.status_code == 503:
            refusal = reply
    for thread in runs:
        thread.join()
    assert len(busy) == CAP
    assert refusal is not None, "no 503 while every connection was being served"
    assert refusal.json()["code"] == "server_busy"
    assert set(refusal.json()) == {"error", "suggestion", "code"}
    assert livez(server) == 200


def test_derived_cap_keeps_the_service_out_of_emfile(tmp_path: Path) -> None:
    """With descriptors for 512, 700 half heads: the derived cap leaves /livez answering."""
    limit = 512
    running = start_server(tmp_path, env={"CODESHERPA_FD_RESERVE": "100"}, fd_limit=limit)
    try:
        with half_heads(running, 700, connect_timeout_s=3) as held:
            answers = [livez(running) for _ in range(3)]
            held_fds = open_fds(running)
            assert len(held) > limit  # the flood was larger than the descriptor limit
    finally:
        stop_server(running)
    log = (tmp_path / "server.log").read_text()
    assert "out of system resource" not in log
    assert answers == [200] * 3
    assert held_fds < limit


def test_emfile_storm_logs_a_bounded_number_of_lines(tmp_path: Path) -> None:
    """A cap set above what 256 descriptors allow: EMFILE, and a log that stays small."""
    running = start_server(
        tmp_path,
        env={
            "CODESHERPA_MAX_CONNECTIONS": "5000",
            "CODESHERPA_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        },
        fd_limit=256,
    )
    try:
        before = log_size(running)
        service = psutil.Process(running.process.pid)
        descriptors = 0
        with half_heads(running, 400, connect_timeout_s=0.2):
            for _ in range(40):
                descriptors = max(descriptors, service.num_fds())
                time.sleep(0.05)
            grown = log_size(running) - before
        # The held heads time out; the service serves again.
        recovered = any(livez(running, timeout_s=2) == 200 for _ in range(10))
    finally:
        stop_server(running)
    # The storm did happen: every descriptor was taken.  asyncio's accept loop logs each
    # failed accept (with its traceback); uvloop's keeps quiet, and either way the log
    # stays small.
    assert descriptors >= 256 - 8, descriptors
    assert grown < 4096, grown
    assert recovered


def test_response_the_client_stops_reading_is_cut_off(server: Server) -> None:
    """A download the client never reads does not hold the connection (nor the file) for good."""
    size = 15_000_000  # more than the kernel's send and receive buffers together
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        made = client.post("/repl", json={"code": f"open('big.bin', 'wb').write(bytes({size}))"})
        assert made.status_code == 200, made.text
        session_id = made.json()["session_id"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(address(server))
        sock.sendall(
            f"GET /sessions/{session_id}/files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        time.sleep(STALL_TIMEOUT_S + SLACK_S)
        # Now read what arrived: the service gave up before sending it all.
        received = 0
        sock.settimeout(2)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
    finally:
        sock.close()
    assert 0 < received < size
    assert livez(server) == 200
