"""End every process a run left behind, and collect zombies.

A worker that is init of its own PID namespace ends them all with one
``kill(-1, SIGKILL)``, which inside the namespace reaches exactly the worker's
descendants.  Without that namespace it walks its descendants (orphans come back to
it because it is a child subreaper) until none is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil


def reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(deadline_s: float = 5.0) -> bool:
    """Kill and reap every descendant; False if some survived ``deadline_s``."""
    give_up = time.monotonic() + deadline_s
    while True:
        survivors = _kill_round()
        reap_zombies()
        if not survivors and not _has_children():
            return True
        if time.monotonic() > give_up:
            return False
        time.sleep(0.005)


def _kill_round() -> bool:
    if os.getpid() == 1:
        # Inside our own PID namespace this reaches exactly our descendants.
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return False
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGKILL)
    return bool(children)


def _has_children() -> bool:
    # waitpid, not /proc: /proc may belong to another PID namespace.
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True
