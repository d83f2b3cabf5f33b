"""Attacks of the class *cleanup* (SECURITY.md, guarantee 6).

User code tries to leave something behind: background jobs through the command line
(``&``, ``nohup``, ``setsid``, launchers), detached children of the REPL, zombies that
nobody waits for, threads, and processes of a run that timed out.  Each test counts
what remains on the host after the run, the command, the restart or the session: the
processes, zombies and threads of the session's uid, the zombies of the service (this
pytest process) and the session's cgroup directories.  A neighbour session started
beforehand must keep answering with its state, and the attacked session (or a fresh
one) must answer ``1 + 1``.
"""

from __future__ import annotations

import asyncio

import psutil
import pytest

from sandbox import Session, ZygoteClient
from sandbox.confine import cgroup
from tests.security.harness import (
    Neighbour,
    assert_a_fresh_session_answers,
    assert_answers,
    left_of_uid,
    open_session,
    processes_of_uid,
    running_others_of_uid,
    uid_of,
    worker_of,
    zombies_of_uid,
)

pytestmark = [pytest.mark.anyio, pytest.mark.attack, pytest.mark.timeout(30)]


# -- background jobs from the command line ----------------------------------------------

BACKGROUND_LINES = [
    "sleep 100 &",
    "sleep 100 & true",
    "sleep 100 &\ntrue",
    "true; sleep 100 &",
    "nohup sleep 100",
    "setsid sleep 100",
    "sh -c 'sleep 100 &'",
    "env sleep 100 &",
    "timeout 100 sleep 100",
    "(sleep 100 &)",
]


@pytest.mark.parametrize("line", BACKGROUND_LINES)
async def test_a_background_job_on_the_command_line_is_denied_and_leaves_nothing(
    neighbour: Neighbour, session: Session, line: str
) -> None:
    outcome = await session.run_command(line, timeout=2)

    assert outcome.reply.status == "denied", outcome.reply
    assert outcome.reply.denied_rule
    assert running_others_of_uid(session) == []
    await assert_answers(session)
    await neighbour.assert_intact()


DETACHED_CHILDREN = {
    "Popen in a new session": (
        "import subprocess\nsubprocess.Popen(['sleep', '100'], start_new_session=True)"
    ),
    "Popen ignoring hangup and terminate": (
        "import signal, subprocess\n"
        "def deaf():\n"
        "    for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):\n"
        "        signal.signal(number, signal.SIG_IGN)\n"
        "subprocess.Popen(['sleep', '100'], start_new_session=True, preexec_fn=deaf)"
    ),
    "orphaned grandchild": (
        "import os, time\n"
        "middle = os.fork()\n"
        "if middle == 0:\n"
        "    try:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(100)\n"
        "    finally:\n"
        "        os._exit(0)\n"
        "os.waitpid(middle, 0)"
    ),
}


@pytest.mark.parametrize("code", DETACHED_CHILDREN.values(), ids=DETACHED_CHILDREN.keys())
async def test_a_detached_child_of_the_repl_does_not_outlive_the_next_command(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session, code: str
) -> None:
    outcome = await session.run_python(code)
    assert outcome.reply.status == "ok", outcome.reply.error
    assert len(running_others_of_uid(session)) == 1, "no child was left: the test proves nothing"

    swept = await session.run_command("echo swept")
    assert swept.reply.stdout == "swept\n"
    assert running_others_of_uid(session) == []
    await assert_answers(session)
    await neighbour.assert_intact()


# -- zombies ----------------------------------------------------------------------------

UNWAITED_CHILDREN = """
import os, time
for _ in range(10):
    if os.fork() == 0:
        os._exit(0)
time.sleep(0.1)
"""

UNWAITED_GRANDCHILDREN = """
import os, time
for _ in range(5):
    if os.fork() == 0:
        try:
            if os.fork() == 0:
                time.sleep(0.05)
        finally:
            os._exit(0)
time.sleep(0.2)
"""


async def test_unwaited_children_do_not_accumulate_as_zombies(
    neighbour: Neighbour, session: Session
) -> None:
    uid = uid_of(session)
    seen_zombies = 0
    # Fifty children nobody waits for, ten per cell (the process limit counts zombies),
    # plus grandchildren orphaned to the worker.
    for _ in range(5):
        task = asyncio.ensure_future(session.run_python(UNWAITED_CHILDREN))
        while not task.done():
            seen_zombies = max(seen_zombies, len(zombies_of_uid(uid)))
            await asyncio.sleep(0.01)
        assert (await task).reply.status == "ok"
    outcome = await session.run_python(UNWAITED_GRANDCHILDREN)
    assert outcome.reply.status == "ok", outcome.reply.error

    assert seen_zombies > 0, "no zombie was ever seen: the test proves nothing"
    await assert_answers(session)
    assert zombies_of_uid(uid) == []
    assert running_others_of_uid(session) == []
    await neighbour.assert_intact()


