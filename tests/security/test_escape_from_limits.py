"""Attacks of the class *escape from limits* (SECURITY.md, guarantees 6 and 7).

User code that knows the limits tries to outlive or outgrow them: loops that ignore,
block or swallow the interrupt, raising its own rlimits, leaving its cgroup or
rewriting the cgroup's limits, and daemons (double fork + setsid, new sessions) that
try to survive the run, the next command or the session.  Each test runs the attack
in a real confined worker and checks the effect from the host: the worker's pid, the
kernel's rlimits and cgroup membership of the worker, and the processes of the
session's uid.  A neighbour session started beforehand must keep answering with its
state, and the attacked session (or its replacement) must answer ``1 + 1``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest

from sandbox import Session, WorkerHandle, ZygoteClient
from sandbox.confine import cgroup
from tests.security.harness import (
    MB,
    Neighbour,
    assert_a_fresh_session_answers,
    assert_answers,
    left_of_uid,
    others_of_uid,
    processes_of_uid,
    uid_of,
    worker_of,
)

pytestmark = [pytest.mark.anyio, pytest.mark.attack, pytest.mark.timeout(30)]

# Beyond timeout + grace, what the service may take to kill and replace a worker.
KILL_SLACK_S = 1.5


# -- loops that refuse the interrupt ----------------------------------------------------

STUBBORN_LOOPS = {
    "SIGINT ignored": (
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    ),
    "SIGINT handler that returns": (
        "import signal\nsignal.signal(signal.SIGINT, lambda *_: None)\nwhile True:\n    pass"
    ),
    "SIGINT ignored through libc": (
        "import ctypes\nctypes.CDLL(None).signal(2, ctypes.c_void_p(1))\nwhile True:\n    pass"
    ),
    "KeyboardInterrupt swallowed by except BaseException": (
        "while True:\n"
        "    try:\n"
        "        while True:\n"
        "            pass\n"
        "    except BaseException:\n"
        "        continue"
    ),
}


@pytest.mark.parametrize("loop", STUBBORN_LOOPS.values(), ids=STUBBORN_LOOPS.keys())
async def test_a_loop_that_refuses_the_interrupt_is_killed_after_the_grace(
    neighbour: Neighbour, session: Session, loop: str
) -> None:
    grace = session.policy.limits.interrupt_grace_s
    old_worker, old_uid = worker_of(session).pid, uid_of(session)
    started = time.monotonic()
    outcome = await session.run_python(loop, timeout=0.5)
    elapsed = time.monotonic() - started

    assert outcome.reply.status == "killed", outcome.reply
    assert outcome.reply.limit == "wall_time"
    assert outcome.restarted
    assert elapsed < 0.5 + grace + KILL_SLACK_S
    # The stubborn worker and everything of its uid are gone from the host.
    assert not psutil.pid_exists(old_worker)
    assert left_of_uid(old_uid, session) == []
    assert worker_of(session).pid != old_worker
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_sigint_blocked_in_one_cell_cannot_shield_the_next_from_the_clock(
    neighbour: Neighbour, session: Session
) -> None:
    block = "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})"
    assert (await session.run_python(block)).reply.status == "ok"
    started = time.monotonic()
    outcome = await session.run_python("while True:\n    pass", timeout=0.5)
    elapsed = time.monotonic() - started

    assert outcome.reply.status in {"timeout", "killed"}
    assert elapsed < 0.5 + session.policy.limits.interrupt_grace_s + KILL_SLACK_S
    await assert_answers(session)
    await neighbour.assert_intact()


# -- raising limits ---------------------------------------------------------------------

RAISE_RLIMITS = """
import ctypes, errno, resource
libc = ctypes.CDLL(None, use_errno=True)

class Limit(ctypes.Structure):
    _fields_ = [("soft", ctypes.c_uint64), ("hard", ctypes.c_uint64)]

results = {}
for name in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_NOFILE",
             "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_STACK", "RLIMIT_NICE",
             "RLIMIT_RTPRIO"):
    kind = getattr(resource, name)
    soft, hard = resource.getrlimit(kind)
    higher = resource.RLIM_INFINITY
    outcomes = []
    for attempt in (
        lambda: resource.setrlimit(kind, (higher, higher)),
        lambda: resource.setrlimit(kind, (hard, hard + 1)),
        lambda: resource.prlimit(0, kind, (higher, higher)),
        lambda: resource.prlimit(1, kind, (higher, higher)),
    ):
        try:
            attempt()
            outcomes.append("raised")
        except (ValueError, OSError) as exc:
            outcomes.append(type(exc).__name__)
    # Straight to the kernel, past any check Python makes.
    new = Limit(2**64 - 1, 2**64 - 1)
    if libc.prlimit(0, kind, ctypes.byref(new), None) == 0:
        outcomes.append("raised")
    else:
        outcomes.append(errno.errorcode[ctypes.get_errno()])
    results[name] = (outcomes, resource.getrlimit(kind) == (soft, hard))
results
"""


# The rows of /proc/<pid>/limits this test reads, by the name the kernel gives them.
LIMIT_ROWS = (
    "Max cpu time",
    "Max address space",
    "Max processes",
    "Max open files",
    "Max file size",
    "Max core file size",
    "Max nice priority",
    "Max realtime priority",
)


def host_view_of_rlimits(pid: int) -> dict[str, tuple[str, str]]:
    """Soft and hard limits of ``pid`` as the kernel shows them to the host.

    Read from /proc rather than with prlimit(2): the host may lack CAP_SYS_RESOURCE,
    which reading another uid's limits through prlimit needs.
    """
    rows: dict[str, tuple[str, str]] = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        for name in LIMIT_ROWS:
            if line.startswith(name):
                soft, hard = line[len(name) :].split()[:2]
                rows[name] = (soft, hard)
    return rows


async def test_raising_rlimits_above_the_hard_limit_fails_and_the_limits_stay(
    neighbour: Neighbour, session: Session
) -> None:
    limits = session.policy.limits
    expected = {
        "Max cpu time": limits.cpu_time_s,
        "Max address space": limits.memory_mb * MB,
        "Max processes": limits.processes,
        "Max open files": limits.open_files,
        "Max file size": limits.file_size_mb * MB,
        "Max core file size": 0,
        "Max nice priority": 0,
        "Max realtime priority": 0,
    }
    pid = worker_of(session).pid
    before = host_view_of_rlimits(pid)
    assert before == {name: (str(value), str(value)) for name, value in expected.items()}

    outcome = await session.run_python(RAISE_RLIMITS)

    assert outcome.reply.status == "ok", outcome.reply.error
    results = eval(outcome.reply.value or "{}")  # a dict of lists, tuples and str
    assert len(results) == 9
    for name, (attempts, unchanged) in results.items():
        assert "raised" not in attempts, name
        assert set(attempts) <= {"ValueError", "PermissionError", "EPERM"}, (name, attempts)
        assert unchanged, name
    # The kernel's view of the worker, read from the host, did not move.
    assert host_view_of_rlimits(pid) == before
    await assert_answers(session)
    await neighbour.assert_intact()


LEAVE_SCHED_IDLE = """
import os
attempts = {}
for name, call in {
    "sched_setscheduler": lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0)),
    "sched_setscheduler batch": lambda: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)),
    "nice": lambda: os.nice(-1),
}.items():
    try:
        call()
        attempts[name] = "done"
    except OSError as exc:
        attempts[name] = type(exc).__name__
(attempts, os.sched_getscheduler(0) == os.SCHED_IDLE)
"""


async def test_a_session_put_behind_the_others_cannot_leave_sched_idle(
    neighbour: Neighbour, session: Session
) -> None:
    if not cgroup.may_restore_policies():
        pytest.skip("without CAP_SYS_NICE the service sets no SCHED_IDLE")
    worker = worker_of(session)
    version = cgroup.select_version(worker.cgroup_parent)
    assert isinstance(version, cgroup.CgroupVersion)
    # What the core watch does to a session that fills every core.
    assert version.demote(worker.session_key, True)
    assert os.sched_getscheduler(worker.pid) == os.SCHED_IDLE

    outcome = await session.run_python(LEAVE_SCHED_IDLE)

    assert outcome.reply.status == "ok", outcome.reply.error
    attempts, still_idle = eval(outcome.reply.value or "None")
    assert set(attempts.values()) == {"PermissionError"}, attempts
    assert still_idle
    assert os.sched_getscheduler(worker.pid) == os.SCHED_IDLE
    # Given back by the service, which may.
    assert version.demote(worker.session_key, False)
    assert os.sched_getscheduler(worker.pid) == os.SCHED_OTHER
    await assert_answers(session)
    await neighbour.assert_intact()


CGROUP_ESCAPE = """
import os
attempts = {}
for line in open("/proc/self/cgroup").read().splitlines():
    _, controllers, path = line.split(":", 2)
    for controller in controllers.split(","):
        if not controller or controller.startswith("name="):
            continue
        own = f"/sys/fs/cgroup/{controller}{path}"
        for target, value in (
            ("/sys/fs/cgroup/" + controller + "/cgroup.procs", "1"),
            ("/sys/fs/cgroup/" + controller + "/tasks", "1"),
            (own + "/../cgroup.procs", "1"),
            (own + "/pids.max", "max"),
            (own + "/memory.limit_in_bytes", "-1"),
            (own + "/memory.memsw.limit_in_bytes", "-1"),
            (own + "/cpu.cfs_quota_us", "-1"),
            ("/sys/fs/cgroup/cgroup.procs", "1"),
        ):
            try:
                with open(target, "w") as handle:
                    handle.write(value)
                attempts[target] = "written"
            except OSError as exc:
                attempts[target] = type(exc).__name__
try:
    os.mkdir("/sys/fs/cgroup/pids/escape")
    attempts["mkdir"] = "made"
except OSError as exc:
    attempts["mkdir"] = type(exc).__name__
attempts
"""

LIMIT_FILES = ("pids.max", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")


def _limits_of(handle: WorkerHandle) -> dict[str, str]:
    found: dict[str, str] = {}
    for directory in cgroup.session_paths(handle.session_key, handle.cgroup_parent):
        for name in LIMIT_FILES:
            path = Path(directory, name)
            if path.exists():
                found[str(path)] = path.read_text().strip()
    return found


async def test_leaving_the_session_cgroup_or_rewriting_its_limits_fails(
    neighbour: Neighbour, session: Session
) -> None:
    handle = worker_of(session)
    membership = Path(f"/proc/{handle.pid}/cgroup").read_text()
    limits = _limits_of(handle)
    assert any(name.endswith("pids.max") for name in limits)
    assert handle.session_key in membership

    outcome = await session.run_python(CGROUP_ESCAPE)

    assert outcome.reply.status == "ok", outcome.reply.error
    attempts = eval(outcome.reply.value or "{}")
    assert attempts, "the attack found no cgroup to leave"
    assert "written" not in attempts.values()
    assert "made" not in attempts.values()
    assert Path(f"/proc/{handle.pid}/cgroup").read_text() == membership
    assert _limits_of(handle) == limits
    await assert_answers(session)
    await neighbour.assert_intact()


# -- daemons ----------------------------------------------------------------------------

DAEMONS = {
    "double fork and setsid, streams closed": """
import os, time
first = os.fork()
if first == 0:
    try:
        os.setsid()
        if os.fork() == 0:
            try:
                for fd in (0, 1, 2):
                    os.close(fd)
                time.sleep(300)
            finally:
                os._exit(0)
    finally:
        os._exit(0)
os.waitpid(first, 0)
""",
    "double fork and setsid, still writing to the run's stdout": """
import os, signal, time
first = os.fork()
if first == 0:
    try:
        os.setsid()
        if os.fork() == 0:
            try:
                for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
                    signal.signal(number, signal.SIG_IGN)
                while True:
                    try:
                        os.write(1, b"daemon says hi\\n")
                    except OSError:
                        pass
                    time.sleep(0.01)
            finally:
                os._exit(0)
    finally:
        os._exit(0)
os.waitpid(first, 0)
""",
}


@pytest.mark.parametrize("daemon", DAEMONS.values(), ids=DAEMONS.keys())
async def test_a_daemon_from_the_repl_dies_at_the_next_command_and_with_the_session(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session, daemon: str
) -> None:
    uid = uid_of(session)
    started = time.monotonic()
    outcome = await session.run_python(daemon, timeout=3)

    # A daemon holding the run's stdout must not hold the reply.
    assert time.monotonic() - started < 2
    assert outcome.reply.status == "ok", outcome.reply.error
    assert len(outcome.reply.stdout) <= session.policy.limits.output_chars
    assert len(others_of_uid(session)) == 1, "the daemon did not start: the test proves nothing"

    swept = await session.run_command("true")
    assert swept.reply.status == "ok", swept.reply.error
    assert others_of_uid(session) == []

    # A second daemon, left running until the session ends.
    await session.run_python(daemon, timeout=3)
    assert len(others_of_uid(session)) == 1
    await session.close()
    assert processes_of_uid(uid) == []
    await assert_a_fresh_session_answers(zygote)
    await neighbour.assert_intact()


async def test_a_new_session_child_of_a_timed_out_run_dies_with_the_session(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session
) -> None:
    uid = uid_of(session)
    attack = (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "time.sleep(300)"
    )
    outcome = await session.run_python(attack, timeout=0.5)

    assert outcome.reply.status == "timeout"
    await assert_answers(session)
    await session.close()
    assert processes_of_uid(uid) == []
    await assert_a_fresh_session_answers(zygote)
    await neighbour.assert_intact()


async def test_a_child_that_outlives_its_killed_worker_is_gone_with_it(
    neighbour: Neighbour, session: Session
) -> None:
    uid = uid_of(session)
    attack = (
        "import signal, subprocess\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n"
        "    pass"
    )
    outcome = await session.run_python(attack, timeout=0.5)

    assert outcome.reply.status == "killed"
    assert outcome.restarted
    await asyncio.sleep(0)
    assert left_of_uid(uid, session) == []
    await assert_answers(session)
    await neighbour.assert_intact()
