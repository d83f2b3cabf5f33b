"""Operator routes, for holders of the admin token only."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Request

from service.errors import ApiError
from service.reload import PolicyReloader

router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False)


def _require_admin(request: Request, authorization: str | None) -> None:
    expected = request.app.state.settings.admin_token
    if not expected:
        # Without an admin token the routes do not exist.
        raise ApiError(404, "not found", None)
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    ):
        raise ApiError(401, "missing or wrong admin token", None, {"WWW-Authenticate": "Bearer"})


@router.post("/reload")
async def reload_policy(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> dict[str, object]:
    """Validate the policy file again; new sessions get it if it is valid."""
    _require_admin(request, authorization)
    reloader: PolicyReloader = request.app.state.reloader
    result = await reloader.reload()
    return {"applied": result.applied, "policy": result.policy, "message": result.message}
