"""Attacks of the class *resource exhaustion* (SECURITY.md, guarantees 2 and 7).

Each test sends a real bomb to a real confined worker: fork and thread bombs, memory,
disk, inode and file-descriptor exhaustion, output floods, CPU burns, sleeps and reads
of standard input.  The assertions measure the effect from the host (processes and
threads of the session's uid, the cgroup's counters, ``statvfs`` of the workspace
tmpfs, the worker's descriptors, the service's own memory), never a message printed
by the attacker.  After every attack the session (or a fresh one) still answers, and
a neighbour session started beforehand still answers with its state intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psutil
import pytest

from sandbox import RunOutcome, Session, WorkerHandle, ZygoteClient
from sandbox.confine.namespaces import PRIVATE_TMP_MB
from tests.security.harness import (
    MB,
    Neighbour,
    assert_a_fresh_session_answers,
    assert_answers,
    left_of_uid,
    processes_of_uid,
    uid_of,
    worker_of,
)

pytestmark = [pytest.mark.anyio, pytest.mark.attack, pytest.mark.timeout(30)]

# What the host may lose beyond the session's own memory limit while a bomb runs:
# page cache, the service's buffers and whatever else the machine is doing.
HOST_MEMORY_SLACK_MB = 512
# How much the service (this process) may grow while it collects a flood.
SERVICE_GROWTH_LIMIT_MB = 64
SAMPLE_INTERVAL_S = 0.02


@dataclass
class HostSampler:
    """What the host sees of one session while a run goes on, at its worst."""

    uid: int
    worker: WorkerHandle
    peak_processes: int = 0
    peak_tasks: int = 0  # processes and threads, as the pids cgroup counts them
    peak_fds: int = 0
    peak_cgroup_memory: int = 0
    lowest_host_available: int = 0

    def sample(self) -> None:
        processes = processes_of_uid(self.uid)
        tasks = 0
        for process in processes:
            try:
                tasks += process.num_threads()
            except psutil.Error:
                continue
        self.peak_processes = max(self.peak_processes, len(processes))
        self.peak_tasks = max(self.peak_tasks, tasks)
        with contextlib.suppress(psutil.Error):
            self.peak_fds = max(self.peak_fds, psutil.Process(self.worker.pid).num_fds())
        usage = self.worker.usage()
        self.peak_cgroup_memory = max(
            self.peak_cgroup_memory,
            usage.get("memory_bytes", 0),
            usage.get("memory_peak_bytes", 0),
        )
        available = psutil.virtual_memory().available
        if not self.lowest_host_available or available < self.lowest_host_available:
            self.lowest_host_available = available


async def run_sampled(
    session: Session, run: Awaitable[RunOutcome]
) -> tuple[RunOutcome, HostSampler]:
    """Run an attack while sampling the host's view of the session every few ms."""
    sampler = HostSampler(uid_of(session), worker_of(session))
    sampler.sample()
    task = asyncio.ensure_future(run)
    while not task.done():
        sampler.sample()
        await asyncio.sleep(SAMPLE_INTERVAL_S)
    return await task, sampler


async def assert_a_kill_names_the_limit(session: Session, outcome: RunOutcome, limit: str) -> None:
    """Neither the attack's reply nor that of the call after it is a kill for another cause."""
    follow_up = await session.run_python("1 + 1")
    for reply in (outcome.reply, follow_up.reply):
        assert reply.status != "killed" or reply.limit == limit, reply.error


# -- processes and threads --------------------------------------------------------------

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""

