"""Liveness, readiness and metrics; the detail is for the operator's admin token."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.routes.admin import is_admin, require_admin

router = APIRouter(tags=["operations"])


@router.get("/livez", operation_id="livez", summary="The process answers", include_in_schema=False)
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="The sandbox can start workers",
    include_in_schema=False,
)
async def readyz(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    """Ready or not, for anyone; the detail only for the operator.

    Session counts, the zygote's pid and the policy's path tell an outsider how busy
    the host is and where it keeps things.
    """
    registry = request.app.state.registry
    zygote = registry.zygote
    egress = zygote.egress
    # Without its proxy, a policy that allows network would start sessions with none.
    ready = zygote.alive() and (egress is None or egress.ready)
    body: dict[str, object] = {"ready": ready}
    if is_admin(request, authorization):
        if egress is not None:
            body["egress"] = {"ready": egress.ready, "pid": egress.pid, "layers": egress.layers}
        body |= {
            "zygote": {"alive": zygote.alive(), "pid": zygote.pid},
            "sessions": len(registry),
            "policy": {"path": request.app.state.policy_path, "hash": zygote.policy.digest()},
            "isolation": request.app.state.isolation,
        }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    require_admin(request, authorization)
    registry = request.app.state.registry
    zygote = registry.zygote
    exported = request.app.state.metrics
    exported.sessions_alive.set(len(registry))
    pool = await asyncio.to_thread(zygote.pool_size)
    exported.warm_pool.set(pool if pool is not None else 0)
    exported.zygote_restarts.set(zygote.restarts)
    return Response(exported.render(), media_type=CONTENT_TYPE_LATEST)
