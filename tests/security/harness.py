"""Helpers shared by the attack suite (tests/security).

What the host sees of a session (its worker, its uid, the processes of that uid), the
checks every attack ends with (the attacked session still answers, a neighbour session
kept its state), and ``probe``: the harness that runs ``attempt(...)`` calls in a worker
and reports what each did.  The ``neighbour`` fixture is in conftest.py beside this file.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psutil

from sandbox import RunReply, Session, WorkerHandle, ZygoteClient, workspaces

MB = 1024 * 1024
# A worker sees only the host's system directories (every other top-level directory,
# and /dev, is replaced); a program directory there is visible but neither listable
# nor readable, so attack targets made in it test Landlock, not the mount view.
VISIBLE_TMP = "/usr/local/bin"

Results = dict[str, dict[str, Any]]


# -- sessions and their processes, as the host sees them --------------------------------


@contextlib.asynccontextmanager
async def open_session(zygote: ZygoteClient) -> AsyncIterator[Session]:
    """A session of its own, closed and its workspace removed on the way out."""
    started = await Session.start(zygote)
    try:
        yield started
    finally:
        await started.close()
        workspaces.remove(started.workspace)


def processes_of_uid(uid: int) -> list[psutil.Process]:
    """Every host process whose real uid is ``uid``."""
    found = []
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and uids.real == uid:
            found.append(process)
    return found


def zombies_of_uid(uid: int) -> list[int]:
    zombies = []
    for process in processes_of_uid(uid):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                zombies.append(process.pid)
        except psutil.NoSuchProcess:
            continue
    return zombies


def worker_of(session: Session) -> WorkerHandle:
    assert session.worker is not None, "the session has no live worker"
    return session.worker


def uid_of(session: Session) -> int:
    uid = worker_of(session).uid
    assert uid is not None, "these attacks need per-session uids: run the suite as root"
    return uid


def left_of_uid(uid: int, session: Session) -> list[int]:
    """Pids of ``uid`` other than the session's current worker: what outlived a worker
    the session replaced (the new one takes its workspace's uid back)."""
    worker = worker_of(session).pid if session.worker is not None else None
    return [p.pid for p in processes_of_uid(uid) if p.pid != worker]


def others_of_uid(session: Session) -> list[int]:
    """Pids of the session's uid other than its worker, zombies included: what escaped
    the sweep."""
    worker = worker_of(session).pid
    return [p.pid for p in processes_of_uid(uid_of(session)) if p.pid != worker]


def running_others_of_uid(session: Session) -> list[int]:
    """Pids of the session's uid other than its worker that still run: what escaped the
    sweep.  A killed process the worker has not reaped yet is a zombie: it runs nothing
    and the worker collects it at its next request."""
    worker = worker_of(session).pid
    zombies = set(zombies_of_uid(uid_of(session)))
    return [
        p.pid for p in processes_of_uid(uid_of(session)) if p.pid != worker and p.pid not in zombies
    ]


# -- what every attack ends with ---------------------------------------------------------


async def assert_answers(session: Session) -> None:
    outcome = await session.run_python("1 + 1")
    assert outcome.reply.status == "ok", outcome.reply.error
    assert outcome.reply.value == "2"


async def assert_a_fresh_session_answers(zygote: ZygoteClient) -> None:
    async with open_session(zygote) as fresh:
        await assert_answers(fresh)


@dataclass
class Neighbour:
    """A session started before the attacker's, holding a value it must keep."""

    session: Session
    pid: int
    token: str

    async def assert_intact(self) -> None:
        outcome = await self.session.run_python("kept")
        assert outcome.reply.value == repr(self.token), outcome.reply.error
        assert not outcome.restarted
        assert worker_of(self.session).pid == self.pid
        assert self.session.restarts == 0


def everything_said(*replies: RunReply) -> str:
    """Every field of every reply, as one string to search for a secret."""
    return "\n".join(reply.model_dump_json() for reply in replies)


# -- probes: attempt(...) calls in a worker ----------------------------------------------

_PRELUDE = """
import errno, json, os, shutil, socket, subprocess, sys
results = {}
def attempt(name, action):
    try:
        value = action()
    except OSError as exc:
        results[name] = {"ok": False, "errno": exc.errno, "error": type(exc).__name__}
    except Exception as exc:
        results[name] = {"ok": False, "errno": None, "error": type(exc).__name__}
    else:
        results[name] = {"ok": True, "value": repr(value)[:300]}
"""


async def probe_with_reply(session: Session, body: str) -> tuple[Results, RunReply]:
    """Run ``attempt(...)`` calls in the worker; return what each did, and the reply."""
    code = _PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(results))"
    reply = (await session.run_python(code, timeout=10)).reply
    assert reply.status == "ok", reply.error
    results: Results = json.loads(reply.stdout)
    return results, reply


async def probe(session: Session, body: str) -> Results:
    """Run ``attempt(...)`` calls in the worker; return what each did."""
    results, _ = await probe_with_reply(session, body)
    return results