# Children that sleep once the limit is reached leave the worker the CPU to answer the
# interrupt in time: the run ends as a timeout, not as a kill.
QUIET_FORK_BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.05)
"""


async def test_fork_bomb_is_held_to_the_process_limit(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session
) -> None:
    limit = session.policy.limits.processes
    bomb_uid = uid_of(session)
    outcome, seen = await run_sampled(session, session.run_python(FORK_BOMB, timeout=1))

    assert seen.peak_processes > limit // 2, "the bomb never forked: the test proves nothing"
    assert seen.peak_processes <= limit
    assert seen.peak_tasks <= limit
    assert outcome.reply.status in {"timeout", "killed"}
    if outcome.restarted:
        assert left_of_uid(bomb_uid, session) == []
    await assert_answers(session)
    await neighbour.assert_intact()

    last_uid = uid_of(session)
    await session.close()
    assert processes_of_uid(bomb_uid) == []
    assert processes_of_uid(last_uid) == []
    await assert_a_fresh_session_answers(zygote)


async def test_the_first_call_after_a_timed_out_fork_bomb_is_answered(
    neighbour: Neighbour, session: Session
) -> None:
    limit = session.policy.limits.processes
    outcome, seen = await run_sampled(session, session.run_python(QUIET_FORK_BOMB, timeout=1))

    assert seen.peak_processes > limit // 2, "the bomb never forked: the test proves nothing"
    assert seen.peak_tasks <= limit
    assert outcome.reply.status == "timeout"
    assert not outcome.restarted
    # The interrupted run's children are gone, so the pids they held are free again.
    assert [p.pid for p in processes_of_uid(uid_of(session))] == [worker_of(session).pid]
    await assert_answers(session)
    await neighbour.assert_intact()


THREAD_BOMBS = {
    "plain threads": "",
    # Small stacks and one malloc arena, so that the address-space limit is not what
    # stops the bomb: it runs into the process limit itself.
    "small stacks, one arena": (
        "import ctypes\nctypes.CDLL(None).mallopt(-8, 1)\nthreading.stack_size(256 * 1024)\n"
    ),
}


@pytest.mark.parametrize("tuning", THREAD_BOMBS.values(), ids=THREAD_BOMBS.keys())
async def test_thread_bomb_is_held_to_the_process_limit(
    neighbour: Neighbour, session: Session, tuning: str
) -> None:
    limit = session.policy.limits.processes
    bomb = (
        "import threading, time\n" + tuning + "spawned = []\n"
        "try:\n"
        "    while True:\n"
        "        thread = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
        "        thread.start()\n"
        "        spawned.append(thread)\n"
        "except RuntimeError:\n"
        "    pass\n"
        "time.sleep(0.2)\n"
        "len(spawned)"
    )
    outcome, seen = await run_sampled(session, session.run_python(bomb, timeout=2))

    assert outcome.reply.status == "ok", outcome.reply.error
    assert int(outcome.reply.value or 0) >= 8, "the bomb started almost no thread"
    assert seen.peak_tasks <= limit
    # The threads still sleep in the worker; the host counts them against the limit.
    tasks = sum(p.num_threads() for p in processes_of_uid(uid_of(session)))
    assert tasks <= limit
    await assert_answers(session)
    await neighbour.assert_intact()


# A thread that keeps every free pid taken, also the ones the worker frees between runs.
PID_HOARDER = """
import ctypes, threading, time
ctypes.CDLL(None).mallopt(-8, 1)
threading.stack_size(256 * 1024)
def hoard():
    while True:
        try:
            threading.Thread(target=time.sleep, args=(300,), daemon=True).start()
        except RuntimeError:
            time.sleep(0.001)
