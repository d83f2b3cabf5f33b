"""The FastAPI application: routes, error handlers, body cap, and the session lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sandbox import ZygoteClient
from sandbox.confine import cgroup
from service import __version__
from service.audit import AuditLog
from service.body_limit import BodySizeLimit
from service.execution_fast_path import ExecutionFastPath, check_skipped_middleware
from service.executor import Executor
from service.http_errors import install_error_handlers
from service.links import LinkSigner
from service.mcp_server import McpEndpoint
from service.metrics import Metrics
from service.quotas import TenantQuotas
from service.registry import SessionRegistry
from service.reload import PolicyReloader, ReloadResult
from service.routes import admin, clients, execution, files, operations, sessions
from service.settings import Settings

DESCRIPTION = (
    "CodeSherpa runs Python in a stateful, confined REPL and runs allowed terminal commands, "
    "one isolated worker per session."
)


class CodeSherpaApp(FastAPI):
    """FastAPI behind the execution fast path, which serves valid runs before its stack."""

    fast_path: ExecutionFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path is None:
            await super().__call__(scope, receive, send)
        else:
            await self.fast_path(scope, receive, send)


def create_app(settings: Settings, zygote: ZygoteClient, isolation: dict[str, str]) -> FastAPI:
    """An app around a zygote that is already running (``codesherpa serve`` starts it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = SessionRegistry(zygote, on_egress=app.state.audit.record_egress)
        app.state.registry = registry
        app.state.executor = Executor(
            registry, app.state.quotas, app.state.metrics, app.state.audit, app.state.links
        )
        reloader = PolicyReloader(
            registry,
            settings.policy,
            settings.state_dir,
            on_applied=lambda policy: mcp.describe_policy(settings, policy),
        )
        app.state.reloader = reloader
        reloads: set[asyncio.Task[ReloadResult]] = set()

        def reload_on_signal() -> None:
            task = asyncio.create_task(reloader.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_on_signal)
        reaper = asyncio.create_task(registry.reap_forever())
        try:
            async with mcp.running():
                yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await registry.close_all()
            # After a reload the serving zygote is no longer the one we started with.
            serving = registry.zygote
            await asyncio.to_thread(serving.stop)
            # Every session has ended: the service's own cgroup parent goes too.
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(cgroup.remove_all_sessions, serving.cgroup_parent)
            app.state.audit.close()

    app = CodeSherpaApp(
        title="CodeSherpa",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        servers=[{"url": settings.public_url}],
        # /docs and /redoc come from routes.clients, with their assets served from here.
        docs_url=None,
        redoc_url=None,
    )
    # The document GPT Actions import: consequence flags, and bearer auth when tokens are on.
    app.openapi = clients.openapi_builder(app)  # type: ignore[method-assign]
    app.state.tokens = settings.token_map()
    app.state.settings = settings
    app.state.policy_path = settings.policy
    app.state.isolation = isolation
    app.state.links = LinkSigner(settings.public_url)
    app.state.metrics = Metrics()
    app.state.audit = AuditLog(settings.audit_log)
    app.state.quotas = TenantQuotas(settings.rate_limit, settings.runs_at_once_per_tenant)
    install_error_handlers(app)
    upload_cap = zygote.policy.limits.workspace_mb * 1024 * 1024
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, upload_max_bytes=upload_cap
    )
    app.include_router(execution.router)
    app.include_router(sessions.router)
    app.include_router(files.router)
    app.include_router(operations.router)
    app.include_router(admin.router)
    app.include_router(clients.router)
    mcp = McpEndpoint(settings, zygote.policy)
    app.router.routes.append(Route("/mcp", mcp))
    check_skipped_middleware(app)
    app.fast_path = ExecutionFastPath(
        app, functools.partial(FastAPI.__call__, app), settings.max_body_bytes, app
    )
    return app
