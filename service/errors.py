"""Every error a request can meet, as one tree; mapped once to HTTP (service/http_errors.py)
and once to MCP (service/mcp_server.py).  Each has a stable ``code`` clients branch on.

    ServiceError                     internal_error        500
    ├── Unauthorized                 unauthorized          401
    ├── BadRequest                   bad_request           400
    │   └── InvalidRequest           validation_error      422
    │   └── FileBusy                 file_busy             400
    ├── NotFound                     not_found             404
    │   ├── SessionNotFound          session_not_found     404
    │   └── FileNotFound             file_not_found        404
    ├── SessionExpired               session_expired       410
    ├── TooLarge                     body_too_large        413
    │   ├── WorkspaceFull            workspace_full        413
    │   └── FileTooLarge             file_too_large        413
    ├── Refused (Retry-After)
    │   ├── RateLimited              rate_limited          429
    │   ├── QuotaExceeded            quota_exceeded        429
    │   └── SessionBusy              session_busy          429
    └── SandboxUnavailable           sandbox_unavailable   503

Two more codes are written by the connection guard before any of this runs:
``request_timeout`` (408, a request head or body that stalled) and ``server_busy``
(503, every connection is being served).  Errors of the user's code are not here:
they are replies with a status (spec: 200 with ``error`` and ``suggestion``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, suggestion: str | None = None, *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.suggestion = suggestion
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.suggestion, self.code)


class Unauthorized(ServiceError):
    code = "unauthorized"


class BadRequest(ServiceError):
    code = "bad_request"


class InvalidRequest(BadRequest):
    code = "validation_error"


class FileBusy(BadRequest):
    """A file of the workspace is under a lease its session holds."""

    code = "file_busy"


class NotFound(ServiceError):
    code = "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class SessionExpired(ServiceError):
    code = "session_expired"


class TooLarge(ServiceError):
    code = "body_too_large"


class WorkspaceFull(TooLarge):
    code = "workspace_full"


class FileTooLarge(TooLarge):
    """A workspace file is larger than what this route returns."""

    code = "file_too_large"


class Refused(ServiceError):
    """Not now: the caller may retry after ``retry_after_s``."""


class RateLimited(Refused):
    code = "rate_limited"


class QuotaExceeded(Refused):
    code = "quota_exceeded"


class SessionBusy(Refused):
    code = "session_busy"


class SandboxUnavailable(ServiceError):
    code = "sandbox_unavailable"


def error_body(message: str, suggestion: str | None, code: str) -> dict[str, Any]:
    return {"error": message, "suggestion": suggestion, "code": code}
