"""A confined session: one worker at a time serving one namespace and workspace.

This is the library's main verb: ``await session.run_python(code, timeout)``.  Each
run is a task the session owns (sandbox/run.py), holding the session for its whole
life.  The session owns the clock: a run past its wall time is interrupted (SIGINT,
namespace kept), and killed after a grace period if it ignores that; a worker that
dies or breaks the protocol is replaced, keeping the workspace.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sandbox import protocol
from sandbox.errors import ProtocolError, SandboxError, WorkerBusy, WorkerLost
from sandbox.handle import WorkerHandle
from sandbox.policy import Policy
from sandbox.run import STOPPING, InterruptReason, Request, Run, RunFinished, RunOutcome
from sandbox.worker_endings import why_worker_ended
from sandbox.zygote_client import ZygoteClient

log = logging.getLogger("codesherpa")

# How long a worker whose channel failed has to exit (a crash closes it) before it is killed.
LOST_WORKER_EXIT_S = 2.0
# The statuses only the service gives a run; a worker's reply never holds them.
_SERVICE_STATUSES = ("timeout", "killed")


class SessionState(enum.Enum):
    """Where a session is; every change goes through ``Session._enter``.

    IDLE → RUNNING (a run or a restart holds the run lock) → RECOVERING (its worker
    failed and is being replaced) → IDLE.  CLOSED is final: no worker is started again.
    """

    IDLE = "idle"
    RUNNING = "running"
    RECOVERING = "recovering"
    CLOSED = "closed"


class Session:
    def __init__(self, zygote: ZygoteClient, policy: Policy, worker: WorkerHandle) -> None:
        self._zygote = zygote
        self.policy = policy
        # Once: a session's policy never changes, and every run's audit line names it.
        self.policy_digest = policy.digest()
        self.worker: WorkerHandle | None = worker
        self.workspace = worker.workspace
        self.created_at = time.time()
        self.last_used = self.created_at
        self.restarts = 0  # workers started after the first
        self._restarts_told = 0  # ... of which a caller has been told
        self.state = SessionState.IDLE
        self._run_lock = asyncio.Lock()
        self._lock_waiters = 0  # callers queued for the run lock (see _acquire_run_lock)
        self._run_ids = 0
        self._current: Run | None = None  # the run holding the run lock, if a run does
        self._execution_count = 0
        self._lost_namespace = False  # since the last run that succeeded
        self._oom_kills_seen = 0
        # Told of each worker after the first (the egress proxy gets its listener).
        self.on_new_worker: Callable[[WorkerHandle], object] | None = None

    @classmethod
    async def start(cls, zygote: ZygoteClient) -> Session:
        worker = await zygote.spawn()
        return cls(zygote, zygote.policy, worker)

    @property
    def zygote(self) -> ZygoteClient:
        """The zygote this session's workers come from (its policy's zygote)."""
        return self._zygote

    @property
    def busy(self) -> bool:
        return self._run_lock.locked()

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def execution_count(self) -> int:
        return self._execution_count

    def _enter(self, state: SessionState) -> None:
        if self.state is not SessionState.CLOSED:
            self.state = state

    def clamp_timeout(self, requested: float | None) -> float:
        limits = self.policy.limits
        if requested is None or requested <= 0:
            return limits.wall_timeout_s
        return min(requested, limits.max_timeout_s)

    async def run_python(self, code: str, timeout: float | None = None) -> RunOutcome:
        """Run a cell in the session's namespace and wait for its outcome."""
        run = await self.start_python(code, timeout)
        return await run.outcome()

    async def run_command(self, command: str, timeout: float | None = None) -> RunOutcome:
        run = await self.start_command(command, timeout)
        return await run.outcome()

    async def start_python(
        self, code: str, timeout: float | None = None, stream: bool = False
    ) -> Run:
        """Queue for the session, then start a cell as a run the session owns.

        With ``stream`` the run publishes its output as it is produced (``OutputText``,
        ``OutputDisplay``) to whoever reads ``run.events()``.  Raises WorkerBusy if the
        session stays busy for the policy's queue wait.  A caller cancelled while queued
        started nothing.
        """
        return await self._start(
            lambda run_id: protocol.RunPython(run_id=run_id, code=code, stream=stream), timeout
        )

    async def start_command(
        self, command: str, timeout: float | None = None, stream: bool = False
    ) -> Run:
        return await self._start(
            lambda run_id: protocol.RunCommand(run_id=run_id, command=command, stream=stream),
            timeout,
        )

    async def _start(self, build: Callable[[int], Request], timeout: float | None) -> Run:
        await self._acquire_run_lock(self.policy.sessions.queue_wait_s)
        # From here on the run owns the lock: nothing below awaits before its task holds it.
        self._run_ids += 1
        run = Run(build(self._run_ids), self.clamp_timeout(timeout), limits=self.policy.limits)
        self._current = run
        self._enter(SessionState.RUNNING)
        if self.worker is not None:
            # The worker starts on it now, not a loop step later when the task first runs.
            run.sent = self.worker.channel.start_sending(run.request)
        run.start(self._live(run))
        return run

    async def _live(self, run: Run) -> RunOutcome:
        """A run's whole life, in its own task; the one place a run releases the lock."""
        try:
            started = time.monotonic()
            if self.worker is None:
                await self._replace_worker()
            if run.abandoned and not run.sent:  # its caller went away before it started
                return RunOutcome(
                    protocol.RunReply(run_id=run.request.run_id, status="error"),
                    interrupted_by="cancelled",
                )
            outcome = await self._exchange(run)
            outcome.interrupted_by = run.interrupted_by
            # A worker replaced since the last outcome a caller read: a run whose caller
            # went away tells the next one.
            outcome.restarted = self.restarts > self._restarts_told
            if not run.abandoned:
                self._restarts_told = self.restarts
            outcome.since_restart = self._lost_namespace or outcome.restarted
            self._lost_namespace = outcome.restarted or (
                self._lost_namespace and outcome.reply.status != "ok"
            )
            outcome.duration_ms = (time.monotonic() - started) * 1000
            self._execution_count = outcome.reply.execution_count
            if run.watched:
                run.publish(RunFinished(outcome))
            return outcome
        finally:
            self._current = None
            self.last_used = time.time()
            self._enter(SessionState.IDLE)
            self._run_lock.release()

    async def _acquire_run_lock(self, wait_s: float | None) -> None:
        """Take the run lock, or raise WorkerBusy after ``wait_s`` (None: no limit).

        A free lock nobody queues for is taken at once, without the timer, which costs
        a trivial run a measurable share of its CPU (docs/decisions.md).
        Every caller that may wait is counted, so "free" is exact: an unlocked lock
        can still have a waiter, woken but not yet run, that a new caller would queue
        behind with no timeout.
        """
        if not self._run_lock.locked() and self._lock_waiters == 0:
            await self._run_lock.acquire()
            return
        self._lock_waiters += 1
        try:
            async with asyncio.timeout(wait_s):
                await self._run_lock.acquire()
        except TimeoutError:
            raise WorkerBusy("the session is still running a previous request") from None
        finally:
            self._lock_waiters -= 1

    async def _exchange(self, run: Run) -> RunOutcome:
        worker = self.worker
        assert worker is not None
        request = run.request
        # The clock runs on timers rather than a task racing the reply: a trivial run
        # is cheaper than a task and a wait.  At the wall time (or when the run's caller
        # goes away) the run is interrupted; if it ignores that for the grace period the
        # worker is killed and the channel hung up, which ends the pending receive.
        loop = asyncio.get_running_loop()
        grace = self.policy.limits.interrupt_grace_s
        timers: list[asyncio.TimerHandle] = []
        killed_for_time = False

        def on_grace_over() -> None:
            nonlocal killed_for_time
            killed_for_time = True
            worker.kill()
            worker.hang_up()

        def on_interrupt(reason: InterruptReason) -> None:
            if run.interrupted_by in STOPPING:
                return  # already stopping: the grace period runs
            run.interrupted_by = reason
            worker.interrupt()
            if reason in STOPPING:
                timers.append(loop.call_later(grace, on_grace_over))

        timers.append(loop.call_later(run.timeout, on_interrupt, "timeout"))
        worker.cores.run_started()
        failure: WorkerLost | ProtocolError | None = None
        message: protocol.WorkerFrame | None = None
        run.on_interrupt = on_interrupt
        if run.abandoned:  # its caller went away after the request went out early
            on_interrupt("cancelled")
        try:
            run.sent = True
            await worker.send(request)
            message = await worker.receive()
            # Read at once whatever subscribers do: a worker is never held up by them.
            while isinstance(message, protocol.StreamedOutput) and run.take_output(message):
                message = await worker.receive()
        except (WorkerLost, ProtocolError) as exc:
            failure = exc
        finally:
            run.on_interrupt = None
            # Before any recovery: its waits must not meet the run's interrupt.
            worker.cores.run_ended()
            for timer in timers:
                timer.cancel()
        if killed_for_time:
            waited = f"{run.timeout:g} s + {grace:g} s grace"
            if run.interrupted_by == "cancelled":
                waited = f"its caller went away, then {grace:g} s grace"
            reason = f"the run ignored the interrupt and was killed after {waited}"
            return await self._recover(self._killed(request.run_id, reason, limit="wall_time"))
        if failure is not None:
            return await self._recover(self._lost(request.run_id, failure, worker))
        if not isinstance(message, protocol.RunReply) or message.run_id != request.run_id:
            unexpected = ProtocolError("the worker sent an unexpected frame")
            return await self._recover(self._lost(request.run_id, unexpected, worker))
        if message.status in _SERVICE_STATUSES or message.limit is not None:
            # Only the service stops a run and names the limit: a worker saying so forged
            # it, and the status and limit go to the audit log and the metrics.
            forged_status = message.status in _SERVICE_STATUSES
            message = message.model_copy(
                update={"status": "error" if forged_status else message.status, "limit": None}
            )
        outcome = RunOutcome(reply=message)
        if isinstance(request, protocol.RunCommand) or run.interrupted_by is not None:
            # Nothing a command or an interrupted run started may outlive it, whatever
            # user code did to the worker's own sweep.
            await asyncio.to_thread(worker.kill_strays)
        if run.interrupted_by == "timeout":
            # Even a run that caught the KeyboardInterrupt and went on ran out of time.
            outcome.reply = outcome.reply.model_copy(
                update={
                    "status": "timeout",
                    "limit": "wall_time",
                    "error": f"TimeoutError: the run exceeded {run.timeout:g} s and was "
                    "interrupted; the namespace was kept",
                }
            )
            outcome.limit = "wall_time"
        # Noted last: a run whose processes were killed at the memory limit and then
        # ran out of time was stopped by memory first, and the reply names that limit.
        self._note_memory_kills(worker, outcome)
        return outcome

    async def _recover(self, recovery: Coroutine[Any, Any, RunOutcome]) -> RunOutcome:
        """Replace a failed worker (``_lost``, ``_killed``), as the session's state says."""
        self._enter(SessionState.RECOVERING)
        return await recovery

    def _note_memory_kills(self, worker: WorkerHandle, outcome: RunOutcome) -> None:
        """Name the memory limit when the OOM killer ended a process of this run."""
        kills = worker.oom_kills()
        if kills <= self._oom_kills_seen:
            return
        self._oom_kills_seen = kills
        note = (
            "MemoryError: a process of this run was killed at the session's memory limit "
            f"of {self.policy.limits.memory_mb} MB"
        )
        error = outcome.reply.error
        outcome.reply = outcome.reply.model_copy(
            update={"limit": "memory", "error": f"{error}\n{note}" if error else note}
        )
        outcome.limit = "memory"

    async def _lost(self, run_id: int, exc: Exception, worker: WorkerHandle) -> RunOutcome:
        """The run's worker failed; ``worker`` is the run's own (a session ended meanwhile
        has none any more)."""
        if isinstance(exc, ProtocolError):
            reason = f"the worker broke the protocol ({exc}) and was killed"
            return await self._killed(run_id, reason, limit=None)
        returncode = worker.poll()
        if returncode is None:
            try:
                returncode = await worker.wait(timeout=LOST_WORKER_EXIT_S)
            except TimeoutError:
                # Its channel is gone but it runs on (user code closed the channel): it
                # can never answer again, and nothing else would stop it.
                reason = "the worker's channel was closed while it ran on; it was killed"
                return await self._killed(run_id, reason, limit=None)
        reason, limit = why_worker_ended(returncode, self.policy.limits, worker.hit_memory_limit())
        return await self._killed(run_id, reason, limit=limit)

    async def _killed(
        self, run_id: int, reason: str, limit: protocol.LimitName | None
    ) -> RunOutcome:
        await self._discard_worker()
        restarted = True
        try:
            await self._replace_worker()
        except SandboxError as exc:
            restarted = False
            if self.closed:
                reason += "; the session was ended"
            else:
                reason += (
                    f"; no fresh worker could be started yet ({exc}), the next call tries again"
                )
        reply = protocol.RunReply(run_id=run_id, status="killed", error=reason, limit=limit)
        return RunOutcome(reply=reply, limit=limit, restarted=restarted)

    async def _discard_worker(self) -> None:
        worker = self.worker
        if worker is not None:
            # Noted here, not by the caller: a cancelled caller never reads an outcome,
            # and the next run must still say that the namespace was lost.
            self._lost_namespace = True
            await worker.cleanup()
            if self.worker is worker:  # not one a concurrent run started meanwhile
                self.worker = None

    async def _replace_worker(self) -> None:
        # A run whose worker was killed because its session ended must not start a
        # worker that nothing would ever end.
        if self.closed:
            raise WorkerLost("the session was ended")
        worker = await self._zygote.spawn(self.workspace)
        if self.closed:  # ended while the worker was being made
            await worker.cleanup()
            raise WorkerLost("the session was ended")
        self.worker = worker
        if self.on_new_worker is not None:
            self.on_new_worker(worker)
        self._oom_kills_seen = 0
        self.restarts += 1
        self._execution_count = 0

    def interrupt(self) -> bool:
        """Interrupt the running run (KeyboardInterrupt inside); whether one was running."""
        run = self._current
        return run is not None and run.interrupt("request")

    async def restart(self) -> None:
        """A fresh namespace, the workspace kept; after the run in progress, if any.

        Like a run, the restart is a task of the session's: a caller cancelled meanwhile
        does not leave the session without a worker, or locked.
        """
        await self._acquire_run_lock(None)
        self._enter(SessionState.RUNNING)
        await asyncio.shield(asyncio.get_running_loop().create_task(self._restart_locked()))

    async def _restart_locked(self) -> None:
        try:
            await self._discard_worker()
            await self._replace_worker()
            self._restarts_told = self.restarts  # its caller asked for it
            self._lost_namespace = True  # also when there was no worker to discard
        finally:
            self._enter(SessionState.IDLE)
            self._run_lock.release()

    async def close(self) -> None:
        """End the session: its worker dies, a run in progress ends, none starts again."""
        self.state = SessionState.CLOSED
        await self._discard_worker()
