"""Route dependencies that read as prose: ``caller: CurrentCaller``, ``registry: Registry``.

They are ``async`` though they never wait: FastAPI runs a plain ``def`` dependency in
its thread pool, a hop that cost more than the rest of a trivial request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from sandbox import Policy
from service.callers import CONVERSATION_HEADER, MAX_CONVERSATION_CHARS, Caller, caller_for
from service.errors import Unauthorized
from service.executor import Executor
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
        raise Unauthorized(
            "missing or wrong bearer token",
            "Send 'Authorization: Bearer <token>' with a token the operator gave you.",
        )
    return tenant


def admit(request: Request, authorization: str | None) -> str:
    """Authenticate the caller and count the request against its tenant's rate limit."""
    tenant: str = authenticate(request.app.state.tokens, authorization)
    quotas: TenantQuotas = request.app.state.quotas
    quotas.admit_request(tenant)
    return tenant


CONVERSATION_DESCRIPTION = (
    "Sent by ChatGPT. Sessions made with it belong to that conversation (others get 404); "
    "it keys your implicit session when session_id is omitted."
)
# ``run_caller`` reads the header itself, so the routes using it describe it with this.
CONVERSATION_PARAMETER = {
    "name": CONVERSATION_HEADER,
    "in": "header",
    "required": False,
    "description": CONVERSATION_DESCRIPTION,
    "schema": {"type": "string", "maxLength": MAX_CONVERSATION_CHARS},
}


async def current_caller(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    conversation: Annotated[
        str | None,
        Header(
            alias=CONVERSATION_HEADER,
            description=CONVERSATION_DESCRIPTION,
            # Documented only: caller_for refuses a longer one with its own message.
            json_schema_extra={"maxLength": MAX_CONVERSATION_CHARS},
        ),
    ] = None,
) -> Caller:
    """Who asks: the tenant its token names, and the conversation it names, if any."""
    return caller_for(admit(request, authorization), conversation)


async def run_caller(request: Request) -> Caller:
    """``current_caller`` for the execution routes, reading the headers itself.

    Each dependency and header parameter FastAPI resolves costs about a tenth of a
    trivial run's round trip.
    """
    headers = request.headers
    tenant = admit(request, headers.get("authorization"))
    return caller_for(tenant, headers.get(CONVERSATION_HEADER))


async def session_registry(request: Request) -> SessionRegistry:
    registry: SessionRegistry = request.app.state.registry
    return registry


async def active_policy(request: Request) -> Policy:
    registry: SessionRegistry = request.app.state.registry
    return registry.zygote.policy


async def current_executor(request: Request) -> Executor:
    executor: Executor = request.app.state.executor
    return executor


CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentExecutor = Annotated[Executor, Depends(current_executor)]
RunCaller = Annotated[Caller, Depends(run_caller)]
Registry = Annotated[SessionRegistry, Depends(session_registry)]
ActivePolicy = Annotated[Policy, Depends(active_policy)]


async def owned_session(
    session_id: str, caller: CurrentCaller, registry: Registry
) -> SessionRecord:
    return registry.get(caller, session_id)


OwnedSession = Annotated[SessionRecord, Depends(owned_session)]
