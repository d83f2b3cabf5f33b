"""The error tree (service/errors.py) as HTTP: one status per class, one JSON body shape.

Every error body is ``{"error", "suggestion", "code"}``, FastAPI's and Starlette's own
included, and never a traceback of the service.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors
from service.errors import ServiceError, error_body

log = logging.getLogger("codesherpa")

HTTP_STATUS: dict[type[ServiceError], int] = {
    errors.ServiceError: 500,
    errors.Unauthorized: 401,
    errors.BadRequest: 400,
    errors.InvalidRequest: 422,
    errors.NotFound: 404,
    errors.SessionExpired: 410,
    errors.TooLarge: 413,
    errors.Refused: 429,
    errors.SandboxUnavailable: 503,
}
# Statuses Starlette and FastAPI answer by themselves (an unknown path, a wrong method).
_CODE_OF_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    422: "validation_error",
}


def http_status(error: ServiceError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_response(error: ServiceError) -> JSONResponse:
    status = http_status(error)
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error.body(), status_code=status, headers=headers)


def service_error_response(request: Request, error: ServiceError) -> JSONResponse:
    """The response, with refusals counted by their code."""
    if isinstance(error, errors.Refused):
        request.app.state.metrics.rejections.labels(reason=error.code).inc()
    return error_response(error)


def internal_error_response() -> JSONResponse:
    body = error_body(
        "internal error", "Retry once; if it persists, report it to the operator.", "internal_error"
    )
    return JSONResponse(body, status_code=500)


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for item in exc.errors()[:5]:
        location = [str(part) for part in item.get("loc", ()) if part not in ("body",)]
        field = ".".join(location) or "body"
        message = "unknown field" if item.get("type") == "extra_forbidden" else item.get("msg", "")
        problems.append(f"{field}: {message}")
    return "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(
                f"invalid request: {_describe_validation(exc)}",
                "Fix the named field and send the request again; see /openapi.json.",
                "validation_error",
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(str(exc.detail), None, code),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return JSONResponse(
            error_body(
                "the JSON body is nested too deeply", "Send a flat JSON object.", "bad_request"
            ),
            status_code=400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return internal_error_response()
