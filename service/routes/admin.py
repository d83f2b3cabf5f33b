"""Operator routes, for holders of the admin token only."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Request

from service.errors import NotFound, Unauthorized
from service.reload import PolicyReloader

router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False)


def is_admin(request: Request, authorization: str | None) -> bool:
    """Whether the request carries the admin token (never true when none is set)."""
    expected: str | None = request.app.state.settings.admin_token
    if not expected:
        return False
    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    )


def require_admin(request: Request, authorization: str | None) -> None:
    if not request.app.state.settings.admin_token:
        # Without an admin token the operator routes do not exist.
        raise NotFound("not found")
    if not is_admin(request, authorization):
        raise Unauthorized(
            "missing or wrong admin token",
            "Operator routes take 'Authorization: Bearer $CODESHERPA_ADMIN_TOKEN'.",
        )


@router.post("/reload")
async def reload_policy(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> dict[str, object]:
    """Validate the policy file again; new sessions get it if it is valid."""
    require_admin(request, authorization)
    reloader: PolicyReloader = request.app.state.reloader
    result = await reloader.reload()
    return {"applied": result.applied, "policy": result.policy, "message": result.message}
