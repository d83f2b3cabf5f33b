"""CodeSherpa beside its anchors: an empty FastAPI endpoint and a Jupyter kernel.

Run as root, from the repository root, inside a PID namespace (``make bench`` does):

    unshare --pid --fork --kill-child --mount-proc .venv/bin/python -m bench

Everything is measured in one run, side by side, and every target is a ratio between
figures of that run (or a bound on one of them), because this machine is noisy.  Where
it can, the run interleaves the sides sample by sample, so a burst of load from
elsewhere lands on all of them alike.  It prints the table of targets and writes
``latest.json`` (figures and ratios) and ``scaling.png`` to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from bench import compare, jupyter_anchor, report
from bench.client import BenchError
from bench.counts import FULL, QUICK
from bench.log import log
from bench.memory import measure_idle_memory
from bench.neighbours import measure_neighbours
from bench.profile import measure_profile
from bench.round_trips import measure_bare_worker_floor, measure_round_trips
from bench.scaling import measure_scaling, plot_scaling
from bench.servers import BENCH_POLICY, ROOT, Server, start_codesherpa, start_empty_endpoint
from bench.sse import EventStreamError
from bench.starts import measure_starts
from bench.stats import MB, rounded, uss_bytes
from bench.streaming import measure_streaming
from bench.throughput import measure_throughput

RESULTS = ROOT / "bench" / "results"
# A quick run checks that the benchmark works; its figures mean little, so they never
# replace the committed results.
QUICK_RESULTS = Path(tempfile.gettempdir()) / "codesherpa-bench-quick"
HOST_PID_NAMESPACE_INODE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the kernel's first PID namespace


# -- the run ------------------------------------------------------------------------------


def _check_environment() -> str | None:
    if os.geteuid() != 0:
        return "the benchmark runs the service as root (it drops every worker to its own uid)"
    if os.stat("/proc/self/ns/pid").st_ino == HOST_PID_NAMESPACE_INODE:
        return (
            "run it inside a PID namespace, as the tests run: "
            "unshare --pid --fork --kill-child --mount-proc .venv/bin/python -m bench"
        )
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = QUICK if args.quick else FULL
    use_jupyter = not args.no_jupyter and jupyter_anchor.available()
    if not use_jupyter:
        log("Jupyter anchor skipped (pip install -e '.[bench]' to include it)")
    out = Path(args.out or (QUICK_RESULTS if args.quick else RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "counts": asdict(counts),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "policy": "bench/policy.toml",
            "jupyter": use_jupyter,
            "out": str(out),
        }
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codesherpa-bench-") as tmp_name:
        tmp = Path(tmp_name)
        jupyter_env = jupyter_anchor.environment(str(tmp / "jupyter")) if use_jupyter else None
        log("starting the empty endpoint and CodeSherpa")
        empty = start_empty_endpoint(tmp)
        servers: list[Server] = [empty]
        try:
            codesherpa = start_codesherpa(tmp)
            servers.append(codesherpa)
            kernel = None
            jupyter_idle: dict[str, float] = {}
            if jupyter_env is not None:
                log("starting the Jupyter kernel of the round trips")
                kernel = jupyter_anchor.Kernel(jupyter_env)
            try:
                if kernel is not None:
                    time.sleep(1.0)
                    jupyter_idle["idle_uss_mb"] = rounded(
                        uss_bytes([psutil.Process(kernel.pid)]) / MB, 2
                    )
                log("round trips (empty endpoint, CodeSherpa, Jupyter interleaved)")
                results["round_trip"] = measure_round_trips(
                    counts, codesherpa.url, empty.url, kernel
                )
                log("round trips (empty endpoint and bare worker interleaved)")
                results["bare_worker_floor"] = measure_bare_worker_floor(counts, empty.url)
                if kernel is not None:
                    kernel.execute_until_result(jupyter_anchor.FIRST_RESULT)
                    time.sleep(0.5)
                    jupyter_idle["uss_after_pandas_mb"] = rounded(
                        uss_bytes([psutil.Process(kernel.pid)]) / MB, 2
                    )
            finally:
                if kernel is not None:
                    kernel.shutdown()
            log("session starts (CodeSherpa and Jupyter interleaved)")
            results["session_start"] = measure_starts(counts, codesherpa.url, jupyter_env)
            log(f"idle memory of {counts.idle_sessions} sessions")
            results["idle_memory"] = {
                "codesherpa": measure_idle_memory(counts, codesherpa.url),
                "jupyter": jupyter_idle or None,
            }
            log(f"throughput, {counts.clients} sessions at once")
            results["throughput"] = measure_throughput(counts, codesherpa.url, empty.url)
            log("a neighbour's round trips: idle, beside a CPU burn, beside a fork bomb")
            results["neighbours"] = measure_neighbours(counts, codesherpa.url)
            log(
                f"streaming: first stdout chunk and a {counts.stream_mb} MB print, "
                "CodeSherpa (SSE) and Jupyter (iopub) in turn"
            )
            try:
                results["streaming"] = measure_streaming(
                    counts, codesherpa.url, jupyter_env, BENCH_POLICY
                )
            except (BenchError, EventStreamError) as exc:
                # One measure that fails leaves the run with every other figure.
                log(f"streaming failed: {exc}")
                results["streaming"] = {"error": str(exc)}
            if not args.no_scaling:
                log(f"scaling to {counts.scaling_max} sessions")
                results["scaling"] = measure_scaling(counts, codesherpa.url)
                plot_scaling(results["scaling"], out / "scaling.png")
            if args.profile:
                log(f"profiling the service with py-spy, 3 x {args.profile} s")
                try:
                    results["profile"] = measure_profile(
                        codesherpa.url, codesherpa.pid, out, tmp, args.profile
                    )
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    log(f"profiling failed: {exc}")
                    results["profile"] = {"error": str(exc)}
        finally:
            for server in reversed(servers):
                server.stop()
    results["meta"]["duration_s"] = round(time.monotonic() - began, 1)
    results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = report.evaluate(results)
    results["ratios"] = {row["key"]: row["ratio"] for row in results["targets"]}
    (out / args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n")[0],
        epilog="python -m bench compare REF: a trivial run beside an earlier commit's "
        "(see --help there)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks it runs")
    parser.add_argument("--no-jupyter", action="store_true", help="skip the Jupyter anchor")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1..200 scaling run")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="SECONDS",
        default=0,
        help="also profile the service under trivial /repl load with py-spy",
    )
    parser.add_argument(
        "--out",
        help=f"directory of the results (default {RESULTS.relative_to(ROOT)}, "
        f"or {QUICK_RESULTS} with --quick)",
    )
    parser.add_argument("--json", default="latest.json", help="file name of the JSON results")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    is_comparison = argv[:1] == ["compare"]
    args = (compare.build_parser() if is_comparison else build_parser()).parse_args(
        argv[1:] if is_comparison else argv
    )
    problem = _check_environment()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    if is_comparison:
        return compare.main(args)
    results = run(args)
    print(report.render(results))
    print(f"\nwritten: {results['meta']['out']}/{args.json}")
    return 0
