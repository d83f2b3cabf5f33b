"""Wire protocols: frames between the service and a worker; the zygote's start order.

A channel is a byte stream of frames: a 4-byte big-endian length, then that many
bytes of UTF-8 JSON holding one message.  This module knows nothing of sockets: it
turns messages into bytes and bytes into messages, so it can be tested with no
process at all.  Everything read from a worker is untrusted: lengths are capped
before anything is buffered, and payloads are validated by pydantic.
"""

from __future__ import annotations

import struct
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from sandbox.commands import DeniedRule
from sandbox.errors import FrameTooLarge, ProtocolError
from sandbox.policy import Policy

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
# What either end asks of one recv: a trivial request or reply arrives in one.
READ_SIZE = 1 << 16

RunStatus = Literal["ok", "error", "timeout", "killed", "denied"]
# The limits a run can be stopped by.  A worker never names one itself (the service
# does), but its reply is untrusted: any other name is refused, since the name becomes
# a metrics label and an audit field.
LimitName = Literal["wall_time", "memory", "processes", "open_files", "cpu_time", "file_size"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- service → zygote --------------------------------------------------------------


class StartOrder(BaseModel):
    """What the service tells a new zygote on its stdin, rather than on its command line.

    Every worker inherits the zygote's /proc/self/cmdline and readable environment
    block; neither names the state directory or the service's pid this way.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy
    control_fd: int  # the zygote's end of the control socket
    state_dir: str
    service_pid: int
    cgroup_parent: str
    # Names this zygote's pool ledger (sandbox/pool_ledger.py): unlike its pid, never
    # reused by a later zygote.
    ledger: str = Field(pattern=r"^[0-9a-f]{16}$")


# --- service ⇄ zygote: datagrams on the control socket ---------------------------


class SpawnRequest(_Message):
    """A worker, in ``workspace`` (kept from a session's last worker) or a new one."""

    op: Literal["spawn"] = "spawn"
    workspace: str | None = None


class StatusRequest(_Message):
    op: Literal["status"] = "status"


class DrainRequest(_Message):
    """End the ready workers; their pidfds come back attached, for the service to reap."""

    op: Literal["drain"] = "drain"


ZygoteRequest = Annotated[SpawnRequest | StatusRequest | DrainRequest, Field(discriminator="op")]


class WorkerMade(_Message):
    """A worker for the service; its channel and a pidfd are attached (SCM_RIGHTS)."""

    ok: Literal[True] = True
    pid: int
    workspace: str
    uid: int | None
    session_key: str
    quota: bool


class ZygoteReady(_Message):
    ok: Literal[True] = True
    ready: Literal[True] = True


class PoolStatus(_Message):
    ok: Literal[True] = True
    pool: int


class Drained(_Message):
    ok: Literal[True] = True


class ZygoteRefusal(_Message):
    ok: Literal[False] = False
    error: str


_ZYGOTE_REQUEST: TypeAdapter[ZygoteRequest] = TypeAdapter(ZygoteRequest)
ZygoteReply = TypeVar("ZygoteReply", WorkerMade, ZygoteReady, PoolStatus, Drained)


def decode_zygote_request(data: bytes) -> SpawnRequest | StatusRequest | DrainRequest:
    return _ZYGOTE_REQUEST.validate_json(data)


def decode_zygote_reply(data: bytes, expected: type[ZygoteReply]) -> ZygoteReply:
    """The zygote's answer as ``expected``; ProtocolError with its own words otherwise."""
    try:
        return expected.model_validate_json(data)
    except ValidationError:
        try:
            refusal = ZygoteRefusal.model_validate_json(data)
        except ValidationError:
            raise ProtocolError("the zygote sent a malformed reply") from None
        raise ProtocolError(refusal.error) from None


# --- service → worker -------------------------------------------------------------


class RunPython(_Message):
    kind: Literal["python"] = "python"
    run_id: int
    code: str
    # Send output and displays as they are produced (OutputChunk, DisplayOutput), before
    # the reply.  Off, a run costs nothing for a stream nobody reads.
    stream: bool = False


class RunCommand(_Message):
    kind: Literal["command"] = "command"
    run_id: int
    command: str
    stream: bool = False


Request = Annotated[RunPython | RunCommand, Field(discriminator="kind")]


# --- worker → service -------------------------------------------------------------


class ChangedFile(_Message):
    name: str
    size: int


class Hello(_Message):
    """The first frame a worker sends: who it is and which layers it applied."""

    kind: Literal["hello"] = "hello"
    pid: int
    workspace: str
    layers: dict[str, str]
    fatal: str | None = None  # set when a required layer failed: the worker will not serve


# ``value_at`` counts outputs a run made before its value: far fewer than this.
MAX_VALUE_AT = 1_000_000


class RichOutput(_Message):
    """One Jupyter output, in nbformat's shape: ``data`` maps MIME types to text.

    Binary types (``image/png``) are base64, as in a notebook file.  ``data`` always
    has ``text/plain``.
    """

    output_type: Literal["execute_result", "display_data"]
    data: dict[str, str]
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class OutputChunk(_Message):
    """Output of a streamed run as it was produced; the reply still carries all of it."""

    kind: Literal["output"] = "output"
    run_id: int
    name: Literal["stdout", "stderr"]
    # Never empty: a worker's empty chunks would cost the service a frame each and count
    # nothing against the run's caps.
    text: str = Field(min_length=1)


class DisplayOutput(_Message):
    """A streamed run's output (``display()``, a figure, the cell's value) as produced."""

    kind: Literal["display"] = "display"
    run_id: int
    output: RichOutput


# An error hint lists at most this many names, each cut to this length: they are the
# user's (a DataFrame's columns), so a frame must not grow with them.
MAX_HINT_NAMES = 30
MAX_HINT_NAME_CHARS = 60


class ErrorHint(_Message):
    """What the worker saw of a cell's error that its text does not say.

    ``dataframe-columns``: a KeyError from indexing a DataFrame, ``names`` its columns.
    ``program-refused``: a subprocess could not execute ``names[0]`` (not allowed, or
    not installed).  ``network``: a connection or name lookup failed.  ``total`` counts
    the names before they were cut to ``MAX_HINT_NAMES``.
    """

    kind: Literal["dataframe-columns", "program-refused", "network"]
    names: list[Annotated[str, Field(max_length=MAX_HINT_NAME_CHARS)]] = Field(
        default_factory=list, max_length=MAX_HINT_NAMES
    )
    total: int = Field(0, ge=0)


class RunReply(_Message):
    kind: Literal["reply"] = "reply"
    run_id: int
    status: RunStatus
    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    error: str | None = None
    exc_type: str | None = None
    exit_code: int | None = None
    truncated: bool = False
    execution_count: int = 0
    denied_rule: DeniedRule | None = None
    limit: LimitName | None = None
    files: list[ChangedFile] = Field(default_factory=list)
    # In the order they were produced: display() calls, figures, the cell's value.
    outputs: list[RichOutput] = Field(default_factory=list)
    # Where in ``outputs`` the cell's value goes when it is plain text only (most values):
    # an ``execute_result`` whose ``text/plain`` is ``value``, so it is sent once.
    value_at: int | None = Field(default=None, ge=0, le=MAX_VALUE_AT)
    hint: ErrorHint | None = None


# What a worker sends while a streamed run lasts, before its reply.
StreamedOutput = OutputChunk | DisplayOutput
WorkerFrame = Hello | RunReply | StreamedOutput
WorkerMessage = Annotated[WorkerFrame, Field(discriminator="kind")]

_requests: TypeAdapter[RunPython | RunCommand] = TypeAdapter(Request)
_worker_messages: TypeAdapter[WorkerFrame] = TypeAdapter(WorkerMessage)


def escape_surrogates(text: str) -> str:
    """``text`` with any lone surrogate written as its escape, so that it encodes as UTF-8.

    A file name that is not UTF-8 (os.fsdecode keeps its bytes as surrogates), or a
    ``__repr__`` returning one, is the user's to make; it must still be shown.
    """
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encode(message: _Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    payload = message.model_dump_json().encode()
    if len(payload) > max_frame:
        raise FrameTooLarge(f"message of {len(payload)} bytes exceeds the {max_frame} byte cap")
    return HEADER.pack(len(payload)) + payload


def payload_length(header: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Read a frame header; refuse it before any payload is buffered if it is too big."""
    if len(header) != HEADER.size:
        raise ProtocolError("truncated frame header")
    (length,) = HEADER.unpack(header)
    if length > max_frame:
        raise FrameTooLarge(f"frame announces {length} bytes, cap is {max_frame}")
    return int(length)


def decode_request(payload: bytes) -> RunPython | RunCommand:
    try:
        return _requests.validate_json(payload)
    except ValidationError as exc:
        raise ProtocolError(f"malformed request: {exc.error_count()} problem(s)") from None


def decode_worker_message(payload: bytes) -> WorkerFrame:
    try:
        return _worker_messages.validate_json(payload)
    except ValidationError as exc:
        raise ProtocolError(f"malformed worker frame: {exc.error_count()} problem(s)") from None


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, take whole payloads out.

    Buffers at most one header plus one capped payload, so a hostile peer cannot
    make it grow without bound.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._expected: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        payloads: list[bytes] = []
        while True:
            if self._expected is None:
                if len(self._buffer) < HEADER.size:
                    break
                self._expected = payload_length(bytes(self._buffer[: HEADER.size]), self._max_frame)
                del self._buffer[: HEADER.size]
            if len(self._buffer) < self._expected:
                break
            payloads.append(bytes(self._buffer[: self._expected]))
            del self._buffer[: self._expected]
            self._expected = None
        return payloads

    @property
    def holds_partial_frame(self) -> bool:
        """Whether bytes of a frame not yet whole are buffered."""
        return self._expected is not None or bool(self._buffer)
