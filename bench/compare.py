"""``python -m bench compare REF``: a trivial run, side by side with an earlier commit.

The issues' done-criteria ask that a trivial run be no slower than before.  This
exports REF with ``git archive`` into a temporary directory (the work tree is never
touched), starts REF's service and the current tree's, both with this interpreter and
its packages, each with its own state directory and its own tree's policy and the
same benchmark settings, and creates one session on each.  After a warm-up it sends
blocks of trivial ``/repl`` requests (the round-trip measure's prepared request) to one
service and then the other, reversing the order every round, so load from elsewhere on
the machine lands on both alike.  It prints p50 and p99 of each side and the ratio
current / REF, and writes them to ``compare-REF.json`` in the results directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import TRIVIAL, BenchError, CodeSherpa
from bench.log import log
from bench.servers import BENCH_POLICY, ROOT, Server, start_codesherpa
from bench.stats import percentile, rounded, summary

RESULTS = ROOT / "bench" / "results"
ROUNDS = 12
BLOCK = 500
WARMUP = 300
# An older tree's own policy: the benchmark's where it has one, else the tests'.
POLICIES_OF_A_TREE = (Path("bench/policy.toml"), Path("tests/policies/test.toml"))


@dataclass
class Side:
    """One service under comparison, with the session and the request it is timed on."""

    label: str
    commit: str
    server: Server
    client: CodeSherpa
    session_id: str
    request: bytes

    def block(self, requests: int) -> list[float]:
        return [self.client.timed(self.request)[0] for _ in range(requests)]

    def close(self) -> None:
        try:
            self.client.delete(self.session_id)
        finally:
            self.client.close()


def _git(*args: str) -> str:
    git = shutil.which("git")
    if git is None:
        raise BenchError("git is not installed; the comparison reads REF with git archive")
    return subprocess.run(
        [git, "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def resolve(ref: str) -> str:
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise BenchError(f"{ref!r} names no commit of this repository") from None


def current_commit() -> str:
    """HEAD, marked when the code being measured differs from it."""
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", "service", "sandbox")
    return _git("rev-parse", "HEAD") + (" with uncommitted changes" if changed else "")


def export_tree(commit: str, into: Path) -> None:
    """The commit's files under `into`, read from git's objects, never from the work tree."""
    archive = into.with_suffix(".tar")
    _git("archive", "--format=tar", "--output", str(archive), commit)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()


def policy_of(tree: Path) -> Path:
    for relative in POLICIES_OF_A_TREE:
        if (tree / relative).is_file():
            return tree / relative
    raise BenchError(f"the tree at {tree} holds none of {[str(p) for p in POLICIES_OF_A_TREE]}")


def open_side(label: str, commit: str, server: Server) -> Side:
    client = CodeSherpa(server.url)
    session_id = client.create_session()
    reply = client.run_ok(session_id, TRIVIAL)
    if reply["result"] != "2":
        raise BenchError(f"{label}: {TRIVIAL} gave {reply['result']!r}")
    return Side(label, commit, server, client, session_id, client.prepared_run(session_id, TRIVIAL))


def alternate(sides: list[Side], rounds: int, block: int, warmup: int) -> dict[str, list[float]]:
    """Each side's samples (ms): blocks in turn, the order reversed every round."""
    for side in sides:
        side.block(warmup)
    samples: dict[str, list[float]] = {side.label: [] for side in sides}
    for number in range(rounds):
        order = sides if number % 2 == 0 else sides[::-1]
        for side in order:
            samples[side.label].extend(side.block(block))
    return samples


def _ratio(current: float, before: float) -> float:
    return round(current / before, 3)


