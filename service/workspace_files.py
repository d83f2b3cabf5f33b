"""Files in a session's workspace, opened by the (root) service without following links.

A session controls everything inside its workspace, including symlinks and hard
links planted to trick the service into reading ``/etc/shadow`` or writing over a
host file.  Every path is therefore resolved by the kernel with ``openat2`` and
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``: a path that leaves
the workspace or crosses any symlink fails, and a file that is also linked from
elsewhere (another filesystem, or a second name when the workspace is not its own
filesystem) is refused.

Nothing here may block on what a session controls: every open is ``O_NONBLOCK`` (a
FIFO with no reader fails, a file under a lease fails at once instead of stalling
for the kernel's lease-break time), only regular files are read or written, a read
stops one byte past its cap whatever size was seen before, and a walk stops after a
fixed number of entries visited.  The service reaches these through
``service.workspace_access``, which runs them off the event loop.
"""

from __future__ import annotations

import ctypes
import errno
import mimetypes
import os
import stat
from dataclasses import dataclass

from sandbox.session_packages import is_site_path

_libc = ctypes.CDLL(None, use_errno=True)
SYS_OPENAT2 = 437  # x86_64 and aarch64 share the generic number
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
MAX_LISTED = 1000
# Entries of every kind a listing may look at (directories count once per component
# of their path, as opening one resolves each): 30,000 empty directories must not
# make a listing slow.
MAX_VISITED = 10_000
MAX_PATH_CHARS = 1024
READ_CHUNK = 64 * 1024


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class UnsafePath(Exception):
    """The path is malformed, leaves the workspace, or crosses a link."""


class NotRegular(UnsafePath):
    """The path names a FIFO, socket, device or directory: never opened for data."""


class FileBusy(Exception):
    """A process of the session holds a lease on the file; opening it would wait."""


class TooLarge(Exception):
    """The file holds more than the caller's cap (however large it was at first)."""


@dataclass(frozen=True)
class WorkspaceFile:
    name: str
    size: int
    mime: str
    modified: float


