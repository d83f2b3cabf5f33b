"""A run is a task its session owns (sandbox/run.py): callers await it shielded, a
cancelled caller abandons it (interrupt, grace, kill), and the session is held for the
run's whole life, recovery included."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox import Policy, RunFinished, Session, SessionState, ZygoteClient, handle
from tests.zygotes import stop_zygote

pytestmark = pytest.mark.anyio


async def _cancel_after(
    seconds: float, call: Coroutine[Any, Any, object], meanwhile: Callable[[], None] = lambda: None
) -> None:
    """Start a call, cancel it ``seconds`` later, and check that its caller saw that."""
    running = asyncio.create_task(call)
    await asyncio.sleep(seconds)
    meanwhile()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_cancelled_run_is_interrupted_and_the_next_waits_for_it(session: Session) -> None:
    # An MCP client may cancel a call: the run's clock goes with its caller, so the run
    # must be interrupted rather than left running, and the session's next run must not
    # be sent to a worker still busy with it.
    code = (
        "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
        "    open('interrupted', 'w').write('yes')\n    raise"
    )
    await session.run_python("kept = 'still here'")
    await _cancel_after(1.0, session.run_python(code, timeout=120))
    after = await session.run_python("open('interrupted').read(), kept", timeout=10)
    assert after.reply.status == "ok", after.reply.error
    assert after.reply.value == "('yes', 'still here')"
    assert after.restarted is False


async def test_a_cancelled_callers_run_goes_on_holding_the_session_until_it_ends(
    session: Session,
) -> None:
    ignores = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    run = await session.start_python(ignores, timeout=60)
    ended: list[bool] = []
    run.when_done(lambda: ended.append(True))
    await _cancel_after(0.5, run.outcome())
    assert run.abandoned
    await asyncio.sleep(0.1)
    # The interrupt is ignored: the run holds the session for the 1 s grace, then its
    # worker is killed and replaced, by the run's own task.
    assert session.busy
    assert ended == []
    outcome = await run.task
    assert ended == [True]
    assert outcome.reply.status == "killed"
    assert outcome.interrupted_by == "cancelled"
    assert "its caller went away" in (outcome.reply.error or "")
    after = await session.run_python("1 + 1", timeout=10)
    assert after.reply.value == "2"
    assert after.restarted  # the killed worker's namespace is gone


async def test_a_caller_cancelled_while_queued_starts_nothing(session: Session) -> None:
    slow = asyncio.create_task(session.run_python("import time\ntime.sleep(1)"))
    await asyncio.sleep(0.1)
    await _cancel_after(0.3, session.start_python("open('ran', 'w').write('yes')"))
    assert (await slow).reply.status == "ok"
    check = await session.run_python("import os\nos.path.exists('ran')")
    assert check.reply.value == "False"


async def test_subscribers_read_the_end_of_a_run_and_change_nothing(session: Session) -> None:
    run = await session.start_python("import time\ntime.sleep(0.3)\n6 * 7")
    seen = [event async for event in run.events()]
    [finished] = seen
    assert isinstance(finished, RunFinished)
    assert finished.outcome is await run.outcome()
    assert finished.outcome.reply.value == "42"
    assert [event async for event in run.events()] == []  # the run has ended


async def test_closing_a_session_during_a_run_ends_the_run_and_starts_no_worker(
    session: Session,
) -> None:
    # DELETE /sessions/{id} while a cell runs: the worker dies, and the run must not
    # start a fresh one that nobody would ever end.
    run = await session.start_python("import time\ntime.sleep(60)", timeout=120)
    await asyncio.sleep(0.3)
    old = session.worker
    assert old is not None
    held_before = handle.held_worker_pids()
    await session.close()
    outcome = await asyncio.wait_for(run.outcome(), timeout=20)
    assert outcome.reply.status == "killed"
    assert "the session was ended" in (outcome.reply.error or "")
    assert not outcome.restarted
    assert session.state is SessionState.CLOSED
    assert session.worker is None
    assert not psutil.pid_exists(old.pid)
    assert handle.held_worker_pids() <= held_before - {old.pid}


async def test_a_restart_asked_during_a_recovery_waits_for_it_then_restarts(
    session: Session,
) -> None:
    await session.run_python("setup = 1")
    run = await session.start_python(CLOSE_CHANNEL_AND_RUN_ON, timeout=60)
    # The channel closes at once; the worker is given 2 s to exit before it is killed.
    await asyncio.sleep(0.5)
    assert session.state is SessionState.RECOVERING
    recovering_worker = session.worker
    await session.restart()
    assert run.done()  # the restart queued behind the recovery
    assert (await run.outcome()).reply.status == "killed"
    assert session.state is SessionState.IDLE
    assert session.worker is not None
    assert session.worker is not recovering_worker
    assert (await session.run_python("setup")).reply.exc_type == "NameError"


async def test_a_zygote_that_dies_mid_run_does_not_end_the_run_or_the_session(
    policy: Policy, tmp_path: Path
) -> None:
    # Workers are the service's children, not the zygote's: a run in progress goes on,
    # and the session's next worker comes from a zygote started again.
    zygote = ZygoteClient(policy, str(tmp_path / "state"))
    zygote.start()
    try:
        session = await Session.start(zygote)
        try:
            run = await session.start_python("import time\ntime.sleep(1)\n'done'")
            assert zygote.pid is not None
            os.kill(zygote.pid, signal.SIGKILL)
            outcome = await run.outcome()
            assert outcome.reply.value == "'done'"
            assert zygote.ensure_running()
            await session.restart()
            assert (await session.run_python("1 + 1")).reply.value == "2"
        finally:
            await session.close()
    finally:
        stop_zygote(zygote)


# User code that closes the worker's channel and runs on, out of the service's reach.
CLOSE_CHANNEL_AND_RUN_ON = (
    "import os, stat, time\n"
    "for fd in range(3, 256):\n"
    "    try:\n"
    "        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
    "            os.close(fd)\n"
    "    except OSError:\n"
    "        pass\n"
    "time.sleep(60)"
)


# With 1 s, the run's wall time ends while the worker is given its 2 s to exit: the run's
# clock must not interrupt it then.
@pytest.mark.parametrize("timeout", [10, 1])
async def test_a_worker_that_closes_its_channel_and_runs_on_is_killed(
    session: Session, timeout: float
) -> None:
    old_pid = session.worker.pid if session.worker else None
    outcome = await session.run_python(CLOSE_CHANNEL_AND_RUN_ON, timeout=timeout)
    assert outcome.reply.status == "killed"
    assert outcome.reply.error is not None
    assert "channel was closed" in outcome.reply.error  # not the wall clock's kill
    assert outcome.reply.limit is None
    assert outcome.restarted is True
    assert old_pid is not None
    assert not psutil.pid_exists(old_pid)
    assert (await session.run_python("1 + 1")).reply.value == "2"


async def test_a_caller_cancelled_while_a_failed_worker_is_replaced_leaves_it_replaced(
    session: Session,
) -> None:
    # The service waits a moment for a worker whose channel failed to exit, then kills
    # it and starts another.  A caller cancelled meanwhile must not free the session
    # with that worker still running, its clock gone with the caller.
    await session.run_python("setup = 1")
    old_pid = session.worker.pid if session.worker else None
    run = await session.start_python(CLOSE_CHANNEL_AND_RUN_ON, timeout=60)
    await _cancel_after(1.0, run.outcome())
    assert session.busy
    await run.task
    assert not session.busy
    assert old_pid is not None
    assert not psutil.pid_exists(old_pid)
    after = await session.run_python("setup")
    assert after.reply.exc_type == "NameError"
    assert after.since_restart  # the caller that went away was never told


async def test_a_cancelled_run_that_ignores_the_interrupt_is_killed_after_the_grace(
    session: Session,
) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    old_pid = session.worker.pid if session.worker else None
    await _cancel_after(1.0, session.run_python(code, timeout=120))
    after = await session.run_python("1 + 1", timeout=10)
    assert after.reply.value == "2"
    assert after.restarted is True
    assert old_pid is not None
    assert not psutil.pid_exists(old_pid)


async def test_a_run_cancelled_during_its_sweep_keeps_the_session_until_the_sweep_ends(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command's reply is followed by a sweep of every process but the worker.  Were
    # the session released when its caller is cancelled mid-sweep, the next run's
    # processes would be swept too.
    await session.run_python("1")
    worker = session.worker
    assert worker is not None
    sweep = worker.kill_strays

    def slow_sweep() -> None:
        time.sleep(0.7)  # a sweep of many processes
        sweep()

    monkeypatch.setattr(worker, "kill_strays", slow_sweep)
    await _cancel_after(0.3, session.run_command("true"))  # the reply in, the sweep under way
    started = await session.run_python(
        "import subprocess\nkept = subprocess.Popen(['sleep', '30'])\n'started'"
    )
    assert started.reply.value == "'started'"
    await asyncio.sleep(1.0)  # past the end of the old sweep
    assert (await session.run_python("kept.poll()")).reply.value is None  # still running


async def test_a_cancelled_runs_memory_kills_are_not_blamed_on_the_next_run(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    await session.run_python("1")
    worker = session.worker
    assert worker is not None
    await _cancel_after(
        0.5,
        session.run_python("import time\ntime.sleep(30)", timeout=60),
        # One of its processes was killed at the memory limit.
        meanwhile=lambda: monkeypatch.setattr(worker, "oom_kills", lambda: 1),
    )
    after = await session.run_python("2 + 2", timeout=10)
    assert after.reply.value == "4"
    assert after.reply.limit is None
    assert after.reply.error is None


async def test_a_worker_spawned_for_a_cancelled_caller_is_kept_and_runs_nothing(
    session: Session,
) -> None:
    await session._discard_worker()
    held_before = handle.held_worker_pids()
    # The run starts by spawning a worker: cancelled then, it sends nothing, and the
    # worker it made is the session's, not a leak.
    run = await session.start_python("open('ran', 'w').write('yes')")
    await _cancel_after(0.005, run.outcome())
    await run.task
    assert run.abandoned
    assert not run.sent
    assert session.worker is not None
    assert handle.held_worker_pids() <= held_before | {session.worker.pid}
    check = await session.run_python("import os\nos.path.exists('ran')")
    assert check.reply.value == "False"
