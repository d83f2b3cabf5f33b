"""The service's one core for running code: Python and commands for a caller.

The HTTP routes, the fast path and the MCP tools are thin adapters around one
``Executor``, built once with its typed dependencies: which session a caller means,
the tenant's run slot, the run itself (a task its session owns), and what every run
leaves behind (its metrics, its audit line, the reply within the cap, file links).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sandbox import (
    CommandDenied,
    Run,
    RunOutcome,
    RunReply,
    Session,
    WorkerBusy,
    parse_and_check,
    session_packages,
)
from sandbox.errors import SandboxError
from service.audit import AuditLog
from service.callers import Caller
from service.errors import SandboxUnavailable, ServiceError, SessionBusy, SessionExpired
from service.links import LinkSigner
from service.metrics import Metrics
from service.quotas import TenantQuotas
from service.registry import SessionRecord, SessionRegistry
from service.replies import FileLinker, Reply, build_reply
from service.run_stream import RunStream
from service.schemas import CommandRequest, ReplRequest

log = logging.getLogger("codesherpa")


@dataclass(frozen=True)
class Executor:
    registry: SessionRegistry
    quotas: TenantQuotas
    metrics: Metrics
    audit: AuditLog
    links: LinkSigner

    async def run_python(self, caller: Caller, body: ReplRequest) -> Reply:
        """POST /repl, whatever the entry point."""
        record = await self.registry.resolve(caller, body.session_id)
        outcome = await self._run(caller, record, "python", body.source(), body.timeout)
        return self._reply(outcome, "python", record)

    async def run_command(self, caller: Caller, body: CommandRequest) -> Reply:
        """POST /command, whatever the entry point."""
        record = await self.registry.resolve(caller, body.session_id)
        outcome = self._denial(caller, record, body.command)
        if outcome is None:
            outcome = await self._run(caller, record, "command", body.command, body.timeout)
        return self._reply(outcome, "command", record)

    async def stream_python(self, caller: Caller, body: ReplRequest) -> RunStream:
        """POST /repl for a caller that reads the output as it comes (SSE, MCP progress).

        Errors of the request (no such session, busy, no capacity) are raised here,
        before anything is streamed; the stream ends with the plain request's reply.
        """
        record = await self.registry.resolve(caller, body.session_id)
        return await self._stream(caller, record, "python", body.source(), body.timeout)

    async def stream_command(self, caller: Caller, body: CommandRequest) -> RunStream:
        """POST /command as ``stream_python`` runs POST /repl."""
        record = await self.registry.resolve(caller, body.session_id)
        denied = self._denial(caller, record, body.command)
        if denied is not None:
            reply = self._reply(denied, "command", record)
            return RunStream(None, finish=lambda: _ready(reply), abandon=lambda: None)
        return await self._stream(caller, record, "command", body.command, body.timeout)

    def _denial(self, caller: Caller, record: SessionRecord, command: str) -> RunOutcome | None:
        """The outcome of a command the policy refuses, before anything runs; else None."""
        if session_packages.installs_packages(command):
            return None  # the session's worker checks a pip line against packages.*
        try:
            parse_and_check(command, record.session.policy.commands)
        except CommandDenied as denial:
            # Refused before anything runs: the worker is never asked.
            outcome = RunOutcome(
                reply=RunReply(
                    run_id=0,
                    status="denied",
                    error=f"denied by rule '{denial.rule}': {denial.message}",
                    denied_rule=denial.rule,
                    execution_count=record.session.execution_count,
                )
            )
            self._observe(caller, record, "command", command, outcome)
            return outcome
        return None

    def _reply(self, outcome: RunOutcome, kind: str, record: SessionRecord) -> Reply:
        return build_reply(
            outcome, kind, record.session_id, record.session.policy, self._linker(record)
        )

    def _linker(self, record: SessionRecord) -> FileLinker:
        return lambda name: self.links.url(record.session_id, name)

    async def _run(
        self, caller: Caller, record: SessionRecord, kind: str, text: str, timeout: float | None
    ) -> RunOutcome:
        run, started = await self._start(caller, record, kind, text, timeout, stream=False)
        return await self._outcome(caller, record, kind, text, run, started)

    async def _stream(
        self, caller: Caller, record: SessionRecord, kind: str, text: str, timeout: float | None
    ) -> RunStream:
        run, started = await self._start(caller, record, kind, text, timeout, stream=True)
        observed = False

        async def finish() -> Reply:
            nonlocal observed
            observed = True  # by _outcome, however it ends
            outcome = await self._outcome(caller, record, kind, text, run, started)
            return self._reply(outcome, kind, record)

        def abandon() -> None:
            nonlocal observed
            if observed or run.abandoned:
                return
            observed = True
            if not run.done():
                run.abandon()
                self._cancelled(caller, record, kind, text, run, started)
            elif not run.task.cancelled() and (outcome := run.task.result()) is not None:
                # It ended just as its reader left: still one audit line, as every run has.
                self._observe(caller, record, kind, text, outcome)

        return RunStream(run, finish, abandon)

    async def _start(
        self,
        caller: Caller,
        record: SessionRecord,
        kind: str,
        text: str,
        timeout: float | None,
        stream: bool,
    ) -> tuple[Run, float]:
        """The run started for the caller, and when; its tenant slot is held by the run."""
        slot = self.quotas.take_run_slot(caller.tenant)
        started = time.monotonic()
        try:
            session = record.session
            if kind == "python":
                run = await session.start_python(text, timeout, stream)
            else:
                run = await session.start_command(text, timeout, stream)
        except SandboxError as exc:
            slot.release()
            raise session_error(exc, record.session) from None
        except asyncio.CancelledError:
            slot.release()  # a caller still queued for the session: nothing started
            raise
        run.when_done(slot.release)  # the run, not its caller, holds the tenant's slot
        return run, started

    async def _outcome(
        self, caller: Caller, record: SessionRecord, kind: str, text: str, run: Run, started: float
    ) -> RunOutcome:
        try:
            outcome = await run.outcome()
        except asyncio.CancelledError:
            # The caller went away (an MCP client cancelled the call): the session ends
            # the run.
            self._cancelled(caller, record, kind, text, run, started)
            raise
        except SandboxError as exc:
            raise session_error(exc, record.session) from None
        self._observe(caller, record, kind, text, outcome)
        return outcome

    def _cancelled(
        self, caller: Caller, record: SessionRecord, kind: str, text: str, run: Run, started: float
    ) -> None:
        """Count and audit a run its caller abandoned, if it reached its worker."""
        if run.sent:
            cancelled = RunOutcome(
                reply=RunReply(run_id=0, status="error", error="cancelled by the caller"),
                duration_ms=(time.monotonic() - started) * 1000,
            )
            self._observe(caller, record, kind, text, cancelled, status="cancelled")

    def _observe(
        self,
        caller: Caller,
        record: SessionRecord,
        kind: str,
        text: str,
        outcome: RunOutcome,
        status: str | None = None,
    ) -> None:
        """Count the run and write its audit line; ``status`` overrides the reply's."""
        reply = outcome.reply
        status = status or reply.status
        limit = reply.limit or outcome.limit
        self.metrics.record_run(kind, status, outcome.duration_ms / 1000, limit)
        if reply.denied_rule:
            self.metrics.denials.labels(rule=reply.denied_rule).inc()
        self.audit.record(
            tenant=caller.tenant,
            owner=record.caller.owner,
            session_id=record.session_id,
            kind=kind,
            text=text,
            status=status,
            duration_ms=outcome.duration_ms,
            limit=limit,
            policy=record.session.policy_digest,
            denied_rule=reply.denied_rule,
        )


async def _ready(reply: Reply) -> Reply:
    return reply


def session_error(exc: SandboxError, session: Session) -> ServiceError:
    """What a caller is told of a sandbox error on one of its sessions.

    The sandbox's own words can name host paths (a workspace's): they go to the log.
    """
    if isinstance(exc, WorkerBusy):
        return SessionBusy(
            "this session is still running a previous request",
            "Wait for it to finish, interrupt it (POST /sessions/{id}/interrupt), "
            "or use another session.",
            retry_after_s=5,
        )
    if session.closed:
        return SessionExpired(
            "the session was ended", "Start a new session (POST /sessions, or omit session_id)."
        )
    log.warning("a session's worker could not be started: %s", exc)
    return SandboxUnavailable(
        "the sandbox cannot start a worker for this session right now", "Retry in a few seconds."
    )