def figures(
    ref: str, sides: list[Side], samples: dict[str, list[float]], block: int
) -> dict[str, Any]:
    current, before = sides
    by_round = {
        side.label: [
            rounded(percentile(samples[side.label][start : start + block], 50))
            for start in range(0, len(samples[side.label]), block)
        ]
        for side in sides
    }
    stats = {side.label: summary(samples[side.label]) for side in sides}
    return {
        "ref": ref,
        "commits": {side.label: side.commit for side in sides},
        "request": f"POST /repl {TRIVIAL!r} on one session, as the round-trip measure sends it",
        "block": block,
        "rounds": len(by_round[current.label]),
        current.label: stats[current.label],
        before.label: stats[before.label],
        "p50_by_round_ms": by_round,
        "ratio_p50": _ratio(stats[current.label]["p50_ms"], stats[before.label]["p50_ms"]),
        "ratio_p99": _ratio(stats[current.label]["p99_ms"], stats[before.label]["p99_ms"]),
        "rounds_current_p50_not_slower": sum(
            1
            for now, then in zip(by_round[current.label], by_round[before.label], strict=True)
            if now <= then
        ),
    }


def compare(ref: str, rounds: int, block: int, warmup: int, out: Path) -> dict[str, Any]:
    commit = resolve(ref)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codesherpa-compare-") as tmp_name:
        tmp = Path(tmp_name)
        tree = tmp / "tree"
        export_tree(commit, tree)
        servers: list[Server] = []
        sides: list[Side] = []
        try:
            log(f"starting the current tree's service and {ref}'s ({commit[:12]})")
            servers.append(start_codesherpa(tmp, BENCH_POLICY, ROOT, "current"))
            servers.append(start_codesherpa(tmp, policy_of(tree), tree, "ref"))
            sides.append(open_side("current", current_commit(), servers[0]))
            sides.append(open_side(ref, commit, servers[1]))
            log(f"{rounds} rounds of {block} trivial /repl on each, alternating")
            samples = alternate(sides, rounds, block, warmup)
        finally:
            for side in sides:
                side.close()
            for server in reversed(servers):
                server.stop()
    results = figures(ref, sides, samples, block)
    results["meta"] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - began, 1),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    out.mkdir(parents=True, exist_ok=True)
    safe_ref = "".join(c if c.isalnum() or c in "-._" else "_" for c in ref)
    path = out / f"compare-{safe_ref}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    results["meta"]["written"] = str(path)
    return results


def render(results: dict[str, Any]) -> str:
    ref = results["ref"]
    current, before = results["current"], results[ref]
    rows = [
        ("", "current", ref, "current / " + ref),
        (
            "p50 (ms)",
            f"{current['p50_ms']:.3f}",
            f"{before['p50_ms']:.3f}",
            f"{results['ratio_p50']:g}",
        ),
        (
            "p99 (ms)",
            f"{current['p99_ms']:.3f}",
            f"{before['p99_ms']:.3f}",
            f"{results['ratio_p99']:g}",
        ),
        ("samples", str(current["n"]), str(before["n"]), ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    meta = results["meta"]
    lines.append(
        f"\n{results['rounds']} rounds of {results['block']}; current p50 not slower in "
        f"{results['rounds_current_p50_not_slower']} of them; "
        f"{ref} is {results['commits'][ref][:12]}; "
        f"load average {meta['load_average_at_start']} -> {meta['load_average_at_end']}"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare",
        description="A trivial run, side by side with an earlier commit's.",
    )
    parser.add_argument("ref", help="the earlier commit (any name git rev-parse accepts)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"default {ROUNDS}")
    parser.add_argument(
        "--block", type=int, default=BLOCK, help=f"requests per block, default {BLOCK}"
    )
    parser.add_argument(
        "--warmup", type=int, default=WARMUP, help=f"requests per side first, default {WARMUP}"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"default {RESULTS.relative_to(ROOT)}"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.block < 1 or args.warmup < 0:
        print("bench compare: --rounds and --block are at least 1, --warmup at least 0")
        return 2
    try:
        results = compare(args.ref, args.rounds, args.block, args.warmup, args.out)
    except BenchError as exc:
        print(f"bench compare: {exc}")
        return 2
    print(render(results))
    print(f"\nwritten: {results['meta']['written']}")
    return 0
