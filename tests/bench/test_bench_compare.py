"""`python -m bench compare REF` times trivial runs of REF's service beside the current one's.

As in the quick run's test, only that the figures exist is asserted, never their size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_PID_NAMESPACE_INODE = 0xEFFFFFFC

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the service runs as root"),
    pytest.mark.skipif(
        os.stat("/proc/self/ns/pid").st_ino == HOST_PID_NAMESPACE_INODE,
        reason="the benchmark runs inside a PID namespace (make test provides one)",
    ),
]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.timeout(300)
def test_a_comparison_times_both_services_in_alternating_blocks(tmp_path: Path) -> None:
    work_tree_before = git("status", "--porcelain")

    run = bench(
        "compare", "HEAD", "--rounds", "2", "--block", "15", "--warmup", "3", "--out", str(tmp_path)
    )

    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    results = json.loads((tmp_path / "compare-HEAD.json").read_text())
    assert results["commits"]["HEAD"] == git("rev-parse", "HEAD").strip()
    for side in ("current", "HEAD"):
        assert results[side]["n"] == 2 * 15
        assert len(results["p50_by_round_ms"][side]) == 2
    assert isinstance(results["ratio_p50"], float)
    assert isinstance(results["ratio_p99"], float)
    assert "current / HEAD" in run.stdout
    # REF came from git's objects: the work tree is as it was.
    assert git("status", "--porcelain") == work_tree_before


def test_a_name_that_is_no_commit_is_refused_before_anything_starts(tmp_path: Path) -> None:
    run = bench("compare", "no-such-commit-anywhere", "--out", str(tmp_path))

    assert run.returncode == 2
    assert "'no-such-commit-anywhere' names no commit" in run.stdout
    assert not list(tmp_path.iterdir())
