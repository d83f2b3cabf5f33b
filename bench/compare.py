"""``python -m bench compare REF``: a trivial run, side by side with an earlier commit.

The issues' done-criteria ask that a trivial run be no slower than before.  This
exports REF with ``git archive`` into a temporary directory (the work tree is never
touched), starts REF's service and the current tree's, both with this interpreter and
its packages, each with its own state directory and its own tree's policy and the
same benchmark settings, and creates one session on each.  After a warm-up it sends
blocks of trivial ``/repl`` requests (the round-trip measure's prepared request) to one
service and then the other, reversing the order every round, so load from elsewhere on
the machine lands on both alike.  The rounds are split into two sittings, each with
both services started afresh, the other one first.  It prints p50 and p99 of each side and the ratio
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


@dataclass(frozen=True)
class Plan:
    code: str  # the cell every timed request runs
    rounds: int
    block: int  # requests per side per round
    warmup: int  # requests per side before the first round


def open_side(label: str, commit: str, server: Server, code: str) -> Side:
    client = CodeSherpa(server.url)
    session_id = client.create_session()
    client.run_ok(session_id, code)
    return Side(label, commit, server, client, session_id, client.prepared_run(session_id, code))


def alternate(sides: list[Side], plan: Plan, rounds: int) -> dict[str, list[float]]:
    """Each side's samples (ms): blocks in turn, the order reversed every round."""
    for side in sides:
        side.block(plan.warmup)
    samples: dict[str, list[float]] = {side.label: [] for side in sides}
    for number in range(rounds):
        order = sides if number % 2 == 0 else sides[::-1]
        for side in order:
            samples[side.label].extend(side.block(plan.block))
    return samples


def _ratio(current: float, before: float) -> float:
    return round(current / before, 3)


@dataclass(frozen=True)
class Tree:
    """A source tree to serve: its label in the results, its commit, where it lies."""

    label: str
    commit: str
    root: Path
    policy: Path
    server_name: str  # of its log and state directory


def sitting(trees: list[Tree], directory: Path, plan: Plan, rounds: int) -> dict[str, list[float]]:
    """Both services started in the order given, then `rounds` rounds of blocks."""
    directory.mkdir()
    servers: list[Server] = []
    sides: list[Side] = []
    try:
        for tree in trees:
            servers.append(start_codesherpa(directory, tree.policy, tree.root, tree.server_name))
        for tree, server in zip(trees, servers, strict=True):
            sides.append(open_side(tree.label, tree.commit, server, plan.code))
        return alternate(sides, plan, rounds)
    finally:
        for side in sides:
            side.close()
        for server in reversed(servers):
            server.stop()


def figures(
    ref: str, trees: list[Tree], samples: dict[str, list[float]], plan: Plan
) -> dict[str, Any]:
    block = plan.block
    current, before = (tree.label for tree in trees)
    by_round = {
        label: [
            rounded(percentile(samples[label][start : start + block], 50))
            for start in range(0, len(samples[label]), block)
        ]
        for label in (current, before)
    }
    stats = {label: summary(samples[label]) for label in (current, before)}
    return {
        "ref": ref,
        "commits": {tree.label: tree.commit for tree in trees},
        "request": f"POST /repl {plan.code!r} on one session, a prepared request sent again",
        "block": block,
        "rounds": len(by_round[current]),
        current: stats[current],
        before: stats[before],
        "p50_by_round_ms": by_round,
        "ratio_p50": _ratio(stats[current]["p50_ms"], stats[before]["p50_ms"]),
        "ratio_p99": _ratio(stats[current]["p99_ms"], stats[before]["p99_ms"]),
        "rounds_current_p50_not_slower": sum(
            1 for now, then in zip(by_round[current], by_round[before], strict=True) if now <= then
        ),
    }


def compare(ref: str, plan: Plan, out: Path, json_name: str) -> dict[str, Any]:
    commit = resolve(ref)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codesherpa-compare-") as tmp_name:
        tmp = Path(tmp_name)
        exported = tmp / "tree"
        export_tree(commit, exported)
        trees = [
            Tree("current", current_commit(), ROOT, BENCH_POLICY, "current"),
            Tree(ref, commit, exported, policy_of(exported), "ref"),
        ]
        samples: dict[str, list[float]] = {tree.label: [] for tree in trees}
        # The service started first ran 2 to 4% slower than the other when both were the
        # same code: each order starts one of two sittings, so neither side gains by it.
        first_sitting = plan.rounds - plan.rounds // 2
        sittings = ((trees, first_sitting), (trees[::-1], plan.rounds // 2))
        for index, (order, sitting_rounds) in enumerate(sittings):
            if sitting_rounds == 0:
                continue
            log(
                f"started {order[0].label} first, then {order[1].label} ({commit[:12]}): "
                f"{sitting_rounds} rounds of {plan.block} /repl on each, alternating"
            )
            directory = tmp / f"sitting-{index}"
            for label, taken in sitting(order, directory, plan, sitting_rounds).items():
                samples[label].extend(taken)
    results = figures(ref, trees, samples, plan)
    results["meta"] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - began, 1),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    out.mkdir(parents=True, exist_ok=True)
    safe_ref = "".join(c if c.isalnum() or c in "-._" else "_" for c in ref)
    path = out / (json_name or f"compare-{safe_ref}.json")
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
        f"\n{results['request']}\n"
        f"{results['rounds']} rounds of {results['block']}; current p50 not slower in "
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
    parser.add_argument(
        "--code", default=TRIVIAL, help=f"the cell each request runs, default {TRIVIAL!r}"
    )
    parser.add_argument(
        "--json", default="", help="file name of the results, default compare-REF.json"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.block < 1 or args.warmup < 0:
        print("bench compare: --rounds and --block are at least 1, --warmup at least 0")
        return 2
    try:
        plan = Plan(args.code, args.rounds, args.block, args.warmup)
        results = compare(args.ref, plan, args.out, args.json)
    except BenchError as exc:
        print(f"bench compare: {exc}")
        return 2
    print(render(results))
    print(f"\nwritten: {results['meta']['written']}")
    return 0
