"""The Model Context Protocol at ``/mcp``: the HTTP API's capabilities as tools.

Streamable HTTP through the official SDK, stateful: each MCP session runs in the
caller's implicit CodeSherpa session keyed ``mcp:<MCP session id>``, unless a tool
call names a ``session_id``.  Tools call the same route functions as HTTP, so a run
through MCP is admitted, rate limited, counted and audited exactly like ``/repl``, and
its caller is found the same way: the tenant itself, or the conversation an
``openai-conversation-id`` header names (service/callers.py).  A call that asks for
progress hears of the run as it goes (service/mcp_progress.py).

Authentication is the HTTP API's bearer token.  The tenant travels in the ASGI
scope as the SDK's ``AuthenticatedUser``, not in a contextvar: the SDK runs tool
handlers in the session's own task, started by the request that opened the session,
so a contextvar would still name the tenant of that first request.  The SDK also
compares that user on every request with the one that opened the session, and
answers another tenant's attempt to use the session id with 404.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any
from urllib.parse import urlsplit

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.session import ServerSession
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ContentBlock, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from sandbox import Policy
from service import mcp_content, mcp_progress, workspace_access
from service.callers import CONVERSATION_HEADER, Caller, caller_for
from service.deps import authenticate
from service.errors import InvalidRequest, QuotaExceeded, ServiceError, Unauthorized
from service.executor import Executor
from service.mcp_errors import tool_error, validated
from service.registry import SessionRecord, SessionRegistry
from service.routes import files, sessions
from service.routes.clients import policy_facts
from service.schemas import CommandRequest, ReplRequest, WorkspaceEntry
from service.settings import Settings, is_loopback
from service.workspace_files import guess_mime

McpContext = Context[ServerSession, Any, Request]
Content = list[ContentBlock]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

INSTRUCTIONS = (
    "CodeSherpa runs Python in a stateful, sandboxed REPL and allowed terminal commands. "
    "Variables and files persist across calls in this MCP session; pass session_id to use "
    "another CodeSherpa session. The working directory is /mnt/data. Matplotlib figures come "
    "back as images and as files with links. Preinstalled: {preload}. {network} A run stops "
    "after {wall_timeout_s} s unless you pass timeout (at most {max_timeout_s} s); output is "
    "cut to {output_chars} characters per stream. Read `error` and `suggestion` in each reply "
    "and follow the suggestion before retrying."
)

# Parameters, described once for every tool that takes them.
SessionId = Annotated[
    str | None,
    Field(
        description="A CodeSherpa session to use; omit it to use this MCP session's own.",
        max_length=128,
    ),
]
Timeout = Annotated[
    float | None,
    Field(description="Wall-clock seconds; clamped to the policy's maximum.", gt=0),
]
WorkspacePath = Annotated[
    str, Field(description="A path relative to the workspace (/mnt/data), e.g. 'out/data.csv'.")
]


def implicit_key(mcp_session_id: str | None) -> str:
    """The registry key of an MCP session's own CodeSherpa session."""
    return f"mcp:{mcp_session_id or 'stateless'}"


def _caller(ctx: McpContext) -> tuple[Request, str]:
    request = ctx.request_context.request
    if request is None or not isinstance(request.scope.get("user"), AuthenticatedUser):
        raise tool_error(
            Unauthorized("this tool is only served over the authenticated /mcp endpoint")
        )
    user: AuthenticatedUser = request.scope["user"]
    return request, user.access_token.client_id


async def _session(
    ctx: McpContext, session_id: str | None
) -> tuple[Request, Caller, SessionRecord]:
    request, tenant = _caller(ctx)
    registry: SessionRegistry = request.app.state.registry
    key = implicit_key(request.headers.get("mcp-session-id"))
    try:
        caller = caller_for(tenant, request.headers.get(CONVERSATION_HEADER))
        record = await registry.resolve(caller, session_id, key)
    except ServiceError as exc:
        raise tool_error(exc) from None
    return request, caller, record


def _executor(request: Request) -> Executor:
    executor: Executor = request.app.state.executor
    return executor


def _text(model: BaseModel | list[Any]) -> TextContent:
    if isinstance(model, BaseModel):
        text = model.model_dump_json()
    else:
        text = "[" + ",".join(item.model_dump_json() for item in model) + "]"
    return TextContent(type="text", text=text)


async def run_python(
    code: Annotated[str, Field(description="Python source; the last expression's value is shown.")],
    ctx: McpContext,
    session_id: SessionId = None,
    timeout: Timeout = None,
) -> Content:
    """Run Python in a persistent, sandboxed namespace (Jupyter semantics).

    Returns the reply as JSON (result, error, suggestion, status, session_id, outputs,
    files with links), then the run's figures and images as image content.
    """
    request, caller, record = await _session(ctx, session_id)
    try:
        body = validated(ReplRequest, code=code, session_id=record.session_id, timeout=timeout)
        reply = await mcp_progress.execute(ctx, _executor(request), caller, body)
    except ServiceError as exc:
        raise tool_error(exc) from None
    return await mcp_content.run_content(record, reply.model)


