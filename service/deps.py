"""Route dependencies that read as prose: ``tenant: CurrentTenant``, ``registry: Registry``.

They are ``async`` though they never wait: FastAPI runs a plain ``def`` dependency in
its thread pool, a hop that cost more than the rest of a trivial request.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from sandbox import Policy
from service.errors import ApiError
from service.quotas import TenantQuotas
from service.registry import SessionRecord, SessionRegistry

LOCAL_TENANT = "local"


def authenticate(tokens: dict[str, str], authorization: str | None) -> str:
    """The tenant named by a bearer token; comparisons take the same time for any token."""
    if not tokens:
        return LOCAL_TENANT
    scheme, _, presented = (authorization or "").partition(" ")
    tenant: str | None = None
    if scheme.lower() == "bearer" and presented:
        for token, owner in tokens.items():
            if hmac.compare_digest(token.encode(), presented.strip().encode()):
                tenant = owner
    if tenant is None:
        raise ApiError(
            401,
            "missing or wrong bearer token",
            "Send 'Authorization: Bearer <token>' with a token the operator gave you.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


def admit(request: Request, authorization: str | None) -> str:
    """Authenticate the caller and count the request against its tenant's rate limit."""
    tenant: str = authenticate(request.app.state.tokens, authorization)
    quotas: TenantQuotas = request.app.state.quotas
    quotas.admit_request(tenant)
    return tenant


async def current_tenant(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> str:
    return admit(request, authorization)


CONVERSATION_HEADER = "openai-conversation-id"
MAX_CONVERSATION_CHARS = 256
# The header is read by ``run_caller``, not declared as a parameter, so it is described
# here for the OpenAPI document.
CONVERSATION_PARAMETER = {
    "name": CONVERSATION_HEADER,
    "in": "header",
    "required": False,
    "description": "Sent by ChatGPT; keys your implicit session when session_id is omitted.",
    "schema": {"type": "string", "maxLength": MAX_CONVERSATION_CHARS},
}


@dataclass(frozen=True)
class RunCaller:
    tenant: str
    registry: SessionRegistry
    conversation: str | None  # keys the implicit session when no session_id is given


async def run_caller(request: Request) -> RunCaller:
    """Everything the execution routes need to know of a request but its body.

    One dependency reading the headers itself: each dependency and header parameter
    FastAPI resolves costs about a tenth of a trivial run's round trip.
    """
    headers = request.headers
    tenant = admit(request, headers.get("authorization"))
    conversation = headers.get(CONVERSATION_HEADER)
    if conversation is not None and len(conversation) > MAX_CONVERSATION_CHARS:
        raise ApiError(
            422,
            f"header {CONVERSATION_HEADER}: longer than {MAX_CONVERSATION_CHARS} characters",
            "Send a shorter conversation id, or pass session_id in the body instead.",
        )
    registry: SessionRegistry = request.app.state.registry
    return RunCaller(tenant, registry, conversation)


async def session_registry(request: Request) -> SessionRegistry:
    registry: SessionRegistry = request.app.state.registry
    return registry


async def active_policy(request: Request) -> Policy:
    registry: SessionRegistry = request.app.state.registry
    return registry.zygote.policy


CurrentTenant = Annotated[str, Depends(current_tenant)]
Registry = Annotated[SessionRegistry, Depends(session_registry)]
Caller = Annotated[RunCaller, Depends(run_caller)]
ActivePolicy = Annotated[Policy, Depends(active_policy)]


async def owned_session(
    session_id: str, tenant: CurrentTenant, registry: Registry
) -> SessionRecord:
    return registry.get(tenant, session_id)


OwnedSession = Annotated[SessionRecord, Depends(owned_session)]