def check_relative(path: str) -> str:
    """A clean relative path, or UnsafePath: no absolute paths, no '..', no NUL."""
    if not path or len(path) > MAX_PATH_CHARS or "\x00" in path or path.startswith("/"):
        raise UnsafePath(path)
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(path)
    return path


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
    fd = _libc.syscall(SYS_OPENAT2, dir_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


class Workspace:
    """One workspace directory, held open; every access is resolved beneath it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        info = os.fstat(self._fd)
        self.owner = info.st_uid
        self._device = info.st_dev
        # A workspace that is its own filesystem (a tmpfs) cannot hold a hard link
        # to anything outside it.
        self._own_filesystem = os.path.ismount(root)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_regular(self, fd: int, path: str) -> os.stat_result:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular(path)
        if info.st_dev != self._device:
            raise UnsafePath(path)
        if info.st_nlink > 1 and not self._own_filesystem:
            raise UnsafePath(path)
        return info

    def open_regular(self, path: str) -> tuple[int, os.stat_result]:
        """An fd to read one regular file of the workspace; the caller closes it."""
        fd = self._open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            return fd, self._check_regular(fd, path)
        except BaseException:
            os.close(fd)
            raise

    def read_capped(self, path: str, cap: int) -> bytes:
        """The whole of one regular file if it holds at most ``cap`` bytes, else TooLarge.

        The file may grow while it is read (a session appending, or extending a sparse
        file to gigabytes): at most ``cap + 1`` bytes are ever read, whatever fstat said.
        """
        fd, _ = self.open_regular(path)
        try:
            chunks: list[bytes] = []
            left = cap + 1
            while left > 0 and (data := os.read(fd, min(READ_CHUNK, left))):
                chunks.append(data)
                left -= len(data)
        finally:
            os.close(fd)
        if left <= 0:
            raise TooLarge(path)
        return b"".join(chunks)

    def create(self, path: str) -> int:
        """An fd to write one file, created or truncated, owned by the session's uid."""
        check_relative(path)
        self._make_parents(path)
        fd = self._open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        try:
            self._check_regular(fd, path)
            # Truncated only once known to be the workspace's own regular file.
            os.ftruncate(fd, 0)
            os.fchown(fd, self.owner, self.owner)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self, path: str, flags: int, mode: int = 0) -> int:
        try:
            relative = path if path == "." else check_relative(path)
            if not flags & os.O_PATH:  # openat2 refuses O_PATH with any other flag
                flags |= os.O_NONBLOCK
            return _openat2(self._fd, relative, flags, mode)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR, errno.EACCES):
                raise UnsafePath(path) from None
            if exc.errno == errno.EWOULDBLOCK:
                raise FileBusy(path) from None
            if exc.errno in (errno.ENXIO, errno.ENODEV):  # a FIFO with no reader, a socket
                raise NotRegular(path) from None
            raise

    def _make_parents(self, path: str) -> None:
        """Create missing directories one component at a time, each owned by the session."""
        current = os.dup(self._fd)
        try:
            for part in path.split("/")[:-1]:
                try:
                    child = self._open_in(current, part)
                except FileNotFoundError:
                    os.mkdir(part, 0o755, dir_fd=current)
                    os.chown(part, self.owner, self.owner, dir_fd=current, follow_symlinks=False)
                    child = self._open_in(current, part)
                os.close(current)
                current = child
        finally:
            os.close(current)

    def _open_in(self, dir_fd: int, name: str) -> int:
        try:
            return _openat2(dir_fd, name, os.O_PATH | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                raise UnsafePath(name) from None
            raise

    def delete(self, path: str) -> None:
        check_relative(path)
        parent, _, name = path.rpartition("/")
        dir_fd = self._open(parent, os.O_PATH | os.O_DIRECTORY) if parent else os.dup(self._fd)
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                os.rmdir(name, dir_fd=dir_fd)
            else:
                # Unlinking a symlink removes the link itself, never its target.
                os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def listing(self) -> list[WorkspaceFile]:
        """Regular files, recursively, never following a link; at most MAX_LISTED.
        The site directory of ``pip install`` is left out (its size still counts).

        The walk stops after MAX_VISITED entries of any kind, so its cost does not
        depend on what the session made; a tree larger than that is listed in part.
        """
        found: list[WorkspaceFile] = []
        stack = [""]
        visited = 0
        while stack and len(found) < MAX_LISTED and visited < MAX_VISITED:
            prefix = stack.pop()
            visited += prefix.count("/") + 1
            try:
                fd = self._open(prefix or ".", os.O_RDONLY | os.O_DIRECTORY)
            except (OSError, UnsafePath, FileBusy):
                continue
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        visited += 1
                        if visited > MAX_VISITED or len(found) >= MAX_LISTED:
                            break
                        relative = f"{prefix}/{entry.name}" if prefix else entry.name
                        self._visit(entry, relative, stack, found)
            finally:
                os.close(fd)
        return sorted(found, key=lambda f: f.name)

    @staticmethod
    def _visit(
        entry: os.DirEntry[str], relative: str, stack: list[str], found: list[WorkspaceFile]
    ) -> None:
        try:
            if entry.is_dir(follow_symlinks=False):
                # A deeper path could not be downloaded: check_relative refuses it.  The
                # session's installed packages are its interpreter's, not its files.
                if len(relative) < MAX_PATH_CHARS and not is_site_path(relative):
                    stack.append(relative)
            elif entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                found.append(
                    WorkspaceFile(relative, info.st_size, guess_mime(entry.name), info.st_mtime)
                )
        except OSError:
            return

    def free_bytes(self) -> int:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self._fd)
        try:
            info = os.fstatvfs(fd)
        finally:
            os.close(fd)
        return info.f_bavail * info.f_frsize


def guess_mime(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
