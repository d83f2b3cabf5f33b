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
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import jupyter_anchor, report
from bench.client import (
    CPU_BURN,
    FIRST_RESULT,
    FORK_BOMB,
    TRIVIAL,
    BenchError,
    CodeSherpa,
    bare_worker,
    empty_endpoint,
)
from bench.servers import ROOT, Server, start_codesherpa, start_empty_endpoint
from bench.stats import processes_by_uid, session_uid_processes, summary, uss_bytes

RESULTS = ROOT / "bench" / "results"
# A quick run checks that the benchmark works; its figures mean little, so they never
# replace the committed results.
QUICK_RESULTS = Path(tempfile.gettempdir()) / "codesherpa-bench-quick"
HOST_PID_NAMESPACE_INODE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the kernel's first PID namespace
MB = 2**20


@dataclass(frozen=True)
class Counts:
    round_trips: int  # interleaved samples per side
    warmup: int
    jupyter_starts: int
    starts_per_jupyter_start: int  # CodeSherpa session starts between two kernel starts
    idle_sessions: int
    clients: int  # concurrent sessions of the throughput figure
    requests_per_client: int
    throughput_rounds: int  # alternating empty / CodeSherpa rounds
    neighbour_requests: int
    hostile_timeout_s: float
    scaling_max: int


FULL = Counts(
    round_trips=600,
    warmup=30,
    jupyter_starts=5,
    starts_per_jupyter_start=6,
    idle_sessions=50,
    clients=8,
    requests_per_client=100,
    throughput_rounds=3,
    neighbour_requests=800,
    hostile_timeout_s=10.0,
    scaling_max=200,
)
QUICK = Counts(
    round_trips=20,
    warmup=3,
    jupyter_starts=1,
    starts_per_jupyter_start=2,
    idle_sessions=3,
    clients=8,
    requests_per_client=5,
    throughput_rounds=1,
    neighbour_requests=20,
    hostile_timeout_s=3.0,
    scaling_max=4,
)
SCALING_CHECKPOINTS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 125, 150, 175, 200)
# Between two session starts, as between two users' first requests: the zygote refills
# its warm pool after handing out a worker (bench/confinement_cost.py pauses alike).
PAUSE_BETWEEN_STARTS_S = 0.1
JUPYTER_SETTLE_S = 0.5


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)


# -- round trips ------------------------------------------------------------------------


def measure_round_trips(
    counts: Counts, cs_url: str, empty_url: str, kernel: jupyter_anchor.Kernel | None
) -> dict[str, Any]:
    """Trivial round trips, one sample of each side per round, in rotating order."""
    codesherpa = CodeSherpa(cs_url)
    empty = empty_endpoint(empty_url)
    session_id = codesherpa.create_session()
    codesherpa.run_ok(session_id, FIRST_RESULT)
    repl = codesherpa.prepared_run(session_id, TRIVIAL)
    samples: dict[str, list[float]] = {"empty": [], "codesherpa": [], "jupyter": []}
    in_service: list[float] = []

    def sample_codesherpa(keep: bool) -> None:
        took, body = codesherpa.timed(repl)
        if keep:
            reply = json.loads(body)
            if reply["status"] != "ok" or reply["result"] != "2":
                raise BenchError(f"1+1 gave {reply}")
            samples["codesherpa"].append(took)
            in_service.append(float(reply["duration_ms"]))

    def sample_empty(keep: bool) -> None:
        took = empty.timed()
        if keep:
            samples["empty"].append(took)

    def sample_jupyter(keep: bool) -> None:
        if kernel is None:
            return
        took = kernel.execute_until_reply(TRIVIAL) * 1000
        if keep:
            samples["jupyter"].append(took)

    sides: list[Callable[[bool], None]] = [sample_empty, sample_codesherpa, sample_jupyter]
    try:
        for index in range(counts.warmup + counts.round_trips):
            keep = index >= counts.warmup
            shift = index % len(sides)
            for side in sides[shift:] + sides[:shift]:
                side(keep)
        codesherpa.delete(session_id)
    finally:
        codesherpa.close()
        empty.close()
    result: dict[str, Any] = {
        "empty": summary(samples["empty"]),
        "codesherpa": summary(samples["codesherpa"]),
        # The part of a /repl round trip spent in Session.run (lock, worker exchange),
        # as the service reports it in duration_ms; the rest is HTTP, routing, replies.
        "codesherpa_in_session_run": summary(in_service),
        "jupyter": summary(samples["jupyter"]) if samples["jupyter"] else None,
    }
    return result


