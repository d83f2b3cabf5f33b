"""`make bench` works: a quick run of the benchmark writes every figure and ratio.

It asserts that the figures exist, never how large they are: timing assertions would
fail on a loaded machine and prove nothing on an idle one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[2]
HOST_PID_NAMESPACE_INODE = 0xEFFFFFFC
# Ratios that need the Jupyter kernel; without jupyter_client they are null.
JUPYTER_KEYS = {
    "session_start_speedup_vs_jupyter",
    "repl_p50_vs_jupyter",
    "idle_uss_vs_jupyter",
    "stream_first_chunk_vs_jupyter",
    "stream_throughput_vs_jupyter",
}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the service runs as root"),
    pytest.mark.skipif(
        os.stat("/proc/self/ns/pid").st_ino == HOST_PID_NAMESPACE_INODE,
        reason="the benchmark runs inside a PID namespace (make test provides one)",
    ),
]


def jupyter_installed() -> bool:
    try:
        import ipykernel  # noqa: F401
        import jupyter_client  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(600)
def test_a_quick_run_writes_every_metric(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "latest.json").read_text())

    assert set(METRIC_KEYS) <= set(results["ratios"])
    jupyter = jupyter_installed()
    for key in METRIC_KEYS:
        if key in JUPYTER_KEYS and not jupyter:
            assert results["ratios"][key] is None
        else:
            assert isinstance(results["ratios"][key], float), key
    for row in results["targets"]:
        assert row["target"] in run.stdout
    for section in ("round_trip", "session_start", "idle_memory", "throughput", "neighbours"):
        assert results[section], section
    # The streamed print reached the client, within the policy's output cap.
    streamed = results["streaming"]["codesherpa"]["throughput"]
    assert 0 < streamed["delivered_bytes"] <= 2 * results["streaming"]["output_cap_chars"] + 200
    assert results["neighbours"]["cpu_burn"]["hostile_status"] in ("timeout", "killed")
    assert results["neighbours"]["fork_bomb"]["hostile_status"] in ("timeout", "killed")
    assert results["scaling"]["memory"]
    assert (tmp_path / "scaling.png").stat().st_size > 0
