"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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
async def readyz(request: Request) -> JSONResponse:
    registry = request.app.state.registry
    zygote = registry.zygote
    ready = zygote.alive()
    body = {
        "ready": ready,
        "zygote": {"alive": ready, "pid": zygote.pid},
        "sessions": len(registry),
        "policy": {"path": request.app.state.policy_path, "hash": zygote.policy.digest()},
        "isolation": request.app.state.isolation,
    }
    return JSONResponse(body, status_code=200 if ready else 503)