def measure_bare_worker_floor(counts: Counts, empty_url: str) -> dict[str, Any]:
    """The bare worker's round trip beside the empty endpoint's, alternating.

    A rotation of its own, so that adding this anchor leaves the judged round trips as
    they were measured: every side in a rotation runs with caches the others evicted.
    """
    empty = empty_endpoint(empty_url)
    bare = bare_worker(empty_url, 0)
    samples: dict[str, list[float]] = {"empty": [], "bare_worker": []}
    try:
        for index in range(counts.warmup + counts.round_trips):
            order = [("empty", empty), ("bare_worker", bare)]
            for name, anchor in order[index % 2 :] + order[: index % 2]:
                took = anchor.timed()
                if index >= counts.warmup:
                    samples[name].append(took)
    finally:
        empty.close()
        bare.close()
    return {name: summary(taken) for name, taken in samples.items()}


# -- session starts -----------------------------------------------------------------------


def measure_starts(
    counts: Counts, cs_url: str, jupyter_env: dict[str, str] | None
) -> dict[str, Any]:
    """New session to the value of the first pandas cell, CodeSherpa and Jupyter interleaved."""
    codesherpa = CodeSherpa(cs_url)
    totals: list[float] = []
    creates: list[float] = []
    kernels: list[float] = []
    try:
        for _ in range(counts.jupyter_starts):
            for _ in range(counts.starts_per_jupyter_start):
                session_id, total, create = codesherpa.start_to_first_result()
                totals.append(total)
                creates.append(create)
                codesherpa.delete(session_id)
                time.sleep(PAUSE_BETWEEN_STARTS_S)
            if jupyter_env is not None:
                started = time.perf_counter()
                kernel = jupyter_anchor.Kernel(jupyter_env)
                try:
                    _, value = kernel.execute_until_result(jupyter_anchor.FIRST_RESULT)
                    kernels.append((time.perf_counter() - started) * 1000)
                    if not value:
                        raise BenchError("the kernel's pandas reported no version")
                finally:
                    kernel.shutdown()
                # A kernel takes a moment to wind down (its process, the client's
                # threads); the next CodeSherpa start should not pay for that.
                time.sleep(JUPYTER_SETTLE_S)
    finally:
        codesherpa.close()
    return {
        "codesherpa": summary(totals),
        "codesherpa_post_sessions": summary(creates),
        "jupyter": summary(kernels) if kernels else None,
        "codesherpa_samples_ms": [_rounded(x, 2) for x in totals],
        "jupyter_samples_ms": [_rounded(x, 1) for x in kernels],
    }


# -- idle memory --------------------------------------------------------------------------


def _zygote_process() -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "sandbox.zygote" in cmdline:
            return process
    return None


def measure_idle_memory(counts: Counts, cs_url: str) -> dict[str, Any]:
    """USS of each idle session's processes, summed and divided by the session count."""
    codesherpa = CodeSherpa(cs_url)
    sessions: dict[str, int] = {}
    try:
        for _ in range(counts.idle_sessions):
            session_id, _, _ = codesherpa.start_to_first_result()
            sessions[session_id] = codesherpa.uid(session_id)
            time.sleep(PAUSE_BETWEEN_STARTS_S)
        time.sleep(2.0)  # idle
        by_uid = processes_by_uid(sessions.values())
        uss = [uss_bytes(by_uid[uid]) for uid in sessions.values()]
        pss = []
        for uid in sessions.values():
            total = 0
            for process in by_uid[uid]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_full_info().pss
            pss.append(total)
        session_uids = set(sessions.values())
        pool = [p for p in session_uid_processes() if p.uids().real not in session_uids]
        zygote = _zygote_process()
        zygote_uss = uss_bytes([zygote]) if zygote else 0
        zygote_rss = zygote.memory_info().rss if zygote else 0
        for session_id in sessions:
            codesherpa.delete(session_id)
    finally:
        codesherpa.close()
    return {
        "sessions": len(sessions),
        "processes_per_session": statistics.mean(len(by_uid[uid]) for uid in sessions.values()),
        "uss_per_session_mb": _rounded(sum(uss) / len(uss) / MB, 2),
        "uss_max_mb": _rounded(max(uss) / MB, 2),
        "pss_per_session_mb": _rounded(sum(pss) / len(pss) / MB, 2),
        "warm_pool_workers": len(pool),
        "zygote_uss_mb": _rounded(zygote_uss / MB, 1),
        "zygote_rss_mb": _rounded(zygote_rss / MB, 1),
    }


