"""POST /repl and POST /command: the seed-compatible execution routes."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request, Response

from sandbox import CommandDenied, RunOutcome, RunReply, WorkerBusy, parse_and_check
from sandbox.errors import SandboxError
from service.audit import AuditLog
from service.callers import Caller
from service.deps import CONVERSATION_PARAMETER, RunCaller
from service.errors import SandboxUnavailable, ServiceError, SessionBusy
from service.links import LinkSigner
from service.metrics import Metrics
from service.quotas import TenantQuotas
from service.registry import SessionRecord, SessionRegistry
from service.replies import FileLinker, Reply, build_reply
from service.schemas import (
    CommandRequest,
    CommandResponse,
    ErrorResponse,
    ReplRequest,
    ReplResponse,
)

router = APIRouter(tags=["execution"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 410, 413, 422, 429, 503)
}


def _linker(request: Request, record: SessionRecord) -> FileLinker:
    links: LinkSigner = request.app.state.links
    return lambda name: links.url(record.session_id, name)


async def _run(
    request: Request,
    tenant: str,
    record: SessionRecord,
    kind: str,
    text: str,
    timeout: float | None,
) -> RunOutcome:
    quotas: TenantQuotas = request.app.state.quotas
    slot = quotas.take_run_slot(tenant)
    started = time.monotonic()
    try:
        session = record.session
        if kind == "python":
            run = await session.start_python(text, timeout)
        else:
            run = await session.start_command(text, timeout)
    except SandboxError as exc:
        slot.release()
        raise _request_error(exc) from None
    except asyncio.CancelledError:
        slot.release()  # a caller still queued for the session: nothing started
        raise
    run.when_done(slot.release)  # the run, not its caller, holds the tenant's slot
    try:
        outcome = await run.outcome()
    except asyncio.CancelledError:
        # The caller went away (an MCP client cancelled the call): the session ends the
        # run.  One that reached its worker is counted and audited.
        if run.sent:
            cancelled = RunOutcome(
                reply=RunReply(run_id=0, status="error", error="cancelled by the caller"),
                duration_ms=(time.monotonic() - started) * 1000,
            )
            _observe(request, tenant, record, kind, text, cancelled, status="cancelled")
        raise
    except SandboxError as exc:
        raise _request_error(exc) from None
    _observe(request, tenant, record, kind, text, outcome)
    return outcome


def _request_error(exc: SandboxError) -> ServiceError:
    if isinstance(exc, WorkerBusy):
        return SessionBusy(
            "this session is still running a previous request",
            "Wait for it to finish, interrupt it (POST /sessions/{id}/interrupt), "
            "or use another session.",
            retry_after_s=5,
        )
    return SandboxUnavailable(f"the sandbox is unavailable: {exc}", "Retry in a few seconds.")


def _observe(
    request: Request,
    tenant: str,
    record: SessionRecord,
    kind: str,
    text: str,
    outcome: RunOutcome,
    status: str | None = None,
) -> None:
    """Count the run and write its audit line; ``status`` overrides the reply's."""
    reply = outcome.reply
    status = status or reply.status
    metrics: Metrics = request.app.state.metrics
    audit: AuditLog = request.app.state.audit
    limit = reply.limit or outcome.limit
    metrics.record_run(kind, status, outcome.duration_ms / 1000, limit)
    if reply.denied_rule:
        metrics.denials.labels(rule=reply.denied_rule).inc()
    audit.record(
        tenant=tenant,
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


@router.post(
    "/repl",
    operation_id="runPython",
    summary="Run Python in a stateful session",
    description=(
        "Runs Python in your session's persistent namespace (Jupyter semantics: the value of "
        "the last expression is shown). Files live in the working directory /mnt/data. "
        "Figures come back in `files` with links to show the user. Network is off. Read "
        "`suggestion` when `error` is set."
    ),
    response_model=ReplResponse,
    responses=_ERRORS,
    openapi_extra={"parameters": [CONVERSATION_PARAMETER]},
)
async def repl(request: Request, body: ReplRequest, caller: RunCaller) -> Response:
    reply = await run_python(request, body, caller)
    return reply.response()


async def _resolve(request: Request, caller: Caller, session_id: str | None) -> SessionRecord:
    registry: SessionRegistry = request.app.state.registry
    return await registry.resolve(caller, session_id)


async def run_python(request: Request, body: ReplRequest, caller: Caller) -> Reply:
    """POST /repl without HTTP: the MCP tool runs Python through this too."""
    record = await _resolve(request, caller, body.session_id)
    outcome = await _run(request, caller.tenant, record, "python", body.source(), body.timeout)
    return build_reply(
        outcome, "python", record.session_id, record.session.policy, _linker(request, record)
    )


@router.post(
    "/command",
    operation_id="runCommand",
    summary="Run an allowed terminal command in the session",
    description=(
        "Runs a command line in the session's workspace (/mnt/data), without a shell: allowed "
        "programs, pipes, &&, || and redirections. Shares files with runPython. A refused "
        "command names the rule, and `suggestion` lists what is allowed."
    ),
    response_model=CommandResponse,
    responses=_ERRORS,
    openapi_extra={"parameters": [CONVERSATION_PARAMETER]},
)
async def command(request: Request, body: CommandRequest, caller: RunCaller) -> Response:
    reply = await run_command(request, body, caller)
    return reply.response()


async def run_command(request: Request, body: CommandRequest, caller: Caller) -> Reply:
    """POST /command without HTTP: the MCP tool runs commands through this too."""
    record = await _resolve(request, caller, body.session_id)
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
        _observe(request, caller.tenant, record, "command", body.command, outcome)
    else:
        outcome = await _run(request, caller.tenant, record, "command", body.command, body.timeout)
    return build_reply(
        outcome, "command", record.session_id, session_policy, _linker(request, record)
    )
