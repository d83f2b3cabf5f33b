"""Route dependencies that read as prose: ``tenant: CurrentTenant``, ``registry: Registry``.

They are ``async`` though they never wait: FastAPI runs a plain ``def`` dependency in
its thread pool, a hop that cost more than the rest of a trivial request.
"""

from __future__ import annotations

import hmac
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


async def current_tenant(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> str:
    tenant: str = authenticate(request.app.state.tokens, authorization)
    quotas: TenantQuotas = request.app.state.quotas
    quotas.admit_request(tenant)
    return tenant


async def session_registry(request: Request) -> SessionRegistry:
    registry: SessionRegistry = request.app.state.registry
    return registry


async def active_policy(request: Request) -> Policy:
    registry: SessionRegistry = request.app.state.registry
    return registry.zygote.policy


CurrentTenant = Annotated[str, Depends(current_tenant)]
Registry = Annotated[SessionRegistry, Depends(session_registry)]
ActivePolicy = Annotated[Policy, Depends(active_policy)]


async def owned_session(
    session_id: str, tenant: CurrentTenant, registry: Registry
) -> SessionRecord:
    return registry.get(tenant, session_id)


OwnedSession = Annotated[SessionRecord, Depends(owned_session)]
