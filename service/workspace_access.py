"""Every access the service makes to a session's workspace, and its errors.

The files routes, signed links and MCP tools reach a workspace only through here.
Opening, reading, listing and deleting run in worker threads, never on the event
loop, and a few at a time (``WORKSPACE_THREADS``): a workspace is the session's to
shape, so the work it costs is bounded (``service.workspace_files``) and what remains
must not delay other tenants' requests.  An upload's chunks are written on the loop:
the file is by then an open regular file of a tmpfs, and a write to it cannot wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import anyio
import anyio.to_thread

from service import errors
from service.errors import (
    BadRequest,
    FileNotFound,
    FileTooLarge,
    ServiceError,
    SessionExpired,
    WorkspaceFull,
)
from service.registry import SessionRecord
from service.workspace_files import (
    READ_CHUNK,
    FileBusy,
    NotRegular,
    TooLarge,
    UnsafePath,
    Workspace,
    WorkspaceFile,
)

T = TypeVar("T")
WORKSPACE_THREADS = 8
NOT_FOUND_HINT = "List the workspace (GET /sessions/{id}/files) to see which files exist."
_NOT_REGULAR_HINT = "Only regular files are read or written here; delete it or use another name."
_BUSY_HINT = (
    "A process in the session holds a lease on it (fcntl F_SETLEASE); the service does not "
    "wait for leases. Release it, or try again when the session's code lets go of the file."
)
# One limiter per event loop: a limiter belongs to the loop it was first used in.
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def not_found(path: str) -> FileNotFound:
    return FileNotFound(f"no such file: {path}", NOT_FOUND_HINT)


def quota_exceeded(record: SessionRecord) -> WorkspaceFull:
    quota = record.session.policy.limits.workspace_mb
    return WorkspaceFull(
        f"the upload does not fit in the workspace quota of {quota} MB",
        "Delete files you no longer need, or upload a smaller file.",
    )


def _not_regular(path: str) -> ServiceError:
    error = f"{path} is not a regular file (a FIFO, socket or device)"
    return FileNotFound(error, _NOT_REGULAR_HINT)


def _busy(path: str, action: str) -> ServiceError:
    return errors.FileBusy(f"cannot {action} {path}: the file is under a lease", _BUSY_HINT)


async def _off_loop(work: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(WORKSPACE_THREADS)
    return await anyio.to_thread.run_sync(work, limiter=limiter)


@contextlib.contextmanager
def _opened(record: SessionRecord) -> Iterator[Workspace]:
    try:
        workspace = Workspace(record.session.workspace)
    except OSError:
        raise SessionExpired("the session's workspace is gone") from None
    with workspace:
        yield workspace


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """What opening ``path`` to read can meet, as the error a caller is told."""
    try:
        yield
    except NotRegular:
        raise _not_regular(path) from None
    except (UnsafePath, OSError):
        raise not_found(path) from None
    except FileBusy:
        raise _busy(path, "read") from None


async def listing(record: SessionRecord) -> list[WorkspaceFile]:
    def walk() -> list[WorkspaceFile]:
        with _opened(record) as workspace:
            return workspace.listing()

    return await _off_loop(walk)


async def read_capped(record: SessionRecord, path: str, cap: int) -> bytes:
    """The bytes of one file of at most ``cap`` bytes; 404, 413 or 400 otherwise."""

    def read() -> bytes:
        with _opened(record) as workspace:
            try:
                with _reading(path):
                    return workspace.read_capped(path, cap)
            except TooLarge:
                raise FileTooLarge(f"{path} is larger than {cap} bytes") from None

    return await _off_loop(read)


class Download:
    """One open file, read at most to the length declared for it.

    The descriptor is closed once: by the last chunk, or when the response is dropped
    before sending anything (a client gone before the body started).
    """

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)

    def chunks(self) -> Iterator[bytes]:
        # A file that grows after fstat still sends only ``size`` bytes: the length the
        # response declared.  One that shrinks sends less, and the client sees it cut.
        try:
            left = self.size
            while left > 0 and (data := os.read(self._fd, min(READ_CHUNK, left))):
                left -= len(data)
                yield data
        finally:
            self._close()


async def open_download(record: SessionRecord, path: str) -> Download:
    def open_file() -> Download:
        with _opened(record) as workspace, _reading(path):
            fd, info = workspace.open_regular(path)
        return Download(fd, info.st_size)

    return await _off_loop(open_file)


async def write(
    record: SessionRecord, path: str, chunks: AsyncIterator[bytes], declared: int | None
) -> int:
    """Create or overwrite one file from ``chunks``; the bytes written.

    ``declared`` is the size the caller announced: more than the free space is 413
    before anything is written.  Running out of space while writing removes the part.
    """

    def create() -> tuple[Workspace, int]:
        workspace = Workspace(record.session.workspace)
        try:
            if declared is not None and declared > workspace.free_bytes():
                raise quota_exceeded(record)
            return workspace, workspace.create(path)
        except BaseException:
            workspace.close()
            raise

    try:
        workspace, fd = await _off_loop(create)
    except NotRegular:
        raise _not_regular(path) from None
    except UnsafePath:
        raise not_found(path) from None
    except FileBusy:
        raise _busy(path, "write") from None
    except OSError as exc:
        if exc.filename == record.session.workspace:
            raise SessionExpired("the session's workspace is gone") from None
        raise BadRequest(f"cannot write {path}: {exc.strerror}") from None
    size = 0
    try:
        async for chunk in chunks:
            _write_all(fd, chunk)
            size += len(chunk)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise BadRequest(f"cannot write {path}: {exc.strerror}") from None
        with contextlib.suppress(OSError, UnsafePath):
            await _off_loop(lambda: workspace.delete(path))
        raise quota_exceeded(record) from None
    finally:
        os.close(fd)
        workspace.close()
    return size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def delete(record: SessionRecord, path: str) -> None:
    def remove() -> None:
        with _opened(record) as workspace:
            try:
                workspace.delete(path)
            except (UnsafePath, FileNotFoundError, NotADirectoryError):
                raise not_found(path) from None
            except OSError as exc:
                raise BadRequest(f"cannot delete {path}: {exc.strerror}") from None

    await _off_loop(remove)