async def run_command(
    command: Annotated[str, Field(description="A command line: allowed programs, pipes, && ||.")],
    ctx: McpContext,
    session_id: SessionId = None,
    timeout: Timeout = None,
) -> Content:
    """Run an allowed terminal command (no shell) in the session's workspace.

    A refused command names the rule and lists the allowed programs.
    """
    request, caller, record = await _session(ctx, session_id)
    try:
        body = validated(
            CommandRequest, command=command, session_id=record.session_id, timeout=timeout
        )
        reply = await mcp_progress.execute(ctx, _executor(request), caller, body)
    except ServiceError as exc:
        raise tool_error(exc) from None
    return await mcp_content.run_content(record, reply.model)


async def list_files(ctx: McpContext, session_id: SessionId = None) -> Content:
    """List the workspace (/mnt/data): name, size, mime, modified time and a download link."""
    request, _, record = await _session(ctx, session_id)
    try:
        entries = await files.list_files(record, request)
    except ServiceError as exc:
        raise tool_error(exc) from None
    return [_text(entries)]


async def read_file(path: WorkspacePath, ctx: McpContext, session_id: SessionId = None) -> Content:
    """Read one workspace file: text as text, an image as image content, else a link."""
    request, _, record = await _session(ctx, session_id)
    url = request.app.state.links.url(record.session_id, path)
    return await mcp_content.file_content(record, path, url)


async def write_file(
    path: WorkspacePath,
    content: Annotated[str, Field(description="The file's content: text, or base64 for binary.")],
    ctx: McpContext,
    session_id: SessionId = None,
    is_base64: Annotated[bool, Field(description="content is base64-encoded bytes.")] = False,
) -> Content:
    """Create or overwrite one workspace file; the session's code sees it under /mnt/data."""
    request, _, record = await _session(ctx, session_id)
    try:
        data = base64.b64decode(content, validate=True) if is_base64 else content.encode()
    except binascii.Error:
        raise tool_error(
            InvalidRequest("content is not valid base64", "Send text with is_base64 false.")
        ) from None
    try:
        await workspace_access.write(record, path, _one_chunk(data), len(data))
    except ServiceError as exc:
        raise tool_error(exc) from None
    url = request.app.state.links.url(record.session_id, path)
    entry = WorkspaceEntry(name=path, size=len(data), mime=guess_mime(path), modified=None, url=url)
    return [_text(entry)]


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def restart_session(ctx: McpContext, session_id: SessionId = None) -> Content:
    """Start a fresh Python namespace for the session; workspace files are kept."""
    _, _, record = await _session(ctx, session_id)
    try:
        info = await sessions.restart_session(record)
    except ServiceError as exc:
        raise tool_error(exc) from None
    return [_text(info)]


Tool = Callable[..., Awaitable[Content]]
# Every tool stays inside its session's sandbox (no network): openWorldHint is false.
TOOLS: tuple[tuple[Tool, ToolAnnotations], ...] = (
    (run_python, ToolAnnotations(title="Run Python", openWorldHint=False)),
    (run_command, ToolAnnotations(title="Run a command", openWorldHint=False)),
    (
        list_files,
        ToolAnnotations(title="List workspace files", readOnlyHint=True, openWorldHint=False),
    ),
    (
        read_file,
        ToolAnnotations(title="Read a workspace file", readOnlyHint=True, openWorldHint=False),
    ),
    (
        write_file,
        ToolAnnotations(
            title="Write a workspace file",
            destructiveHint=True,
            idempotentHint=True,
            openWorldHint=False,
        ),
    ),
    (
        restart_session,
        ToolAnnotations(
            title="Restart the session's Python", destructiveHint=True, openWorldHint=False
        ),
    ),
)


def allowed_origins(public_url: str) -> tuple[list[str], list[str]]:
    """The Host and Origin values a browser may send: the public URL's, and loopback's."""
    parts = urlsplit(public_url)
    host = parts.hostname or "127.0.0.1"
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    shown = f"[{host}]" if ":" in host else host
    hosts = [f"{shown}:{port}"] + ([shown] if port == default_port else [])
    origins = [f"{parts.scheme}://{netloc}" for netloc in hosts]
    if is_loopback(host):
        hosts += [f"{name}:*" for name in LOOPBACK_HOSTS]
        origins += [f"http://{name}:*" for name in LOOPBACK_HOSTS]
    return hosts, origins