threading.Thread(target=hoard, daemon=True).start()
time.sleep(0.3)
"""


async def test_threads_that_hold_every_pid_are_reported_as_the_process_limit(
    neighbour: Neighbour, session: Session
) -> None:
    outcome, seen = await run_sampled(session, session.run_python(PID_HOARDER, timeout=2))
    assert seen.peak_tasks <= session.policy.limits.processes
    await assert_a_kill_names_the_limit(session, outcome, "processes")
    await assert_answers(session)
    await neighbour.assert_intact()


# -- memory -----------------------------------------------------------------------------


async def test_memory_bomb_in_one_process_ends_in_memory_error_and_spares_the_host(
    neighbour: Neighbour, session: Session
) -> None:
    limit = session.policy.limits.memory_mb * MB
    before = psutil.virtual_memory().available
    bomb = "hog = []\nwhile True:\n    hog.append(b'x' * (64 << 20))"
    outcome, seen = await run_sampled(session, session.run_python(bomb, timeout=5))

    assert outcome.reply.exc_type == "MemoryError" or (
        outcome.reply.status == "killed" and outcome.reply.limit == "memory"
    ), outcome.reply.error
    assert seen.peak_cgroup_memory <= limit
    assert before - seen.lowest_host_available < limit + HOST_MEMORY_SLACK_MB * MB
    await session.run_python("hog = None")
    await assert_answers(session)
    await neighbour.assert_intact()


# Four children of 400 MB each: every one fits its own address-space limit, together
# they do not fit the session's memory, so only the cgroup can stop them.  Once the OOM
# killer has ended two of them the rest fit with room to spare, so the session does not
# thrash at its limit.  Each holds its memory for a second: the four share one CPU's
# quota while they fill it, and with 0.3 s the first could leave before the last had
# filled its own (the test failed twice in about forty runs).
MEMORY_BOMB_IN_CHILDREN = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            hog = b"x" * (400 << 20)
            time.sleep(1.0)
        except MemoryError:
            status = 7
        finally:
            os._exit(status)
    children.append(pid)
[os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) for child in children]
"""


async def test_memory_bomb_across_processes_is_held_by_the_session_cgroup(
    neighbour: Neighbour, session: Session
) -> None:
    limit = session.policy.limits.memory_mb * MB
    handle = worker_of(session)
    before = psutil.virtual_memory().available
    outcome, seen = await run_sampled(
        session, session.run_python(MEMORY_BOMB_IN_CHILDREN, timeout=5)
    )

    assert seen.peak_cgroup_memory <= limit
    assert before - seen.lowest_host_available < limit + HOST_MEMORY_SLACK_MB * MB
    if outcome.restarted:
        assert outcome.reply.limit == "memory"
    else:
        # The OOM killer chose the biggest processes: some children, not the worker.
        assert handle.hit_memory_limit(), "the bomb never reached the limit"
        if outcome.reply.status == "ok":
            assert "-9" in (outcome.reply.value or ""), outcome.reply.value
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_memory_limit_reached_by_a_child_is_named_in_the_reply(session: Session) -> None:
    outcome = await session.run_python(MEMORY_BOMB_IN_CHILDREN, timeout=5)
    assert "-9" in (outcome.reply.value or "") or outcome.reply.status == "killed"
    assert outcome.reply.limit == "memory"


# -- disk and inodes --------------------------------------------------------------------