# -- throughput ---------------------------------------------------------------------------


def _blast(senders: list[Callable[[], object]], per_client: int) -> float:
    """Requests per second with one thread per sender, all released at once."""
    barrier = threading.Barrier(len(senders) + 1)
    failures: list[BaseException] = []

    def loop(send: Callable[[], object]) -> None:
        barrier.wait()
        try:
            for _ in range(per_client):
                send()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failures.append(exc)

    threads = [threading.Thread(target=loop, args=(send,)) for send in senders]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"{len(failures)} clients failed; first: {failures[0]!r}")
    return len(senders) * per_client / elapsed


def measure_throughput(counts: Counts, cs_url: str, empty_url: str) -> dict[str, Any]:
    """Trivial runs per second, `clients` sessions at once, beside the anchor's routes."""
    setup = CodeSherpa(cs_url)
    session_ids = [setup.create_session() for _ in range(counts.clients)]
    clients = [CodeSherpa(cs_url) for _ in session_ids]
    empties = [empty_endpoint(empty_url) for _ in session_ids]
    bares = [bare_worker(empty_url, index) for index in range(len(session_ids))]
    requests = [c.prepared_run(s, TRIVIAL) for c, s in zip(clients, session_ids, strict=True)]
    for client, session_id in zip(clients, session_ids, strict=True):
        client.run_ok(session_id, TRIVIAL)

    def codesherpa_sender(client: CodeSherpa, request: bytes) -> Callable[[], object]:
        return lambda: client.timed(request)

    senders: dict[str, list[Callable[[], object]]] = {
        "empty": [anchor.timed for anchor in empties],
        "bare_worker": [anchor.timed for anchor in bares],
        "codesherpa": [codesherpa_sender(c, r) for c, r in zip(clients, requests, strict=True)],
    }
    rates: dict[str, list[float]] = {side: [] for side in senders}
    try:
        # A short warm-up of each, then alternating rounds.
        for side in senders.values():
            _blast(side, max(1, counts.requests_per_client // 10))
        for _ in range(counts.throughput_rounds):
            for name, side in senders.items():
                rates[name].append(_blast(side, counts.requests_per_client))
        for session_id in session_ids:
            setup.delete(session_id)
    finally:
        for client in (setup, *clients):
            client.close()
        for anchor in (*empties, *bares):
            anchor.close()
    return {
        "clients": counts.clients,
        "requests_per_round": counts.clients * counts.requests_per_client,
        **{f"{side}_rps": _rounded(statistics.median(rates[side]), 1) for side in rates},
        **{f"{side}_rps_rounds": [_rounded(r, 1) for r in rates[side]] for side in rates},
    }


# -- hostile neighbours -------------------------------------------------------------------


def _neighbour_samples(client: CodeSherpa, request: bytes, n: int, until: float) -> list[float]:
    samples = []
    for _ in range(n):
        if time.monotonic() > until:
            break
        took, _ = client.timed(request)
        samples.append(took)
    return samples


def _hostile_phase(
    counts: Counts, cs_url: str, neighbour: CodeSherpa, request: bytes, code: str
) -> dict[str, Any]:
    """The neighbour's round trips while another session runs code, until its timeout."""
    hostile = CodeSherpa(cs_url)
    try:
        session_id = hostile.create_session()
        hostile.run_ok(session_id, TRIVIAL)
        uid = hostile.uid(session_id)
        replies: list[dict[str, Any]] = []
        timeout = counts.hostile_timeout_s

        def attack() -> None:
            replies.append(hostile.run(session_id, code, timeout=timeout))

        thread = threading.Thread(target=attack)
        started = time.monotonic()
        thread.start()
        time.sleep(0.5)  # let it take its CPU and its pids
        during = len(processes_by_uid([uid])[uid])
        # Stop before the service's timeout ends the attack: every sample is taken under it.
        samples = _neighbour_samples(
            neighbour, request, counts.neighbour_requests, started + timeout - 0.3
        )
        thread.join(timeout + 30)
        if not replies:
            raise BenchError("the hostile run did not answer")
        reply = replies[0]
        after = len(processes_by_uid([uid])[uid])
        # Read again a moment later: processes a run left behind keep running.
        time.sleep(1.0)
        settled = len(processes_by_uid([uid])[uid])
        # The session's next run: does it answer normally after the attack?
        next_run = hostile.run(session_id, TRIVIAL)
        hostile.delete(session_id)
    finally:
        hostile.close()
    return {
        "neighbour": summary(samples),
        "hostile_status": reply["status"],
        "hostile_error": (reply.get("error") or "")[:200],
        "hostile_restarted": reply.get("restarted"),
        "hostile_processes_during": during,
        "hostile_processes_after_reply": after,
        "hostile_processes_1s_after_reply": settled,
        "hostile_next_run_status": next_run["status"],
    }


def measure_neighbours(counts: Counts, cs_url: str) -> dict[str, Any]:
    neighbour = CodeSherpa(cs_url)
    session_id = neighbour.create_session()
    neighbour.run_ok(session_id, FIRST_RESULT)
    request = neighbour.prepared_run(session_id, TRIVIAL)
    idle_other = CodeSherpa(cs_url)
    try:
        _neighbour_samples(neighbour, request, counts.warmup, float("inf"))
        # The idle baseline: another session exists and does nothing.
        other = idle_other.create_session()
        idle_other.run_ok(other, TRIVIAL)
        idle_before_burn = _neighbour_samples(
            neighbour, request, counts.neighbour_requests, float("inf")
        )
        burn = _hostile_phase(counts, cs_url, neighbour, request, CPU_BURN)
        idle_before_bomb = _neighbour_samples(
            neighbour, request, counts.neighbour_requests, float("inf")
        )
        bomb = _hostile_phase(counts, cs_url, neighbour, request, FORK_BOMB)
        idle_other.delete(other)
        neighbour.delete(session_id)
    finally:
        neighbour.close()
        idle_other.close()
    return {
        "idle_before_cpu_burn": summary(idle_before_burn),
        "cpu_burn": burn,
        "idle_before_fork_bomb": summary(idle_before_bomb),
        "fork_bomb": bomb,
    }


# -- scaling ------------------------------------------------------------------------------


def measure_scaling(counts: Counts, cs_url: str) -> dict[str, Any]:
    """Session start time and per-session USS as live sessions grow to scaling_max."""
    codesherpa = CodeSherpa(cs_url)
    checkpoints = sorted({c for c in SCALING_CHECKPOINTS if c <= counts.scaling_max})
    checkpoints = sorted({*checkpoints, counts.scaling_max})
    sessions: dict[str, int] = {}
    starts: list[dict[str, float]] = []
    memory: list[dict[str, float]] = []
    try:
        while len(sessions) < counts.scaling_max:
            session_id, total, create = codesherpa.start_to_first_result()
            sessions[session_id] = codesherpa.uid(session_id)
            starts.append(
                {
                    "sessions": len(sessions),
                    "start_ms": _rounded(total),
                    "create_ms": _rounded(create),
                }
            )
            if len(sessions) in checkpoints:
                time.sleep(1.0)
                by_uid = processes_by_uid(sessions.values())
                total_uss = sum(uss_bytes(by_uid[uid]) for uid in sessions.values())
                memory.append(
                    {
                        "sessions": len(sessions),
                        "uss_per_session_mb": _rounded(total_uss / len(sessions) / MB, 3),
                        "uss_total_mb": _rounded(total_uss / MB, 1),
                    }
                )
                log(
                    f"scaling: {len(sessions)} sessions, {memory[-1]['uss_per_session_mb']} MB each"
                )
            time.sleep(PAUSE_BETWEEN_STARTS_S)
        started = time.perf_counter()
        for session_id in sessions:
            codesherpa.delete(session_id)
        delete_ms = (time.perf_counter() - started) * 1000 / max(1, len(sessions))
    finally:
        codesherpa.close()
    bands = []
    for low, high in zip([0, *checkpoints[:-1]], checkpoints, strict=True):
        band = [s["start_ms"] for s in starts if low < s["sessions"] <= high]
        if band:
            bands.append({"sessions": high, "start_median_ms": _rounded(statistics.median(band))})
    return {
        "starts": starts,
        "start_median_by_band": bands,
        "memory": memory,
        "delete_ms_per_session": _rounded(delete_ms),
    }


def plot_scaling(scaling: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [s["sessions"] for s in scaling["starts"]]
    left.scatter(xs, [s["start_ms"] for s in scaling["starts"]], s=8, alpha=0.4, label="each start")
    bands = scaling["start_median_by_band"]
    left.plot(
        [b["sessions"] for b in bands],
        [b["start_median_ms"] for b in bands],
        marker="o",
        color="C1",
        label="median per band",
    )
    left.axhline(20, color="C3", linestyle="--", linewidth=1, label="target 20 ms")
    left.set_xlabel("live sessions")
    left.set_ylabel("new session → first pandas result (ms)")
    left.set_title("session start")
    left.legend()
    memory = scaling["memory"]
    right.plot(
        [m["sessions"] for m in memory],
        [m["uss_per_session_mb"] for m in memory],
        marker="o",
        label="USS per session",
    )
    right.axhline(4, color="C3", linestyle="--", linewidth=1, label="target 4 MB")
    right.set_xlabel("live sessions")
    right.set_ylabel("private memory per idle session (MB, USS)")
    right.set_ylim(bottom=0)
    right.set_title("memory per session")
    right.legend()
    figure.suptitle("CodeSherpa scaling (bench/policy.toml, one run)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- profile ------------------------------------------------------------------------------


@contextlib.contextmanager
def _load(cs_url: str, scenario: str) -> Iterator[list[int]]:
    """A client looping one scenario until the block ends; yields a count of requests.

    "repl": trivial runs on one session (the hot path); "start": new session, first
    pandas result, delete (the session start path).
    """
    client = CodeSherpa(cs_url)
    session_id = client.create_session()
    client.run_ok(session_id, TRIVIAL)
    request = client.prepared_run(session_id, TRIVIAL)
    stop = threading.Event()
    done = [0]

    def loop() -> None:
        while not stop.is_set():
            if scenario == "repl":
                client.timed(request)
            else:
                started, _, _ = client.start_to_first_result()
                client.delete(started)
                time.sleep(PAUSE_BETWEEN_STARTS_S)
            done[0] += 1

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join()
        client.delete(session_id)
        client.close()


def measure_profile(
    cs_url: str, service_pid: int, out: Path, tmp: Path, seconds: int
) -> dict[str, Any]:
    """py-spy on the service and its children: the /repl hot path, then session starts."""
    from bench import profile

    summaries: dict[str, Any] = {}
    for scenario in ("repl", "start"):
        raw = tmp / f"profile-{scenario}.txt"
        with _load(cs_url, scenario) as done:
            before = done[0]
            profile.record(service_pid, seconds, raw, fmt="raw")
            requests = done[0] - before
        summary_ = profile.summarize(raw)
        summary_["requests_during_recording"] = requests
        (out / f"profile-{scenario}-top.txt").write_text(profile.render(summary_))
        summaries[scenario] = summary_
    with _load(cs_url, "repl"):
        profile.record(service_pid, seconds, out / "profile-repl.svg", fmt="flamegraph")
    return summaries


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
                    jupyter_idle["idle_uss_mb"] = _rounded(
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
                    jupyter_idle["uss_after_pandas_mb"] = _rounded(
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
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
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
    args = build_parser().parse_args(argv)
    problem = _check_environment()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    results = run(args)
    print(report.render(results))
    print(f"\nwritten: {results['meta']['out']}/{args.json}")
    return 0