def build_server(settings: Settings, policy: Policy) -> FastMCP[Any]:
    hosts, origins = allowed_origins(settings.public_url)
    server: FastMCP[Any] = FastMCP(
        name="codesherpa",
        instructions=INSTRUCTIONS.format(**policy_facts(settings.public_url, policy)),
        website_url=settings.public_url,
        stateless_http=False,
        session_idle_timeout=policy.sessions.idle_ttl_s,
        # MCP sessions are cheap, but each may hold a CodeSherpa session as well.
        max_sessions=max(64, 8 * policy.sessions.max_total),
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
        ),
    )
    for tool, hints in TOOLS:
        server.add_tool(tool, annotations=hints, structured_output=False)
    mcp_progress.accept_log_levels(server)
    return server


def mcp_sessions_per_tenant(policy: Policy) -> int:
    """MCP sessions one tenant may hold open at once.

    A few clients for each CodeSherpa session the tenant may have; without a share of
    its own, one tenant opening sessions could take every slot of the global cap.
    """
    return 4 * policy.sessions.max_per_tenant


class McpEndpoint:
    """The ASGI endpoint at /mcp: bearer auth and rate limit, then the SDK's transport."""

    def __init__(self, settings: Settings, policy: Policy) -> None:
        self.server = build_server(settings, policy)
        self.server.streamable_http_app()  # creates the session manager we dispatch to
        self._per_tenant = mcp_sessions_per_tenant(policy)
        self._idle_ttl_s = policy.sessions.idle_ttl_s
        self._opened: dict[str, set[str]] = {}  # MCP session ids, by the tenant that opened them
        self._opening: dict[str, int] = {}  # opening requests in flight, by tenant

    def describe_policy(self, settings: Settings, policy: Policy) -> None:
        """After a reload: what a client is told at initialize names the new policy."""
        instructions = INSTRUCTIONS.format(**policy_facts(settings.public_url, policy))
        # FastMCP exposes its instructions read-only; the low-level server holds them.
        self.server._mcp_server.instructions = instructions
        self._per_tenant = mcp_sessions_per_tenant(policy)
        self._idle_ttl_s = policy.sessions.idle_ttl_s

    def running(self) -> AbstractAsyncContextManager[None]:
        """The session manager's lifetime; the app's lifespan holds it open."""
        return self.server.session_manager.run()

    def _open_sessions(self, tenant: str) -> set[str]:
        # The SDK ends idle sessions on its own and offers no listing but this: keep
        # only the ids it still serves.
        live = self.server.session_manager._server_instances
        opened = {session_id for session_id in self._opened.get(tenant, ()) if session_id in live}
        self._opened[tenant] = opened
        return opened

    def _admit_opening(self, tenant: str) -> None:
        held = len(self._open_sessions(tenant)) + self._opening.get(tenant, 0)
        if held >= self._per_tenant:
            raise QuotaExceeded(
                f"this tenant has {held} MCP sessions open, the most it may hold "
                f"({self._per_tenant})",
                "End one you no longer use (DELETE /mcp with its Mcp-Session-Id header), or "
                f"wait for an idle one to expire ({self._idle_ttl_s:g} s).",
                retry_after_s=60,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        headers = Headers(scope=scope)
        # A ServiceError (401, 429) reaches the app's handler: the same body, headers, metrics.
        tenant = authenticate(state.tokens, headers.get("authorization"))
        state.quotas.admit_request(tenant)
        scope["user"] = AuthenticatedUser(
            AccessToken(token=f"tenant:{tenant}", client_id=tenant, subject=tenant, scopes=[])
        )
        mcp_session_id = headers.get("mcp-session-id")
        opening = scope["method"] == "POST" and mcp_session_id is None
        if opening:
            self._admit_opening(tenant)
        statuses: list[int] = []
        opened: list[str] = []

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
                if opening:
                    new_id = Headers(raw=message.get("headers", [])).get("mcp-session-id")
                    if new_id:
                        opened.append(new_id)
            await send(message)

        if opening:
            self._opening[tenant] = self._opening.get(tenant, 0) + 1
        try:
            await self.server.session_manager.handle_request(scope, receive, observed)
        finally:
            if opening:
                self._opening[tenant] -= 1
                self._opened.setdefault(tenant, set()).update(opened)
        if scope["method"] == "DELETE" and statuses == [200] and mcp_session_id:
            self._opened.get(tenant, set()).discard(mcp_session_id)
            await _end_mapped_session(state.registry, tenant, mcp_session_id)


async def _end_mapped_session(registry: SessionRegistry, tenant: str, mcp_session_id: str) -> None:
    """The client ended its MCP session: end the CodeSherpa session it mapped to."""
    key = implicit_key(mcp_session_id)
    for record in registry.for_tenant(tenant):
        if record.implicit_key == key:
            await registry.end(record)