async def test_one_growing_file_stops_at_the_file_size_limit(
    neighbour: Neighbour, session: Session
) -> None:
    limit = session.policy.limits.file_size_mb * MB
    attack = (
        "import errno\n"
        "chunk = b'x' * (1 << 20)\n"
        "try:\n"
        "    with open('big.bin', 'wb', buffering=0) as big:\n"
        "        while True:\n"
        "            big.write(chunk)\n"
        "except OSError as exc:\n"
        "    failure = errno.errorcode[exc.errno]\n"
        "failure"
    )
    outcome = await session.run_python(attack, timeout=5)

    assert outcome.reply.status == "ok", outcome.reply.error
    assert outcome.reply.value == "'EFBIG'"
    assert os.path.getsize(os.path.join(session.workspace, "big.bin")) <= limit
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_a_command_writing_forever_stops_at_the_file_size_limit(
    neighbour: Neighbour, session: Session
) -> None:
    limit = session.policy.limits.file_size_mb * MB
    outcome = await session.run_command("yes > endless.txt", timeout=5)

    assert outcome.reply.status != "timeout"
    assert os.path.getsize(os.path.join(session.workspace, "endless.txt")) <= limit
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_filling_the_workspace_stops_at_its_quota(
    neighbour: Neighbour, session: Session
) -> None:
    quota = session.policy.limits.workspace_mb * MB
    attack = (
        "import errno\n"
        "chunk = b'x' * (1 << 20)\n"
        "written = 0\n"
        "try:\n"
        "    for n in range(1000):\n"
        "        with open(f'fill-{n}.bin', 'wb', buffering=0) as part:\n"
        "            for _ in range(8):\n"
        "                written += part.write(chunk)\n"
        "except OSError as exc:\n"
        "    failure = errno.errorcode[exc.errno]\n"
        "failure"
    )
    outcome = await session.run_python(attack, timeout=5)

    assert outcome.reply.value == "'ENOSPC'", outcome.reply.error
    disk = os.statvfs(session.workspace)
    assert disk.f_blocks * disk.f_frsize <= quota
    assert (disk.f_blocks - disk.f_bfree) * disk.f_frsize <= quota
    on_host = sum(entry.stat().st_size for entry in os.scandir(session.workspace))
    assert quota // 2 < on_host <= quota
    cleanup = "import glob\nfor name in glob.glob('fill-*.bin'):\n    os.remove(name)"
    assert (await session.run_python("import os\n" + cleanup)).reply.status == "ok"
    await assert_answers(session)
    await neighbour.assert_intact()


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
async def test_filling_private_tmp_stops_at_its_size(
    neighbour: Neighbour, session: Session, directory: str
) -> None:
    attack = (
        "import errno\n"
        "try:\n"
        "    for n in range(1000):\n"
        f"        with open(f'{directory}/fill-{{n}}', 'wb', buffering=0) as part:\n"
        "            part.write(b'x' * (8 << 20))\n"
        "except OSError as exc:\n"
        "    failure = errno.errorcode[exc.errno]\n"
        "failure"
    )
    outcome = await session.run_python(attack, timeout=5)

    assert outcome.reply.value == "'ENOSPC'", outcome.reply.error
    # The host reads the worker's own mount of that directory through /proc.
    disk = os.statvfs(f"/proc/{worker_of(session).pid}/root{directory}")
    size = disk.f_blocks * disk.f_frsize
    used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
    assert size <= PRIVATE_TMP_MB * MB
    assert size // 2 < used <= size
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_inode_flood_stops_at_the_workspace_inode_limit(
    neighbour: Neighbour, session: Session
) -> None:
    attack = (
        "import errno, os\n"
        "os.mkdir('flood')\n"
        "created = 0\n"
        "try:\n"
        "    while True:\n"
        "        open(f'flood/{created}', 'w').close()\n"
        "        created += 1\n"
        "except OSError as exc:\n"
        "    failure = errno.errorcode[exc.errno]\n"
        "(failure, created)"
    )
    outcome = await session.run_python(attack, timeout=5)

    assert outcome.reply.status == "ok", outcome.reply.error
    disk = os.statvfs(session.workspace)
    expected_inodes = max(session.policy.limits.workspace_mb * MB // (16 * 1024), 1024)
    assert disk.f_files == expected_inodes
    assert disk.f_ffree <= 2
    on_host = len(os.listdir(os.path.join(session.workspace, "flood")))
    assert on_host <= disk.f_files
    assert outcome.reply.value == repr(("ENOSPC", on_host))
    removal = "import shutil\nshutil.rmtree('flood')"
    assert (await session.run_python(removal)).reply.status == "ok"
    await assert_answers(session)
    await neighbour.assert_intact()


# -- file descriptors -------------------------------------------------------------------


async def test_descriptor_exhaustion_stops_at_the_open_files_limit(
    neighbour: Neighbour, session: Session
) -> None:
    limit = session.policy.limits.open_files
    attack = (
        "import errno, os, time\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as exc:\n"
        "    failure = errno.errorcode[exc.errno]\n"
        "time.sleep(0.3)\n"
        "for fd in held:\n"
        "    os.close(fd)\n"
        "(failure, len(held))"
    )
    outcome, seen = await run_sampled(session, session.run_python(attack, timeout=3))

    assert outcome.reply.status == "ok", outcome.reply.error
    assert outcome.reply.value is not None
    assert outcome.reply.value.startswith("('EMFILE', ")
    assert limit - 16 < seen.peak_fds <= limit
    await assert_answers(session)
    await neighbour.assert_intact()


@pytest.mark.parametrize("spare", [0, 1], ids=["every descriptor", "all but one"])
async def test_descriptors_held_past_the_cell_are_reported_as_the_open_files_limit(
    neighbour: Neighbour, session: Session, spare: int
) -> None:
    # The worker needs descriptors of its own for every run; a cell that keeps them all
    # may cost the namespace, but every reply must name the limit, never a crash.
    attack = (
        "import os\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError:\n"
        "    pass\n"
        f"for _ in range({spare}):\n"
        "    os.close(held.pop())"
    )
    outcome = await session.run_python(attack, timeout=3)
    await assert_a_kill_names_the_limit(session, outcome, "open_files")
    await assert_answers(session)
    await neighbour.assert_intact()


# -- output -----------------------------------------------------------------------------

PYTHON_FLOODS = {
    "os.write to fd 1": "import os\nwhile True:\n    os.write(1, b'x' * 65536)",
    "print in a loop": "while True:\n    print('y' * 1000)",
    "stderr in a loop": "import sys\nwhile True:\n    sys.stderr.write('e' * 100000)",
}


async def _assert_flood_is_bounded(
    session: Session, flood: Callable[[], Awaitable[RunOutcome]]
) -> None:
    service = psutil.Process()
    before = service.memory_info().rss
    outcome = await flood()
    keep = session.policy.limits.output_chars
    assert outcome.reply.status == "timeout"
    assert outcome.reply.truncated
    assert len(outcome.reply.stdout) <= keep
    assert len(outcome.reply.stderr) <= keep
    assert len(outcome.reply.stdout) + len(outcome.reply.stderr) > keep // 2
    assert service.memory_info().rss - before < SERVICE_GROWTH_LIMIT_MB * MB


@pytest.mark.parametrize("code", PYTHON_FLOODS.values(), ids=PYTHON_FLOODS.keys())
async def test_output_flood_from_python_is_bounded_and_marked_truncated(
    neighbour: Neighbour, session: Session, code: str
) -> None:
    await _assert_flood_is_bounded(session, lambda: session.run_python(code, timeout=0.5))
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_output_flood_from_a_command_is_bounded_and_marked_truncated(
    neighbour: Neighbour, session: Session
) -> None:
    await _assert_flood_is_bounded(session, lambda: session.run_command("yes", timeout=0.5))
    assert [p.pid for p in processes_of_uid(uid_of(session))] == [worker_of(session).pid]
    await assert_answers(session)
    await neighbour.assert_intact()


# Fifteen directories of 250 characters, then 4,000 files of 200: every changed file's
# path is about 4,000 characters long, 16 MB of names in all.
LONG_NAMES_FLOOD = """
import os
path = "/".join(["d" * 250] * 15)
os.makedirs(path)
for n in range(4000):
    open(f"{path}/{n:0>200}", "w").close()
"""


async def test_a_flood_of_changed_files_leaves_the_service_bounded(
    neighbour: Neighbour, session: Session
) -> None:
    service = psutil.Process()
    before = service.memory_info().rss
    await session.run_python(LONG_NAMES_FLOOD, timeout=5)

    assert service.memory_info().rss - before < SERVICE_GROWTH_LIMIT_MB * MB
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_a_flood_of_changed_files_is_cut_from_the_reply_instead_of_killing_the_worker(
    session: Session,
) -> None:
    await session.run_python("kept = 'namespace'")
    outcome = await session.run_python(LONG_NAMES_FLOOD, timeout=5)

    assert outcome.reply.status == "ok", outcome.reply.error
    assert not outcome.restarted
    assert (await session.run_python("kept")).reply.value == "'namespace'"


# -- time -------------------------------------------------------------------------------


async def test_cpu_burn_times_out_and_keeps_the_namespace(
    neighbour: Neighbour, session: Session
) -> None:
    await session.run_python("kept = 'burnt'")
    started = time.monotonic()
    outcome = await session.run_python("while True:\n    pass", timeout=0.5)
    elapsed = time.monotonic() - started

    assert outcome.reply.status == "timeout"
    assert outcome.reply.limit == "wall_time"
    assert not outcome.restarted
    assert elapsed < 0.5 + session.policy.limits.interrupt_grace_s
    assert (await session.run_python("kept")).reply.value == "'burnt'"
    await assert_answers(session)
    await neighbour.assert_intact()


CPU_BURN_IN_THREE_PROCESSES = """
import os
for _ in range(2):
    if os.fork() == 0:
        try:
            while True:
                pass
        finally:
            os._exit(0)
while True:
    pass
"""


async def test_cpu_burn_in_several_processes_gets_at_most_one_cpu(
    neighbour: Neighbour, session: Session
) -> None:
    worker = worker_of(session)
    task = asyncio.ensure_future(session.run_python(CPU_BURN_IN_THREE_PROCESSES, timeout=1.2))
    await asyncio.sleep(0.3)
    first, first_at = worker.usage().get("cpu_ns"), time.monotonic()
    await asyncio.sleep(0.8)
    last, last_at = worker.usage().get("cpu_ns"), time.monotonic()
    outcome = await task

    assert first is not None, "the cgroup reports no cpu time"
    assert last is not None
    cpus_used = (last - first) / 1e9 / (last_at - first_at)
    assert 0.05 < cpus_used <= 1.25
    assert outcome.reply.status == "timeout"
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_sleep_times_out_and_the_next_call_works(
    neighbour: Neighbour, session: Session
) -> None:
    await session.run_python("kept = 'rested'")
    outcome = await session.run_python("import time\ntime.sleep(300)", timeout=0.5)

    assert outcome.reply.status == "timeout"
    assert not outcome.restarted
    assert (await session.run_python("kept")).reply.value == "'rested'"
    await assert_answers(session)
    await neighbour.assert_intact()


# -- standard input ---------------------------------------------------------------------

STDIN_READERS_PYTHON = {
    "sys.stdin.read": "import sys\nsys.stdin.read()",
    "input": "input('say something: ')",
    "os.read fd 0": "import os\nos.read(0, 1024)",
}
STDIN_READERS_COMMAND = ["cat", "grep anything", "sort", "head -n 1"]


@pytest.mark.parametrize("code", STDIN_READERS_PYTHON.values(), ids=STDIN_READERS_PYTHON.keys())
async def test_python_reading_stdin_returns_at_once(
    neighbour: Neighbour, session: Session, code: str
) -> None:
    started = time.monotonic()
    outcome = await session.run_python(code, timeout=3)

    assert time.monotonic() - started < 1.5
    assert outcome.reply.status in {"ok", "error"}
    assert outcome.reply.value in {None, "''", "b''"}
    assert outcome.reply.exc_type in {None, "EOFError"}
    await assert_answers(session)
    await neighbour.assert_intact()


@pytest.mark.parametrize("line", STDIN_READERS_COMMAND)
async def test_command_reading_stdin_returns_at_once(
    neighbour: Neighbour, session: Session, line: str
) -> None:
    started = time.monotonic()
    outcome = await session.run_command(line, timeout=3)

    assert time.monotonic() - started < 1.5
    assert outcome.reply.status in {"ok", "error"}
    assert outcome.reply.exit_code in {0, 1}
    await assert_answers(session)
    await neighbour.assert_intact()
