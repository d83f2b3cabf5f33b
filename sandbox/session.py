"""A confined session: one worker at a time serving one namespace and workspace.

This is the library's main verb: ``await session.run_python(code, timeout)``.  The
session owns the clock: a run past its wall time is interrupted (SIGINT, namespace
kept), and killed after a grace period if it ignores that; a worker that dies or
breaks the protocol is replaced, keeping the workspace.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sandbox import protocol
from sandbox.errors import ProtocolError, SandboxError, WorkerBusy, WorkerLost
from sandbox.handle import WorkerHandle, describe_returncode
from sandbox.policy import Policy
from sandbox.worker import EXIT_OUT_OF_DESCRIPTORS, EXIT_OUT_OF_PROCESSES
from sandbox.zygote_client import ZygoteClient

log = logging.getLogger("codesherpa")

Request = protocol.RunPython | protocol.RunCommand
# How long a worker whose channel failed has to exit (a crash closes the channel as the
# process ends) before it is killed.
LOST_WORKER_EXIT_S = 2.0
# Told, when a run's caller is cancelled after the run started, what ends that run
# (the session is held until it is done).
AbandonedRunHook = Callable[[asyncio.Future[None]], None]

# The statuses only the service gives a run; a worker's reply never holds them.
_SERVICE_STATUSES = ("timeout", "killed")

_LIMIT_SIGNALS: dict[signal.Signals, protocol.LimitName] = {
    signal.SIGXCPU: "cpu_time",
    signal.SIGXFSZ: "file_size",
}


def _limit_from_returncode(returncode: int | None) -> protocol.LimitName | None:
    if returncode is None or returncode >= 0:
        return None
    try:
        return _LIMIT_SIGNALS.get(signal.Signals(-returncode))
    except ValueError:
        return None


def _already_done() -> asyncio.Future[None]:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


@dataclass
class RunOutcome:
    reply: protocol.RunReply
    restarted: bool = False
    # The namespace was lost at some point since the last run that succeeded: a
    # NameError now most likely means setup code must run again.
    since_restart: bool = False
    duration_ms: float = 0.0
    limit: protocol.LimitName | None = None
    interrupted_by: str | None = None  # "timeout" or "request" when a SIGINT was sent


class Session:
    def __init__(self, zygote: ZygoteClient, policy: Policy, worker: WorkerHandle) -> None:
        self._zygote = zygote
        self.policy = policy
        # Computed once: the session's policy never changes, and every run's audit
        # line names it.
        self.policy_digest = policy.digest()
        self.worker: WorkerHandle | None = worker
        self.workspace = worker.workspace
        self.created_at = time.time()
        self.last_used = self.created_at
        self.restarts = 0
        self._run_lock = asyncio.Lock()
        self._lock_waiters = 0  # callers queued for the run lock (see _acquire_run_lock)
        self._run_ids = 0
        self._interrupt_reason: str | None = None
        self._execution_count = 0
        self._lost_namespace = False
        self._oom_kills_seen = 0
        # Ends a run whose caller went away (see _abandon); holds the run lock meanwhile.
        self._ending_abandoned_run: asyncio.Task[None] | None = None
        self.closed = False

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
    def execution_count(self) -> int:
        return self._execution_count

    def clamp_timeout(self, requested: float | None) -> float:
        limits = self.policy.limits
        if requested is None or requested <= 0:
            return limits.wall_timeout_s
        return min(requested, limits.max_timeout_s)

    async def run_python(
        self, code: str, timeout: float | None = None, on_abandoned: AbandonedRunHook | None = None
    ) -> RunOutcome:
        """Run a cell in the session's namespace.

        If the caller is cancelled once the run was sent, the run is ended (see
        _abandon; or its failed worker replaced, see _recover) and ``on_abandoned`` is
        given what ends it.  A caller cancelled before that, while queued for the
        session or while its worker was spawned, ran nothing.
        """
        return await self._run(
            lambda run_id: protocol.RunPython(run_id=run_id, code=code), timeout, on_abandoned
        )

    async def run_command(
        self,
        command: str,
        timeout: float | None = None,
        on_abandoned: AbandonedRunHook | None = None,
    ) -> RunOutcome:
        return await self._run(
            lambda run_id: protocol.RunCommand(run_id=run_id, command=command),
            timeout,
            on_abandoned,
        )

    async def _run(
        self,
        build: Callable[[int], Request],
        timeout: float | None,
        on_abandoned: AbandonedRunHook | None,
    ) -> RunOutcome:
        await self._acquire_run_lock(self.policy.sessions.queue_wait_s)
        sent = False
        try:
            started = time.monotonic()
            restarted_before = False
            if self.worker is None:
                await self._replace_worker()
                restarted_before = True
            self._run_ids += 1
            sent = True
            outcome = await self._exchange(build(self._run_ids), self.clamp_timeout(timeout))
            outcome.restarted = outcome.restarted or restarted_before
            outcome.since_restart = self._lost_namespace or outcome.restarted
            self._lost_namespace = outcome.restarted or (
                self._lost_namespace and outcome.reply.status != "ok"
            )
            outcome.duration_ms = (time.monotonic() - started) * 1000
            self._execution_count = outcome.reply.execution_count
            return outcome
        except asyncio.CancelledError:
            if sent and on_abandoned is not None:
                # Shielded: what the caller does with it cannot cut the ending short.
                ending = self._ending_abandoned_run
                on_abandoned(asyncio.shield(ending) if ending else _already_done())
            raise
        finally:
            self.last_used = time.time()
            if self._ending_abandoned_run is None:  # else that task releases the lock
                self._run_lock.release()

    async def _acquire_run_lock(self, wait_s: float | None) -> None:
        """Take the run lock, or raise WorkerBusy after ``wait_s`` (None: no limit).

        A free lock nobody queues for is taken at once, without the timer: a timeout's
        timer cost a trivial run's service about 4% of its CPU (py-spy, 8 sessions).
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

    async def _exchange(self, request: Request, timeout: float) -> RunOutcome:
        worker = self.worker
        assert worker is not None
        self._interrupt_reason = None
        # The clock runs on timers rather than a task racing the reply: a trivial run
        # is cheaper than a task and a wait.  At the wall time the run is interrupted;
        # if it ignores that for the grace period the worker is killed and the channel
        # hung up, which ends the pending receive.
        loop = asyncio.get_running_loop()
        grace = self.policy.limits.interrupt_grace_s
        timers: list[asyncio.TimerHandle] = []
        killed_for_time = False

        def on_grace_over() -> None:
            nonlocal killed_for_time
            killed_for_time = True
            worker.kill()
            worker.hang_up()

        def on_timeout() -> None:
            self._interrupt_reason = "timeout"
            worker.interrupt()
            timers.append(loop.call_later(grace, on_grace_over))

        timers.append(loop.call_later(timeout, on_timeout))
        worker.cores.run_started()
        failure: WorkerLost | ProtocolError | None = None
        message: protocol.Hello | protocol.RunReply | None = None
        try:
            await worker.send(request)
            message = await worker.receive()
        except asyncio.CancelledError:
            self._abandon(worker, request.run_id, grace)
            raise
        except (WorkerLost, ProtocolError) as exc:
            failure = exc
        finally:
            # Before any recovery: its waits must not meet the run's interrupt.
            worker.cores.run_ended()
            for timer in timers:
                timer.cancel()
        if killed_for_time:
            return await self._recover(
                self._killed(
                    request.run_id,
                    f"the run ignored the interrupt and was killed after "
                    f"{timeout:g} s + {grace:g} s grace",
                    limit="wall_time",
                )
            )
        if failure is not None:
            return await self._recover(self._lost(request.run_id, failure))
        if not isinstance(message, protocol.RunReply) or message.run_id != request.run_id:
            return await self._recover(
                self._lost(request.run_id, ProtocolError("the worker sent an unexpected frame"))
            )
        if message.status in _SERVICE_STATUSES or message.limit is not None:
            # Only the service stops a run and names the limit: a worker saying so forged
            # it, and the status and limit go to the audit log and the metrics.
            forged_status = message.status in _SERVICE_STATUSES
            message = message.model_copy(
                update={"status": "error" if forged_status else message.status, "limit": None}
            )
        outcome = RunOutcome(reply=message, interrupted_by=self._interrupt_reason)
        if isinstance(request, protocol.RunCommand) or self._interrupt_reason is not None:
            # Nothing a command or an interrupted run started may outlive it, whatever
            # user code did to the worker's own sweep.
            await self._sweep(worker)
        if self._interrupt_reason == "timeout":
            # Even a run that caught the KeyboardInterrupt and went on ran out of time.
            outcome.reply = outcome.reply.model_copy(
                update={
                    "status": "timeout",
                    "limit": "wall_time",
                    "error": f"TimeoutError: the run exceeded {timeout:g} s and was interrupted; "
                    "the namespace was kept",
                }
            )
            outcome.limit = "wall_time"
        # Noted last: a run whose processes were killed at the memory limit and then
        # ran out of time was stopped by memory first, and the reply names that limit.
        self._note_memory_kills(worker, outcome)
        return outcome

    async def _sweep(self, worker: WorkerHandle) -> None:
        """Kill the session's processes but the worker, in a thread nothing can stop.

        If the caller is cancelled meanwhile, the session keeps its run lock until the
        sweep is over: released at once, the next run's processes would be swept too.
        """
        sweeping = asyncio.ensure_future(asyncio.to_thread(worker.kill_strays))
        try:
            await asyncio.shield(sweeping)
        except asyncio.CancelledError:
            self._keep_locked_until(sweeping)
            raise

    def _abandon(self, worker: WorkerHandle, run_id: int, grace: float) -> None:
        """End a run whose caller was cancelled (an MCP client's cancellation, say).

        The run's clock went with the caller: left alone, it would run on unbounded,
        and the next run would be sent to a worker still busy with this one.  It is
        interrupted now, as a timed-out run is, and the session keeps its run lock
        until the worker has answered it, or, past the grace period, has been killed.
        """
        self._interrupt_reason = "cancelled"
        worker.interrupt()
        self._keep_locked_until(self._end_abandoned_run(worker, run_id, grace))

    async def _recover(self, recovery: Coroutine[Any, Any, RunOutcome]) -> RunOutcome:
        """See a failed worker's recovery (``_lost``, ``_killed``) through to its end.

        It kills and replaces the worker over several awaits.  A caller cancelled in
        between must not leave a worker that lost its channel running without its clock,
        nor free the session before its worker is replaced: the session keeps its run
        lock until the recovery is over, as it does for a cancelled run (see _abandon).
        """
        recovering = asyncio.ensure_future(recovery)
        try:
            return await asyncio.shield(recovering)
        except asyncio.CancelledError:
            self._keep_locked_until(recovering)
            raise

    def _keep_locked_until(self, ending: Awaitable[object]) -> None:
        """The caller holding the run lock was cancelled: release it once ``ending`` is."""

        async def end_then_release() -> None:
            try:
                await ending
            except Exception:
                log.exception("ending a cancelled run of session %s failed", self.workspace)
            finally:
                self._ending_abandoned_run = None
                self._interrupt_reason = None
                self._run_lock.release()

        self._ending_abandoned_run = asyncio.get_running_loop().create_task(end_then_release())

    async def _end_abandoned_run(self, worker: WorkerHandle, run_id: int, grace: float) -> None:
        try:
            async with asyncio.timeout(grace):
                while True:
                    message = await worker.receive()
                    if isinstance(message, protocol.RunReply) and message.run_id == run_id:
                        break
            # What the next run's reply is measured against.
            self._execution_count = message.execution_count
            self._oom_kills_seen = max(self._oom_kills_seen, worker.oom_kills())
            # Nothing the interrupted run started may outlive it, as after a timeout.
            await asyncio.to_thread(worker.kill_strays)
        except (TimeoutError, WorkerLost, ProtocolError):
            await self._discard_worker()  # the next run starts a fresh worker

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

    async def _lost(self, run_id: int, exc: Exception) -> RunOutcome:
        worker = self.worker
        assert worker is not None
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
        limit = _limit_from_returncode(returncode)
        reason = f"the worker {describe_returncode(returncode)}"
        if returncode == EXIT_OUT_OF_PROCESSES:
            limit = "processes"
            reason = (
                "the worker could not start a thread: the session's processes and threads "
                f"(limit {self.policy.limits.processes}) were all taken"
            )
        if returncode == EXIT_OUT_OF_DESCRIPTORS:
            limit = "open_files"
            reason = (
                "the worker ran out of file descriptors (open_files limit "
                f"{self.policy.limits.open_files}); close the files you open"
            )
        if worker.hit_memory_limit():
            limit = "memory"
            reason += f": the session reached its memory limit of {self.policy.limits.memory_mb} MB"
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
        self._oom_kills_seen = 0
        self.restarts += 1
        self._execution_count = 0

    def interrupt(self) -> bool:
        if self.worker is None or not self.busy:
            return False
        self._interrupt_reason = "request"
        self.worker.interrupt()
        return True

    async def restart(self) -> None:
        await self._acquire_run_lock(None)
        try:
            await self._discard_worker()
            await self._replace_worker()
            self._lost_namespace = True  # also when there was no worker to discard
        finally:
            self._run_lock.release()

    async def close(self) -> None:
        self.closed = True
        await self._discard_worker()
