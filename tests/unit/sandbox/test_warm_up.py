"""The zygote's warm-up: the worker's request path leaves it with its bytecode
specialised, and leaves the zygote as it found it (no descriptor, thread or cell)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

# In a fresh interpreter: in this one, earlier tests may have run the functions already.
CHECK = """
import dis, linecache, os, tempfile, threading
from sandbox import executor, protocol, warm_up, workspace
from sandbox.policy import load_policy

def specialised(function):
    adaptive = [i.opname for i in dis.get_instructions(function, adaptive=True)]
    plain = [i.opname for i in dis.get_instructions(function)]
    return sum(a != p for a, p in zip(adaptive, plain))

path = [protocol.FrameDecoder.feed, protocol.encode, protocol.decode_request,
        workspace.snapshot, workspace.changed_files, executor.PythonSession.run]
print([specialised(function) for function in path])
descriptors, threads = sorted(os.listdir("/proc/self/fd")), threading.active_count()
with tempfile.TemporaryDirectory() as empty:
    warm_up.warm_up(load_policy("policies/default.toml"), empty)
    print(os.listdir(empty))
print([specialised(function) for function in path])
print(sorted(os.listdir("/proc/self/fd")) == descriptors, threading.active_count() == threads)
print([name for name in linecache.cache if name.startswith("<cell-")])
"""

ROOT = Path(__file__).resolve().parents[3]


def test_the_request_path_is_specialised_and_the_zygote_left_as_it_was() -> None:
    lines = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    before, scratch, after, unchanged, cells = lines
    assert set(ast.literal_eval(before)) == {0}  # nothing specialised yet: the check can tell
    assert 0 not in ast.literal_eval(after)  # every function of the path now is
    assert scratch == "[]"
    assert unchanged == "True True"
    assert cells == "[]"
