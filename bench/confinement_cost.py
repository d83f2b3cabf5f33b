"""What confinement costs a new session: start-to-first-result with and without layers.

Run as root, from the repository root, inside a PID namespace:

    unshare --pid --fork --kill-child --mount-proc .venv/bin/python -m bench.confinement_cost

Both variants run in one process, side by side, and the result is a ratio, so a
noisy machine moves both sides alike.  "Cold" forks a worker per session (no warm
pool: the full cost of the layers); "warm" hands out a pre-confined worker, which is
what a user of the default policy sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

from sandbox import Policy, Session, ZygoteClient, load_policy, workspaces
from sandbox.policy import ALL_LAYERS

FIRST_RESULT = "import pandas as pd\npd.__version__"


def variant(base: Policy, confined: bool, warm_pool: int) -> Policy:
    isolation = base.isolation.model_copy(
        update={"required": [], "preferred": list(ALL_LAYERS) if confined else []}
    )
    sessions = base.sessions.model_copy(update={"warm_pool": warm_pool})
    return base.model_copy(update={"isolation": isolation, "sessions": sessions})


async def start_times(policy: Policy, rounds: int) -> list[float]:
    with tempfile.TemporaryDirectory() as state_dir:
        zygote = ZygoteClient(policy, state_dir)
        zygote.start()
        try:
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                session = await Session.start(zygote)
                outcome = await session.run_python(FIRST_RESULT)
                times.append((time.perf_counter() - started) * 1000)
                assert outcome.reply.status == "ok", outcome.reply.error
                await session.close()
                workspaces.remove(session.workspace)
                # Let a warm pool refill, as it would between real requests.
                await asyncio.sleep(0.05)
            return times
        finally:
            zygote.stop()


async def measure(rounds: int) -> dict[str, float]:
    base = load_policy("policies/default.toml")
    results: dict[str, float] = {}
    for pool_name, pool in (("cold", 0), ("warm", 2)):
        for name, confined in (("unconfined", False), ("confined", True)):
            times = await start_times(variant(base, confined, pool), rounds)
            results[f"{pool_name}_{name}_median_ms"] = round(statistics.median(times), 2)
        results[f"{pool_name}_ratio"] = round(
            results[f"{pool_name}_confined_median_ms"]
            / results[f"{pool_name}_unconfined_median_ms"],
            2,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.rounds)), indent=2))


if __name__ == "__main__":
    main()
