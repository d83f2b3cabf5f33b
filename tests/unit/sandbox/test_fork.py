"""The zygote's fork: no after-fork hooks when single-threaded, and what they did, redone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# Forks through sandbox.fork with a hook registered, optionally beside a second thread,
# and prints what the child saw: whether the hook ran.
_FORK_WITH_A_HOOK = """
import os, sys, threading
from sandbox import fork
read_end, write_end = os.pipe()
os.register_at_fork(after_in_child=lambda: os.write(write_end, b"hook;"))
if sys.argv[1] == "threaded":
    release = threading.Event()
    threading.Thread(target=release.wait).start()
pid = fork.fork()
if pid == 0:
    os.write(write_end, b"child")
    os._exit(0)
os.close(write_end)
os.waitpid(pid, 0)
print(os.read(read_end, 64).decode())
if sys.argv[1] == "threaded":
    release.set()
"""

# Records the child hooks registered inside the block, forks, and has the child call
# prepare_worker(): it reports which hooks ran, its NumPy state and its draws.
_PREPARE_WORKER = """
import json, os, random, threading
import numpy as np
import numpy.random  # numpy loads it lazily; the zygote's preload (pandas) loads it
from sandbox import fork
ran = []
held = threading.Lock()
with fork.recording_child_hooks():
    os.register_at_fork(after_in_child=lambda: ran.append("preload hook"))
    os.register_at_fork(after_in_child=held._at_fork_reinit)
fork.locate_numpy_state()
held.acquire()
read_end, write_end = os.pipe()
pid = fork.fork()
if pid == 0:
    fork.prepare_worker()
    state = np.random.get_state()
    report = {
        "ran": ran,
        "lock_still_held": held.locked(),
        "position": int(state[2]),
        "key_head": [int(word) for word in state[1][:4]],
        "numpy": float(np.random.random()),
        "random": random.random(),
    }
    os.write(write_end, json.dumps(report).encode())
    os._exit(0)
os.close(write_end)
os.waitpid(pid, 0)
child = json.loads(os.read(read_end, 4096))
state = np.random.get_state()
parent = {
    "key_head": [int(word) for word in state[1][:4]],
    "numpy": float(np.random.random()),
    "random": random.random(),
}
print(json.dumps({"child": child, "parent": parent}))
"""


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        # As in the zygote: OpenBLAS would otherwise start threads, and fork() then falls
        # back to os.fork().
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_a_single_threaded_process_forks_without_running_the_hooks() -> None:
    assert _run(_FORK_WITH_A_HOOK, "alone") == "child"


def test_a_process_with_another_thread_forks_as_os_fork_does() -> None:
    # Another thread may hold a lock at the fork: then the hooks' repair is needed.
    assert _run(_FORK_WITH_A_HOOK, "threaded") == "hook;child"


def test_prepare_worker_runs_the_preload_hooks_but_no_lock_re_init() -> None:
    child = json.loads(_run(_PREPARE_WORKER))["child"]
    assert child["ran"] == ["preload hook"]
    assert child["lock_still_held"]


def test_prepare_worker_gives_random_and_numpy_fresh_valid_states() -> None:
    outcome = json.loads(_run(_PREPARE_WORKER))
    child, parent = outcome["child"], outcome["parent"]
    # The whole key was replaced, and the next draw regenerates it.
    assert child["position"] == 624
    assert child["key_head"] != parent["key_head"]
    assert 0.0 <= child["numpy"] < 1.0
    assert child["numpy"] != parent["numpy"]
    assert child["random"] != parent["random"]
