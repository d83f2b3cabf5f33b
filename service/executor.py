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

from sandbox import CommandDenied, RunOutcome, RunReply, Session, WorkerBusy, parse_and_check
from sandbox.errors import SandboxError
from service.audit import AuditLog
from service.callers import Caller
from service.errors import SandboxUnavailable, ServiceError, SessionBusy, SessionExpired
from service.links import LinkSigner
from service.metrics import Metrics
from service.quotas import TenantQuotas
from service.registry import SessionRecord, SessionRegistry
from service.replies import FileLinker, Reply, build_reply
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
        return build_reply(
            outcome, "python", record.session_id, record.session.policy, self._linker(record)
        )

    async def run_command(self, caller: Caller, body: CommandRequest) -> Reply:
        """POST /command, whatever the entry point."""
        record = await self.registry.resolve(caller, body.session_id)
        session_policy = record.session.policy
        try:
            parse_and_check(body.command, session_policy.commands)
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
            self._observe(caller, record, "command", body.command, outcome)
        else:
            outcome = await self._run(caller, record, "command", body.command, body.timeout)
        return build_reply(
            outcome, "command", record.session_id, session_policy, self._linker(record)
        )

    def _linker(self, record: SessionRecord) -> FileLinker:
        return lambda name: self.links.url(record.session_id, name)

    async def _run(
        self, caller: Caller, record: SessionRecord, kind: str, text: str, timeout: float | None
    ) -> RunOutcome:
        slot = self.quotas.take_run_slot(caller.tenant)
        started = time.monotonic()
        try:
            session = record.session
            if kind == "python":
                run = await session.start_python(text, timeout)
            else:
                run = await session.start_command(text, timeout)
        except SandboxError as exc:
            slot.release()
            raise session_error(exc, record.session) from None
        except asyncio.CancelledError:
            slot.release()  # a caller still queued for the session: nothing started
            raise
        run.when_done(slot.release)  # the run, not its caller, holds the tenant's slot
        try:
            outcome = await run.outcome()
        except asyncio.CancelledError:
            # The caller went away (an MCP client cancelled the call): the session ends
            # the run.  One that reached its worker is counted and audited.
            if run.sent:
                cancelled = RunOutcome(
                    reply=RunReply(run_id=0, status="error", error="cancelled by the caller"),
                    duration_ms=(time.monotonic() - started) * 1000,
                )
                self._observe(caller, record, kind, text, cancelled, status="cancelled")
            raise
        except SandboxError as exc:
            raise session_error(exc, record.session) from None
        self._observe(caller, record, kind, text, outcome)
        return outcome

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
