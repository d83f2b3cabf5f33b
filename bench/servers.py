"""Start the two HTTP servers the benchmark talks to: CodeSherpa and the empty endpoint.

The same approach as ``tests/api/server.py``: a subprocess on a free loopback port,
ready once ``/readyz`` answers 200.  The benchmark must run as root inside a PID
namespace (see ``bench/run.py``), like the test suite.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH_POLICY = ROOT / "bench" / "policy.toml"
START_TIMEOUT_S = 120.0
# The benchmark is one tenant sending thousands of requests a minute, 8 at once: the
# per-tenant quotas (600/minute, 4 runs at once by default) would answer 429 to the
# benchmark itself.  They are settings, not the sandbox, so they are raised for the run.
# A one-second window keeps the limiter's moving window as short as the default's (600
# entries a minute): `limits` keeps one entry per request for the whole window.
BENCH_SETTINGS = {
    "CODESHERPA_RATE_LIMIT": "100000/second",
    "CODESHERPA_RUNS_AT_ONCE_PER_TENANT": "64",
}


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    state_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.state_dir is not None:
            # The service leaves its (empty) parent cgroup behind; each run's state
            # directory names a new one, so remove it rather than let them pile up.
            from sandbox.confine import cgroup
            from sandbox.zygote_client import cgroup_parent_for

            with contextlib.suppress(OSError, ValueError):
                cgroup.remove_all_sessions(cgroup_parent_for(str(self.state_dir)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(name: str, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited while starting:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"{name} did not become ready:\n{log.read_text()}")


def _start(
    name: str, argv: list[str], env: dict[str, str], tmp: Path, port: int, tree: Path = ROOT
) -> Server:
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(name, process, url, log)
    return Server(name, url, process, log)


def base_environment() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def start_codesherpa(
    tmp: Path, policy: Path = BENCH_POLICY, tree: Path = ROOT, name: str = "codesherpa"
) -> Server:
    """The service of the source tree `tree`, its state under `tmp`.

    `python -m service` run from the tree's root imports that tree's packages before the
    installed ones, and the service starts its zygote from the package it imported.
    """
    port = free_port()
    state_dir = tmp / f"{name}-state"
    env = {
        **base_environment(),
        "CODESHERPA_STATE_DIR": str(state_dir),
        "CODESHERPA_POLICY": str(policy),
        "CODESHERPA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        **BENCH_SETTINGS,
    }
    argv = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    server = _start(name, argv, env, tmp, port, tree)
    server.state_dir = state_dir
    return server


def start_empty_endpoint(tmp: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.anchor_app", "--port", str(port)]
    return _start("empty-endpoint", argv, base_environment(), tmp, port)
