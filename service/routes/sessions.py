"""Session lifecycle: create, list, inspect, delete, restart, interrupt."""

from __future__ import annotations

import time

import psutil
from fastapi import APIRouter, Response

from sandbox import WorkerHandle
from sandbox.errors import SandboxError
from service.deps import CurrentCaller, OwnedSession, Registry
from service.executor import session_error
from service.registry import SessionRecord
from service.schemas import ErrorResponse, SessionCreated, SessionInfo

router = APIRouter(prefix="/sessions", tags=["sessions"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 410, 429, 503)
}


def _usage(worker: WorkerHandle | None) -> tuple[int | None, float | None]:
    """The whole session's memory and CPU (its cgroup), else the worker process alone."""
    if worker is None:
        return None, None
    usage = worker.usage()
    if "memory_bytes" in usage:
        cpu_ns = usage.get("cpu_ns")
        return usage["memory_bytes"], cpu_ns / 1e9 if cpu_ns is not None else None
    try:
        process = psutil.Process(worker.pid)
        with process.oneshot():
            times = process.cpu_times()
            return process.memory_info().rss, times.user + times.system
    except psutil.Error:
        return None, None


def _info(record: SessionRecord) -> SessionInfo:
    session = record.session
    worker = session.worker
    memory, cpu = _usage(worker)
    limits = session.policy.limits
    now = time.time()
    return SessionInfo(
        session_id=record.session_id,
        alive=worker is not None and worker.poll() is None,
        busy=session.busy,
        execution_count=session.execution_count,
        restarts=session.restarts,
        created_at=record.created_at,
        expires_at=record.expires_at(),
        age_s=round(now - record.created_at, 3),
        idle_s=round(now - session.last_used, 3),
        memory_bytes=memory,
        cpu_seconds=cpu,
        limits={
            "wall_timeout_s": limits.wall_timeout_s,
            "max_timeout_s": limits.max_timeout_s,
            "memory_mb": limits.memory_mb,
            "cpu_time_s": limits.cpu_time_s,
            "processes": limits.processes,
            "workspace_mb": limits.workspace_mb,
        },
        policy=session.policy_digest,
        isolation=dict(worker.hello.layers) if worker and worker.hello else {},
    )


@router.post(
    "",
    status_code=201,
    operation_id="createSession",
    summary="Start a new session",
    description="Starts a fresh, isolated Python session with its own workspace.",
    responses=_ERRORS,
)
async def create_session(caller: CurrentCaller, registry: Registry) -> SessionCreated:
    record = await registry.create(caller)
    return SessionCreated(
        session_id=record.session_id,
        created_at=record.created_at,
        expires_at=record.expires_at(),
        policy=record.session.policy_digest,
    )


@router.get(
    "",
    operation_id="listSessions",
    summary="List your sessions",
    description="Lists the sessions that belong to you.",
    responses=_ERRORS,
)
async def list_sessions(caller: CurrentCaller, registry: Registry) -> list[SessionInfo]:
    return [_info(record) for record in registry.for_caller(caller)]


@router.get(
    "/{session_id}",
    operation_id="getSession",
    summary="Inspect a session",
    description="Whether the session is alive, its execution count, resource use and limits.",
    responses=_ERRORS,
)
async def get_session(record: OwnedSession) -> SessionInfo:
    return _info(record)


@router.delete(
    "/{session_id}",
    status_code=204,
    operation_id="deleteSession",
    summary="End a session",
    description="Kills the session's processes and deletes its workspace.",
    responses=_ERRORS,
)
async def delete_session(record: OwnedSession, registry: Registry) -> Response:
    await registry.end(record)
    return Response(status_code=204)


@router.post(
    "/{session_id}/restart",
    operation_id="restartSession",
    summary="Restart a session's Python",
    description="A fresh namespace; the workspace files are kept.",
    responses=_ERRORS,
)
async def restart_session(record: OwnedSession) -> SessionInfo:
    try:
        await record.session.restart()
    except SandboxError as exc:
        raise session_error(exc, record.session) from None
    return _info(record)


@router.post(
    "/{session_id}/interrupt",
    operation_id="interruptSession",
    summary="Interrupt the running execution",
    description="Sends KeyboardInterrupt to the running code; variables are kept.",
    responses=_ERRORS,
)
async def interrupt_session(record: OwnedSession) -> dict[str, bool]:
    return {"interrupted": record.session.interrupt()}
