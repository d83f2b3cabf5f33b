"""Start and stop a real service process on loopback."""

from __future__ import annotations

import functools
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
TEST_POLICY = ROOT / "tests" / "policies" / "test.toml"
START_TIMEOUT_S = 120
# The operator's token of every test server: /metrics and /readyz's detail need it.
ADMIN_TOKEN = "operator-token-of-the-test-server"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    state_dir: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    tmp: Path,
    env: dict[str, str | None] | None = None,
    policy: Path = TEST_POLICY,
    fd_limit: int | None = None,
    port: int | None = None,
) -> Server:
    """A service on a free port of loopback (or ``port``, for a policy that names it); a
    variable set to None in ``env`` is unset.

    ``fd_limit`` sets both the soft and the hard RLIMIT_NOFILE of the service.
    """
    port = port or free_port()
    state_dir = tmp / "state"
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CODESHERPA_STATE_DIR": str(state_dir),
        "CODESHERPA_POLICY": str(policy),
        "CODESHERPA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CODESHERPA_ADMIN_TOKEN": ADMIN_TOKEN,
        **(env or {}),
    }
    environment = {name: value for name, value in environment.items() if value is not None}
    with open(tmp / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            env=environment,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if fd_limit is None else functools.partial(_limit_fds, fd_limit),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((tmp / "server.log").read_text())
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Server(url, process, state_dir)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not become ready:\n" + (tmp / "server.log").read_text())


def _limit_fds(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def audit_entries(
    path: Path, until: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30
) -> list[dict[str, Any]]:
    """The audit log's entries once ``until`` holds for them (or as they are at the deadline).

    The service writes a run's line just after it has sent the reply.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_text() if path.exists() else ""
        whole_lines = text[: text.rfind("\n") + 1]  # a line being written is not one yet
        entries = [json.loads(line) for line in whole_lines.splitlines()]
        if until(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


def run_cell(client: httpx.Client, session_id: str, code: str | list[str]) -> dict[str, Any]:
    """POST /repl in a session; the reply, which must be a 200."""
    response = client.post("/repl", json={"code": code, "session_id": session_id})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply
