"""Sessions against real workers: semantics, timeouts, crashes and recovery."""

from __future__ import annotations

import ast
import asyncio
import os
from pathlib import Path

import psutil
import pytest

from sandbox import Session, ZygoteClient, workspaces
from sandbox.confine import cgroup
from sandbox.confine.environment import session_environment
from sandbox.errors import WorkerBusy

pytestmark = pytest.mark.anyio


def _processes_of_uid(uid: int | None) -> list[psutil.Process]:
    assert uid is not None, "these tests need per-session uids (run as root)"
    return [
        p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid
    ]


async def test_state_persists_and_last_expression_is_shown(session: Session) -> None:
    first = await session.run_python("x = 21")
    assert first.reply.status == "ok"
    second = await session.run_python("print('hi')\nx * 2")
    assert second.reply.stdout == "hi\n"
    assert second.reply.value == "42"
    assert second.reply.execution_count == 2


async def test_output_is_captured_at_the_file_descriptor_level(session: Session) -> None:
    code = (
        "import ctypes, os\nos.write(1, b'from-os ')\nctypes.CDLL(None).write(2, b'from-libc', 9)"
    )
    outcome = await session.run_python(code)
    assert outcome.reply.stdout == "from-os "
    assert outcome.reply.stderr == "from-libc"


async def test_preloaded_pandas_example_returns_head(session: Session) -> None:
    code = (
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})\ndf.head()"
    )
    outcome = await session.run_python(code)
    assert outcome.reply.status == "ok", outcome.reply.error
    assert outcome.reply.value is not None
    assert "a  b" in outcome.reply.value


async def test_timeout_interrupts_and_keeps_the_namespace(session: Session) -> None:
    await session.run_python("kept = 'still here'")
    outcome = await session.run_python("while True:\n    pass", timeout=1)
    assert outcome.reply.status == "timeout"
    assert outcome.restarted is False
    after = await session.run_python("kept")
    assert after.reply.value == "'still here'"


async def test_a_sigint_handler_a_run_left_is_replaced_before_the_next_run(
    session: Session,
) -> None:
    await session.run_python("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)")
    outcome = await session.run_python("kept = 1\nwhile True:\n    pass", timeout=1)
    # Interrupted, not killed: the worker's own handler was back in place.
    assert outcome.reply.status == "timeout"
    assert outcome.restarted is False
    assert (await session.run_python("kept")).reply.value == "1"


async def test_code_ignoring_sigint_is_killed_and_the_next_call_works(session: Session) -> None:
    await session.run_python("open('kept.txt', 'w').write('file survives')\nlost = 1")
    old_pid = session.worker.pid if session.worker else None
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    outcome = await session.run_python(code, timeout=1)
    assert outcome.reply.status == "killed"
    assert outcome.restarted is True
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == "zombie"
    after = await session.run_python("print(open('kept.txt').read())\nlost")
    assert after.reply.stdout == "file survives\n"
    assert after.reply.exc_type == "NameError"
    assert after.reply.execution_count == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("import os\nos._exit(3)", "exited with code 3"),
        ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),
        # The worker is init of its PID namespace, which ignores its own SIGABRT:
        # glibc's abort() then ends it with a fault.
        ("import os\nos.abort()", "killed by SIG"),
    ],
)
async def test_worker_crash_is_reported_and_replaced(
    session: Session, code: str, reason: str
) -> None:
    outcome = await session.run_python(code)
    assert outcome.reply.status == "killed"
    assert outcome.reply.error is not None
    assert reason in outcome.reply.error
    assert outcome.restarted
    assert (await session.run_python("1 + 1")).reply.value == "2"


async def test_output_flood_is_bounded_while_produced(session: Session) -> None:
    code = "import os\nwhile True:\n    os.write(1, b'x' * 65536)"
    outcome = await session.run_python(code, timeout=2)
    assert outcome.reply.status == "timeout"
    assert outcome.reply.truncated
    assert len(outcome.reply.stdout) <= session.policy.limits.output_chars
    assert "characters omitted" in outcome.reply.stdout


async def test_garbage_on_the_channel_kills_only_that_session(
    zygote: ZygoteClient, session: Session
) -> None:
    neighbour = await Session.start(zygote)
    try:
        await neighbour.run_python("mine = 7")
        code = (
            "import os, stat\n"
            "for fd in range(3, 64):\n"
            "    try:\n"
            "        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
            "            os.write(fd, b'\\xff' * 64)\n"
            "    except OSError:\n"
            "        pass"
        )
        outcome = await session.run_python(code)
        assert outcome.reply.status == "killed"
        assert outcome.restarted
        assert (await session.run_python("2 + 2")).reply.value == "4"
        assert (await neighbour.run_python("mine")).reply.value == "7"
    finally:
        await neighbour.close()
        workspaces.remove(neighbour.workspace)


async def test_forged_reply_on_the_channel_cannot_desynchronise_the_session(
    session: Session,
) -> None:
    code = (
        "import os, stat, json, struct\n"
        "forged = json.dumps(\n"
        "    {'kind': 'reply', 'run_id': 999, 'status': 'ok', 'stdout': 'FORGED'}\n"
        ").encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
        "            os.write(fd, struct.pack('>I', len(forged)) + forged)\n"
        "    except OSError:\n"
        "        pass"
    )
    outcome = await session.run_python(code)
    assert "FORGED" not in outcome.reply.stdout
    assert outcome.reply.status == "killed"
    follow_up = await session.run_python("'clean'")
    assert follow_up.reply.value == "'clean'"


async def test_a_forged_reply_cannot_name_a_limit_or_a_status_only_the_service_gives(
    session: Session,
) -> None:
    # The run's id is guessable; what the worker says of why a run stopped is not
    # taken: it would reach the audit log and the metrics as the service's finding.
    run_id = session._run_ids + 1
    code = (
        "import os, stat, json, struct, time\n"
        "forged = json.dumps({'kind': 'reply', 'run_id': RUN_ID, 'status': 'killed',\n"
        "                     'limit': 'memory', 'error': 'FORGED'}).encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
        "            os.write(fd, struct.pack('>I', len(forged)) + forged)\n"
        "    except OSError:\n"
        "        pass\n"
        "time.sleep(0.5)"
    ).replace("RUN_ID", str(run_id))
    outcome = await session.run_python(code)
    assert outcome.reply.error == "FORGED"  # the forged frame was the reply
    assert outcome.reply.status == "error"
    assert outcome.reply.limit is None
    assert outcome.limit is None


async def test_command_sees_files_the_repl_wrote(session: Session) -> None:
    await session.run_python("open('data.csv', 'w').write('a,b\\n1,2\\n')")
    outcome = await session.run_command("cat data.csv | wc -l")
    assert outcome.reply.status == "ok", outcome.reply.error
    assert outcome.reply.stdout.strip() == "2"


async def test_command_exit_code_and_stderr_are_reported(session: Session) -> None:
    outcome = await session.run_command("ls no-such-file")
    assert outcome.reply.status == "error"
    assert outcome.reply.exit_code == 2
    assert "no-such-file" in outcome.reply.stderr


async def test_command_denied_inside_the_worker_too(session: Session) -> None:
    outcome = await session.run_command("sh -c id")
    assert outcome.reply.status == "denied"
    assert outcome.reply.denied_rule == "allowlist"


async def test_command_timeout_kills_the_program(session: Session) -> None:
    outcome = await session.run_command("sleep 30", timeout=1)
    assert outcome.reply.status == "timeout"
    uid = session.worker.uid if session.worker else None
    survivors = [
        p for p in _processes_of_uid(uid) if p.pid != (session.worker.pid if session.worker else 0)
    ]
    assert survivors == []


async def test_matplotlib_figures_are_saved_to_the_workspace(session: Session) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])"
    outcome = await session.run_python(code)
    assert outcome.reply.status == "ok", outcome.reply.error
    names = [f.name for f in outcome.reply.files]
    assert names == ["figure-1.png"]
    with open(os.path.join(session.workspace, "figure-1.png"), "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


async def test_a_request_behind_a_long_run_waits_its_queue_time_then_is_refused(
    session: Session,
) -> None:
    # The test policy lets a request wait 2 s for the previous run, and runs last 3 s.
    slow = asyncio.create_task(session.run_python("import time\ntime.sleep(2.6)\n'slow'"))
    await asyncio.sleep(0.2)
    with pytest.raises(WorkerBusy):
        await session.run_python("'queued'")
    assert not slow.done()  # the refused request did not disturb the run it queued behind
    assert (await slow).reply.value == "'slow'"
    # A request queued behind a run that ends in time is served.
    slow = asyncio.create_task(session.run_python("time.sleep(0.5)\n'second'"))
    await asyncio.sleep(0.1)
    queued = await session.run_python("'served'")
    assert (await slow).reply.value == "'second'"
    assert queued.reply.value == "'served'"


async def test_a_request_arriving_as_the_lock_passes_to_a_queued_one_waits_its_queue_time(
    session: Session,
) -> None:
    async def first_then_another() -> str | None:
        await session.run_python("import time\ntime.sleep(0.5)")
        # Within the same step: the lock is free, its queued request woken but not yet
        # run.  This request must queue with its time limit, not take the lock at once.
        return (await session.run_python("'late'")).reply.value

    first = asyncio.create_task(first_then_another())
    await asyncio.sleep(0.2)
    queued = asyncio.create_task(session.run_python("time.sleep(2.6)\n'queued'"))
    with pytest.raises(WorkerBusy):
        await first
    assert (await queued).reply.value == "'queued'"


async def test_two_sessions_run_in_parallel(zygote: ZygoteClient, session: Session) -> None:
    other = await Session.start(zygote)
    try:
        slow = asyncio.create_task(session.run_python("import time\ntime.sleep(2)\n'slow'"))
        await asyncio.sleep(0.2)
        quick = await other.run_python("'quick'")
        assert quick.reply.value == "'quick'"
        assert session.busy
        assert not slow.done()
        assert (await slow).reply.value == "'slow'"
    finally:
        await other.close()
        workspaces.remove(other.workspace)


_DRAWS = (
    "import random, numpy as np\n"
    "state = np.random.get_state()\n"
    "(random.getrandbits(64), int(np.random.randint(2**62)), float(np.random.standard_normal()),"
    " bool(state[1].any()), state[2])"
)


async def test_every_session_draws_its_own_random_numbers(
    zygote: ZygoteClient, session: Session
) -> None:
    # Workers are forks of one zygote: without a new seed each, every session would draw
    # the numbers of every other one.
    other = await Session.start(zygote)
    try:
        draws = [
            ast.literal_eval((await each.run_python(_DRAWS)).reply.value or "None")
            for each in (session, other)
        ]
    finally:
        await other.close()
        workspaces.remove(other.workspace)
    (mine_random, mine_numpy, mine_normal, *_), (theirs_random, theirs_numpy, theirs_normal, *_) = (
        draws
    )
    assert mine_random != theirs_random
    assert mine_numpy != theirs_numpy
    assert mine_normal != theirs_normal
    for *_, key_is_set, position in draws:
        # A valid MT19937 state: a non-zero key, the position within it.
        assert key_is_set
        assert 0 <= position <= 624


async def test_a_session_sees_exactly_the_allowlisted_environment(session: Session) -> None:
    outcome = await session.run_python(
        "import os, subprocess\n"
        "child = subprocess.run(['cat', '/proc/self/environ'], capture_output=True)\n"
        "variables = child.stdout.decode().split('\\0')\n"
        "(os.getcwd(), dict(os.environ), dict(v.split('=', 1) for v in variables if v))"
    )
    workspace, mine, programs = ast.literal_eval(outcome.reply.value or "None")
    expected = session_environment(workspace)
    assert mine == expected
    assert programs == expected


def _allowed_cores(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return cgroup.parse_cpu_list(line.split()[1])
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def _is_idle(session: Session) -> bool | None:
    """Whether the session is put behind the others (None: no cpu.idle here).

    Its group's cpu.idle and its worker's scheduling policy must say the same, where the
    service may change policies.
    """
    assert session.worker is not None
    version = cgroup.select_version(session.worker.cgroup_parent)
    assert isinstance(version, cgroup.CgroupVersion)
    cpu = version.trees.get("cpu")
    path = None if cpu is None else cpu.session_dir(session.worker.session_key) / "cpu.idle"
    if path is None or not path.exists():
        return None
    group_idle = path.read_text().strip() == "1"
    if cgroup.may_restore_policies():  # else the service leaves policies alone
        assert (os.sched_getscheduler(session.worker.pid) == os.SCHED_IDLE) == group_idle
    return group_idle


def _all_sessions_idle(session: Session) -> bool | None:
    """Whether the sessions' parent group is idle (None: no cpu.idle here)."""
    assert session.worker is not None
    version = cgroup.select_version(session.worker.cgroup_parent)
    assert isinstance(version, cgroup.CgroupVersion)
    parent = version.sessions_cpu_group()
    path = None if parent is None else parent / "cpu.idle"
    return None if path is None or not path.exists() else path.read_text().strip() == "1"


async def _scheduling_while_running(
    session: Session, code: str, after_s: float
) -> list[tuple[list[int], bool | None, bool | None]]:
    """The worker's allowed cores, its group's idleness and its parent's, during a run
    and after_s after it."""
    assert session.worker is not None
    pid = session.worker.pid
    run = asyncio.create_task(session.run_python(code, timeout=1.5))
    seen = []
    while not run.done():
        seen.append((_allowed_cores(pid), _is_idle(session), _all_sessions_idle(session)))
        await asyncio.sleep(0.05)
    assert (await run).reply.status == "timeout"
    for _ in range(int(after_s / 0.05)):
        seen.append((_allowed_cores(pid), _is_idle(session), _all_sessions_idle(session)))
        await asyncio.sleep(0.05)
    return seen


SPINNING_PROCESSES = (
    "import os\nfor _ in range(3):\n    if os.fork() == 0:\n        while True: pass\n"
    "while True: pass"
)


def _skip_unless_cores_can_be_held(session: Session) -> list[int]:
    assert session.worker is not None
    cores = _allowed_cores(session.worker.pid)
    version = cgroup.select_version(session.worker.cgroup_parent)
    if len(cores) < 2 or not isinstance(version, cgroup.CgroupVersion):
        pytest.skip("needs two cores and cgroups")
    if version.cpuset_file(session.worker.session_key) is None:
        pytest.skip("no cpuset for session groups on this host")
    return cores


async def test_a_session_keeping_a_core_busy_is_held_behind_the_rest_while_it_does(
    session: Session,
) -> None:
    cores = _skip_unless_cores_can_be_held(session)
    normal = False if _is_idle(session) is not None else None
    # One busy process is held to all cores but the first and put behind every other
    # task (a neighbour woken on its core would wait out its slice), but the other
    # sessions keep their place: it does not fill every core.
    alone = await _scheduling_while_running(session, "while 1: pass", 4.0)
    if normal is None:
        assert cores[1:] in [held for held, _, _ in alone]
    else:
        assert (cores[1:], True, False) in alone
        assert all(parent_idle is False for _, _, parent_idle in alone)
    assert alone[-1] == (cores, normal, normal)
    # Four fill every core: while they run, all sessions are put behind the tasks
    # outside them too; everything is given back once it has gone quiet.
    seen = await _scheduling_while_running(session, SPINNING_PROCESSES, 3.0)
    if normal is None:
        assert cores[1:] in [held for held, _, _ in seen]
        assert seen[-1][0] == cores
    else:
        assert (cores[1:], True, True) in seen
        assert seen[-1] == (cores, False, False)


async def test_busy_processes_a_run_left_running_are_held_to_all_cores_but_one(
    session: Session,
) -> None:
    cores = _skip_unless_cores_can_be_held(session)
    assert session.worker is not None
    pid = session.worker.pid
    # They start spinning only once the run is over and its first check has passed.
    started = await session.run_python(
        "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n"
        "        time.sleep(0.5)\n        while True: pass\n'left running'"
    )
    assert started.reply.value == "'left running'"
    seen = []
    for _ in range(30):
        seen.append((_allowed_cores(pid), _is_idle(session)))
        if seen[-1][1]:
            break
        await asyncio.sleep(0.05)
    assert cores[1:] in [held for held, _ in seen]
    if _is_idle(session) is not None:
        assert (cores[1:], True) in seen
        version = cgroup.select_version(session.worker.cgroup_parent)
        assert isinstance(version, cgroup.CgroupVersion)
        parent = version.sessions_cpu_group()
        assert parent is not None
        assert (parent / "cpu.idle").read_text().strip() == "1"
        # Closed while held: the other sessions are given their place back all the same.
        await session.close()
        assert (parent / "cpu.idle").read_text().strip() == "0"


SPINNERS_THEN_ONE = (
    "import os, time\n"
    "for _ in range(3):\n"
    "    if os.fork() == 0:\n"
    "        end = time.monotonic() + 1.0\n"
    "        while time.monotonic() < end:\n"
    "            pass\n"
    "        os._exit(0)\n"
    "if os.fork() == 0:\n"
    "    while True:\n"
    "        pass\n"
    "'started'"
)


async def test_a_held_session_down_to_one_busy_process_gives_the_others_their_place_back(
    session: Session,
) -> None:
    _skip_unless_cores_can_be_held(session)
    if _is_idle(session) is None or _all_sessions_idle(session) is None:
        pytest.skip("no cpu.idle here")
    assert (await session.run_python(SPINNERS_THEN_ONE)).reply.value == "'started'"
    # Four busy processes for a second, then one for good: the session is held all along
    # (it keeps using a CPU), but the other sessions are idle only while it has enough
    # runnable threads to fill every core.
    seen = []
    for _ in range(200):
        seen.append((_is_idle(session), _all_sessions_idle(session)))
        if (True, True) in seen and seen[-1] == (True, False):
            break
        await asyncio.sleep(0.05)
    assert (True, True) in seen
    assert seen[-1] == (True, False)


async def test_closing_a_session_ends_every_process_it_started(zygote: ZygoteClient) -> None:
    session = await Session.start(zygote)
    uid = session.worker.uid if session.worker else None
    await session.run_python(
        "import subprocess\np = subprocess.Popen(['sleep', '300'], start_new_session=True)"
    )
    assert len(_processes_of_uid(uid)) >= 2
    await session.close()
    workspaces.remove(session.workspace)
    await asyncio.sleep(0.1)
    assert _processes_of_uid(uid) == []


async def test_memory_limit_is_reported_as_such_and_the_session_recovers(session: Session) -> None:
    # Plain bytearrays stay within the address-space rlimit's reach only partly;
    # whichever layer stops it, the reply names the memory limit.
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))"
    outcome = await session.run_python(code, timeout=8)
    assert outcome.reply.exc_type == "MemoryError" or outcome.reply.limit == "memory"
    assert (await session.run_python("'alive'")).reply.value == "'alive'"


async def test_a_restart_is_remembered_until_a_run_succeeds(session: Session) -> None:
    await session.run_python("setup = 1")
    await session.restart()
    lost = await session.run_python("setup")
    assert lost.reply.exc_type == "NameError"
    assert lost.since_restart
    assert (await session.run_python("setup = 1")).since_restart
    assert not (await session.run_python("setup")).since_restart


@pytest.mark.parametrize(
    ("code", "status", "field", "expected"),
    [
        # A file name that is not UTF-8, as an archive from elsewhere may hold.
        ("open(b'\\xff.txt', 'wb').write(b'x')", "ok", "files", "\\udcff.txt"),
        (
            "class S:\n    def __repr__(self):\n        return chr(0xD800)\nS()",
            "ok",
            "value",
            "\\ud800",
        ),
        ("raise ValueError(chr(0xDC80))", "error", "error", "ValueError: \\udc80"),
        ("raise type('E' * 5_000_000, (Exception,), {})()", "error", "exc_type", "E" * 200),
    ],
)
async def test_text_a_reply_cannot_carry_comes_back_escaped_and_the_worker_stays(
    session: Session, code: str, status: str, field: str, expected: str
) -> None:
    pid = session.worker.pid if session.worker else None
    await session.run_python("kept = 1")
    outcome = await session.run_python(code)
    assert outcome.reply.status == status, outcome.reply.error
    if field == "files":
        assert [changed.name for changed in outcome.reply.files] == [expected]
    else:
        assert expected in str(getattr(outcome.reply, field))
    assert outcome.restarted is False
    assert session.worker is not None
    assert session.worker.pid == pid
    assert (await session.run_python("kept")).reply.value == "1"