async def test_closed_and_killed_sessions_leave_no_zombie_and_no_cgroup(
    zygote: ZygoteClient, neighbour: Neighbour
) -> None:
    service = psutil.Process()
    groups = []
    workers = []
    for ending in ("close", "kill", "close"):
        async with open_session(zygote) as session:
            handle = worker_of(session)
            workers.append(handle.pid)
            groups.append((handle.session_key, handle.cgroup_parent))
            assert cgroup.session_paths(handle.session_key, handle.cgroup_parent)
            await session.run_python(
                "import subprocess\nsubprocess.Popen(['sleep', '100'], start_new_session=True)"
            )
            if ending == "kill":
                crashed = await session.run_python("import os\nos._exit(9)")
                assert crashed.restarted
                replaced = worker_of(session)
                workers.append(replaced.pid)
                groups.append((replaced.session_key, replaced.cgroup_parent))
                assert not psutil.pid_exists(handle.pid)

    # The test runner is init of its PID namespace, so orphans of earlier tests may be
    # its zombies too; these sessions' workers must not be among them.
    zombies = {p.pid for p in service.children() if p.status() == psutil.STATUS_ZOMBIE}
    assert zombies.isdisjoint(workers), zombies & set(workers)
    assert not any(psutil.pid_exists(pid) for pid in workers)
    for key, parent in groups:
        assert cgroup.session_paths(key, parent) == []
    await neighbour.assert_intact()


# -- threads ----------------------------------------------------------------------------

START_THREADS = """
import threading, time
for _ in range(8):
    threading.Thread(target=time.sleep, args=(300,), daemon=False).start()
threading.active_count()
"""


async def test_threads_started_by_user_code_die_with_the_session(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session
) -> None:
    uid = uid_of(session)
    outcome = await session.run_python(START_THREADS)
    assert outcome.reply.status == "ok", outcome.reply.error
    assert psutil.Process(worker_of(session).pid).num_threads() >= 9

    await session.close()
    assert processes_of_uid(uid) == []
    await assert_a_fresh_session_answers(zygote)
    await neighbour.assert_intact()


async def test_threads_die_with_a_worker_killed_for_ignoring_the_interrupt(
    neighbour: Neighbour, session: Session
) -> None:
    uid = uid_of(session)
    await session.run_python(START_THREADS)
    stubborn = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    outcome = await session.run_python(stubborn, timeout=0.5)

    assert outcome.reply.status == "killed"
    assert outcome.restarted
    assert left_of_uid(uid, session) == []
    assert psutil.Process(worker_of(session).pid).num_threads() <= 3
    await assert_answers(session)
    await neighbour.assert_intact()


# -- what a timed-out run leaves --------------------------------------------------------


TIMED_OUT_CELL = """
import os, subprocess, time
subprocess.Popen(["sleep", "100"], start_new_session=True)
if os.fork() == 0:
    try:
        while True:
            pass
    finally:
        os._exit(0)
"""


TIMEOUT_ENDINGS = [
    pytest.param("time.sleep(100)", id="interrupt not caught"),
    pytest.param(
        "try:\n    time.sleep(100)\nexcept KeyboardInterrupt:\n    pass", id="interrupt swallowed"
    ),
    pytest.param(
        "try:\n    time.sleep(100)\nexcept KeyboardInterrupt:\n    raise ValueError('no')",
        id="interrupt turned into another exception",
    ),
]


@pytest.mark.parametrize("ending", TIMEOUT_ENDINGS)
async def test_processes_started_by_a_timed_out_cell_are_gone_after_the_timeout(
    neighbour: Neighbour, session: Session, ending: str
) -> None:
    task = asyncio.ensure_future(session.run_python(TIMED_OUT_CELL + ending, timeout=0.5))
    await asyncio.sleep(0.3)
    assert len(running_others_of_uid(session)) == 2, (
        "the cell started nothing: the test proves nothing"
    )
    outcome = await task

    assert running_others_of_uid(session) == []
    assert outcome.reply.status == "timeout"
    assert outcome.reply.limit == "wall_time"
    await assert_answers(session)
    await neighbour.assert_intact()


# The sweep runs in the worker, in the same interpreter as the user's code.
SWITCH_OFF_THE_SWEEP = """
import sandbox.reaper
sandbox.reaper.kill_descendants = lambda *args, **kwargs: True
"""


async def test_user_code_cannot_switch_off_the_sweep_after_a_command(
    neighbour: Neighbour, session: Session
) -> None:
    assert (await session.run_python(SWITCH_OFF_THE_SWEEP)).reply.status == "ok"
    await session.run_python(DETACHED_CHILDREN["Popen in a new session"])
    assert len(running_others_of_uid(session)) == 1

    await session.run_command("true")
    assert running_others_of_uid(session) == []
    await neighbour.assert_intact()


async def test_user_code_cannot_switch_off_the_sweep_after_a_timeout(
    neighbour: Neighbour, session: Session
) -> None:
    assert (await session.run_python(SWITCH_OFF_THE_SWEEP)).reply.status == "ok"
    outcome = await session.run_python(TIMED_OUT_CELL + "time.sleep(100)", timeout=0.5)

    assert outcome.reply.status == "timeout"
    assert running_others_of_uid(session) == []
    await neighbour.assert_intact()
