"""The service's event loop runs with a short time slice; nothing it starts inherits it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import psutil
import pytest

from bench.stats import uid_from_isolation
from sandbox import scheduling
from tests.api.server import ROOT, Server


@pytest.fixture(scope="module")
def custom_slices() -> None:
    # Asked of a throwaway process: this kernel may predate custom slices (6.12).
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sandbox import scheduling; print(scheduling.use_short_slice())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    if probe.stdout.startswith("default slice"):
        pytest.skip(probe.stdout.strip())


def test_the_event_loop_has_the_short_slice_and_no_session_process_inherits_it(
    custom_slices: None, server: Server, client: httpx.Client
) -> None:
    session_id = client.post("/sessions").json()["session_id"]
    client.post("/repl", json={"code": "import time", "session_id": session_id})
    uid = uid_from_isolation(client.get(f"/sessions/{session_id}").json()["isolation"])
    assert uid is not None

    service = psutil.Process(server.process.pid)
    workers = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
    zygotes = [p for p in service.children() if "sandbox.zygote" in p.cmdline()]
    assert workers
    assert zygotes

    # The main thread serves every request.
    assert scheduling.slice_of(service.pid) == scheduling.SHORT_SLICE_NS
    for process in zygotes + workers:
        for thread in process.threads():
            assert scheduling.slice_of(thread.id) != scheduling.SHORT_SLICE_NS, process
