"""Profile the service's hot path with py-spy, and sum the samples by function.

py-spy samples the service and, with ``--subprocesses``, the zygote and the session
workers (they are the service's children), without changing their code.  The raw
("collapsed") output holds one line per distinct stack, ``frame;frame;... count``;
this module adds up, per process, the samples in which a function is on the stack
(inclusive) and on top of it (self).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.client import TRIVIAL, CodeSherpa
from bench.counts import PAUSE_BETWEEN_STARTS_S

_PROCESS_FRAME = re.compile(r"^process (\d+):\"?(.*?)\"?$")
TOP = 25
RATE_HZ = 250
# Inclusive figures are listed for these frames only: the trunk every request shares
# (runpy, uvicorn, the event loop, the middleware chain) says nothing about where to act.
_FOCUS_PACKAGES = frozenset(
    {"service", "sandbox", "limits", "prometheus_client", "logging", "anyio", "json"}
)
_FOCUS_FUNCTIONS = (
    "solve_dependencies ",
    "serialize_response ",
    "run_endpoint_function ",
    "request_body_to_args ",
    "run_in_threadpool ",
    "JSONResponse.render ",
)


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    return found


def record(pid: int, seconds: int, output: Path, fmt: str) -> Path:
    command = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--duration",
        str(seconds),
        "--rate",
        str(RATE_HZ),
        # Only stacks holding their process's GIL: a thread blocked in recv() or in a
        # condition wait is idle, and py-spy cannot tell that for the workers (another uid,
        # not dumpable) on its own.
        "--gil",
        "--format",
        fmt,
        "--output",
        str(output),
    ]
    if fmt == "raw":
        # One entry per function, not per line: the sums below are per function.
        command.append("--function")
    subprocess.run(command, check=True, capture_output=True, timeout=seconds + 60)
    return output


_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


def _package(frame: str) -> str:
    """The top-level package or module a frame's file belongs to: 'asyncio', 'service'."""
    match = _FRAME.match(frame)
    if match is None:
        return "?"
    path = match.group("path")
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")


def _role(command: str, frames: list[str], is_worker: bool) -> str:
    if is_worker:
        return "worker"
    if any(frame.startswith("_intermediate ") for frame in frames):
        return "intermediate"
    if "sandbox.zygote" in command:
        return "zygote"
    if "service" in command:
        return "service"
    return command[:60]


def _stacks(raw: Path) -> list[tuple[int, str, list[str], int]]:
    """(pid, command, frames root first, samples) for each line of a raw recording."""
    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        pid, command, frames = 0, "", []
        # A child's stack starts with its ancestors' "process" frames, then its own.
        for frame in stack.split(";"):
            if match := _PROCESS_FRAME.match(frame):
                pid, command = int(match.group(1)), match.group(2)
            elif not frame.startswith("thread "):
                frames.append(frame)
        stacks.append((pid, command, frames, int(count_text)))
    return stacks


def summarize(raw: Path) -> dict[str, Any]:
    stacks = _stacks(raw)
    # Workers are forks of the zygote with its command line, whose main thread runs
    # _worker (confining itself, then serving); their other threads' stacks do not show
    # it, so a worker is known by its pid.
    workers = {
        pid
        for pid, _, frames, _ in stacks
        if any(frame.startswith("_worker (sandbox/zygote.py") for frame in frames)
    }
    per_role: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = {}
    own: dict[str, Counter[str]] = {}
    packages: dict[str, Counter[str]] = {}
    for pid, command, frames, count in stacks:
        role = _role(command, frames, pid in workers)
        per_role[role] += count
        for frame in dict.fromkeys(frames):
            if _package(frame) in _FOCUS_PACKAGES or frame.startswith(_FOCUS_FUNCTIONS):
                inclusive.setdefault(role, Counter())[frame] += count
        if frames:
            own.setdefault(role, Counter())[frames[-1]] += count
            packages.setdefault(role, Counter())[_package(frames[-1])] += count
    return {
        "rate_hz": RATE_HZ,
        "samples_by_process": dict(per_role),
        "self_by_package": {role: counter.most_common(TOP) for role, counter in packages.items()},
        "self": {role: counter.most_common(TOP) for role, counter in own.items()},
        "inclusive": {role: counter.most_common(TOP) for role, counter in inclusive.items()},
    }


def render(summary: dict[str, Any]) -> str:
    samples = summary["samples_by_process"]
    lines = [f"samples holding the GIL, by process, at {summary['rate_hz']} Hz: {samples}"]
    requests = summary.get("requests_during_recording")
    if requests:
        ms_per_sample = 1000 / summary["rate_hz"]
        per_request = {
            role: round(count * ms_per_sample / requests, 3) for role, count in samples.items()
        }
        lines.append(f"requests during the recording: {requests}")
        lines.append(f"Python CPU ms per request (GIL held), by process: {per_request}")
    for kind in ("self_by_package", "self", "inclusive"):
        for role, top in summary[kind].items():
            total = samples.get(role, 0) or 1
            what = {
                "self_by_package": "samples on top of the stack, by package",
                "self": "samples on top of the stack (self), by function",
                "inclusive": "samples with the function on the stack (service, sandbox, ...)",
            }[kind]
            lines.append(f"\n{role}: {what}, % of that process's")
            for frame, count in top:
                lines.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


# -- under load ---------------------------------------------------------------------------


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
    summaries: dict[str, Any] = {}
    for scenario in ("repl", "start"):
        raw = tmp / f"profile-{scenario}.txt"
        with _load(cs_url, scenario) as done:
            before = done[0]
            record(service_pid, seconds, raw, fmt="raw")
            requests = done[0] - before
        summary_ = summarize(raw)
        summary_["requests_during_recording"] = requests
        (out / f"profile-{scenario}-top.txt").write_text(render(summary_))
        summaries[scenario] = summary_
    with _load(cs_url, "repl"):
        record(service_pid, seconds, out / "profile-repl.svg", fmt="flamegraph")
    return summaries
