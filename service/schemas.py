"""Request and reply bodies of the HTTP contract (docs/api.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

Status = Literal["ok", "error", "timeout", "killed", "denied"]
MAX_CODE_CHARS = 1_000_000


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def unicode_text(text: str) -> str:
    """``text`` if it is Unicode text; a lone surrogate (JSON lets ``\\ud800`` through) is not.

    It could not be passed on to a worker, nor written to the audit log as UTF-8.
    """
    if text.isascii():  # nearly all code: checked without a copy
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"holds a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}: "
            "send Unicode text"
        ) from None
    return text


class ReplRequest(_Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"code": ["import numpy as np", "x = np.arange(6)", "int(x.sum())"]}]
        }
    )

    code: list[str] | str = Field(
        ...,
        description=(
            "Python to run. A list of lines is joined with newlines; a string is taken whole."
        ),
        examples=[["import pandas as pd", "df = pd.DataFrame({'a': [1, 2]})", "df.head()"]],
    )
    session_id: str | None = Field(
        None, max_length=128, description="Session to run in; omit to use your implicit session."
    )
    timeout: float | None = Field(
        None, gt=0, description="Wall-clock seconds; clamped to the policy's maximum."
    )

    @field_validator("code")
    @classmethod
    def _code_is_text(cls, code: list[str] | str) -> list[str] | str:
        for text in [code] if isinstance(code, str) else code:
            unicode_text(text)
        return code

    def source(self) -> str:
        return self.code if isinstance(self.code, str) else "\n".join(self.code)


class CommandRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"command": "ls -la | head -5"}]})

    command: str = Field(
        ...,
        max_length=100_000,
        description="A command line: allowed programs, pipes, && and ||.",
        examples=["ls -la"],
    )
    session_id: str | None = Field(
        None, max_length=128, description="Session to run in; omit to use your implicit session."
    )
    timeout: float | None = Field(
        None, gt=0, description="Wall-clock seconds; clamped to the policy's maximum."
    )

    _command_is_text = field_validator("command")(unicode_text)


class FileInfo(BaseModel):
    name: str = Field(description="Path relative to the workspace (/mnt/data).")
    size: int
    mime: str
    url: str | None = Field(
        None, description="A signed link that works without the bearer header; show it to the user."
    )


class WorkspaceEntry(BaseModel):
    name: str
    size: int
    mime: str
    modified: float | None
    url: str = Field(description="A signed link that works without the bearer header for an hour.")


class Output(BaseModel):
    """One Jupyter output (nbformat's shape): a display() call, a figure, the cell's value."""

    output_type: Literal["execute_result", "display_data"]
    data: dict[str, str] = Field(
        description="MIME type to content; always text/plain. Binary types (image/png) are "
        "base64. Left out when the reply would pass its cap: then metadata.url links the file."
    )
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class RunResponse(BaseModel):
    result: str
    error: str | None
    suggestion: str | None
    session_id: str
    status: Status
    truncated: bool
    duration_ms: float
    files: list[FileInfo] = Field(default_factory=list)
    restarted: bool = False


class ReplResponse(RunResponse):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "result": "15",
                    "error": None,
                    "suggestion": None,
                    "session_id": "3q2-Xw8b0cS1uY4mR7tLzA9eVhKjN5pD",
                    "status": "ok",
                    "execution_count": 1,
                    "truncated": False,
                    "duration_ms": 12.5,
                    "stderr": "",
                    "outputs": [
                        {
                            "output_type": "execute_result",
                            "data": {"text/plain": "15"},
                            "metadata": {},
                        }
                    ],
                    "files": [],
                    "restarted": False,
                }
            ]
        }
    )

    execution_count: int
    stderr: str = Field("", description="What the run wrote to stderr (bounded).")
    outputs: list[Output] = Field(
        description="Rich results in the order they were produced (Jupyter's outputs)."
    )


class CommandResponse(RunResponse):
    exit_code: int | None = None


class SessionCreated(BaseModel):
    session_id: str
    created_at: float
    expires_at: float
    policy: str


class SessionInfo(BaseModel):
    session_id: str
    alive: bool
    busy: bool
    execution_count: int
    restarts: int
    created_at: float
    expires_at: float
    age_s: float
    idle_s: float
    memory_bytes: int | None
    cpu_seconds: float | None
    limits: dict[str, float]
    policy: str
    isolation: dict[str, str]


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "no such session",
                    "suggestion": "Omit session_id to use your implicit session.",
                    "code": "session_not_found",
                }
            ]
        }
    )

    error: str = Field(description="What went wrong, in a sentence.")
    suggestion: str | None = Field(None, description="What to do next.")
    code: str = Field(
        description="A stable name to branch on: session_not_found, session_expired, "
        "session_busy, rate_limited, quota_exceeded, body_too_large, validation_error, "
        "unauthorized, sandbox_unavailable, file_not_found, workspace_full, ..."
    )
