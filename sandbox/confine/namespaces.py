"""Layer 2: pid, mount, net, ipc and uts namespaces, and the file tree a session sees.

``unshare_for_worker`` runs in the short-lived intermediate process the zygote forks,
so that the worker it forks next is init of a fresh PID namespace: when the worker
dies, the kernel kills every process it left.  ``apply`` then runs in the worker and
builds its view: a fresh ``/proc``, a private ``/tmp`` and ``/dev/shm``, the
workspace at the stable path ``/mnt/data``, of the host only its system directories and
what the interpreter needs (``runtime.py``), and no other session's workspace, not even
in ``/proc/self/mounts``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import sys
from errno import EINVAL

from sandbox.confine import runtime
from sandbox.confine.base import LayerStatus, WorkerSpec

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

WORKSPACE_MOUNT = "/mnt/data"
# The top-level directories a session sees as they are on the host.  Every other one
# (/run, /var, /home, /opt, /srv, a checkout's /work, ...) is covered by an empty tmpfs:
# they hold host sockets (D-Bus, databases, agents) that Landlock does not govern
# connecting to, and other people's files.  What the interpreter needs beneath a
# covered directory is bound back, read-only.
VISIBLE_TOP_LEVEL = frozenset(
    {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "proc", "sys", "dev"}
)
# Covered with options of their own: the session's /tmp and /dev/shm, and /mnt, which
# holds the workspace.
PRIVATE_DIRECTORIES = ("/tmp", "/dev/shm", "/mnt")
# The devices a session's /dev holds, bound from the host's, and the usual links.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEVICE_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}
PRIVATE_TMP_MB = 64

_libc = ctypes.CDLL(None, use_errno=True)
# Bound here, in the zygote: looked up in a fork, each copies shared pages.
_unshare = _libc.unshare
_mount = _libc.mount
_sethostname = _libc.sethostname
_umount2 = _libc.umount2


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    _check(_unshare(flags), "unshare")


def mount(
    source: str, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def namespace_flags() -> int:
    # A network namespace of its own whatever the policy: with the egress proxy its
    # only interface is loopback, where the proxy's listener is the one thing to reach.
    return CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET


def unshare_for_worker() -> str | None:
    """In the intermediate process: the next child starts in new namespaces.

    Returns None on success, or why the namespaces could not be made.
    """
    try:
        unshare(namespace_flags())
    except OSError as exc:
        return str(exc)
    return None


def _closed_ancestor(path: str) -> str | None:
    """The highest ancestor of ``path`` that others may not traverse, if any."""
    parts = os.path.realpath(path).split("/")[1:]
    for depth in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:depth])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def covered_directories() -> tuple[str, ...]:
    """Every directory this layer lays an empty tmpfs over."""
    others = sorted(
        f"/{name}"
        for name in os.listdir("/")
        if name not in VISIBLE_TOP_LEVEL
        and f"/{name}" not in PRIVATE_DIRECTORIES
        and os.path.isdir(f"/{name}")
        and not os.path.islink(f"/{name}")
    )
    return (*PRIVATE_DIRECTORIES, *others)


def _cover_of(path: str, covered: tuple[str, ...]) -> str | None:
    """Which mount of ours hides ``path`` from the session: a tmpfs we lay over a
    directory, or the highest ancestor its uid could not traverse."""
    for directory in covered:
        if path.startswith(directory + "/"):
            return directory
    return _closed_ancestor(path)


def _hidden_runtime_paths(covered: tuple[str, ...], executables: tuple[str, ...]) -> dict[str, str]:
    """Interpreter and library directories the session could not reach, and what hides each.

    A Python installed under a 0700 /root, or a virtualenv under a covered /work, must
    still be importable once the session runs as its own uid behind its own mounts.
    """
    hidden: dict[str, str] = {}
    for path in sorted(runtime.runtime_directories(executables)):
        if path in covered or any(path.startswith(h + "/") for h in hidden):
            continue
        cover = _cover_of(path, covered)
        if cover is not None:
            hidden[path] = cover
    return hidden


def _expose_runtime(
    hidden: dict[str, str], runtime_fds: dict[str, int], covered: tuple[str, ...]
) -> None:
    """Bind each hidden runtime directory back in, read-only, at its own path.

    A closed ancestor is first replaced by an empty tmpfs, so the rest of it (say,
    root's home) stays invisible.
    """
    mounted = set(covered)
    for path, cover in hidden.items():
        if cover not in mounted:
            mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            mounted.add(cover)
        _make_unlistable_dirs(path)
        mount(f"/proc/self/fd/{runtime_fds[path]}", path, None, MS_BIND | MS_REC)
        mount("none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _make_unlistable_dirs(path: str) -> None:
    """Make the missing directories of ``path``: traversable, never listable (0711).

    They lead to a directory bound back, say the virtualenv's libraries inside the
    checkout; under a /tmp the session may read, their names would otherwise list the
    checkout's layout.  Made by root before the worker drops to its own uid.
    """
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory, 0o711)
        os.chmod(directory, 0o711)  # noqa: S103 - whatever the umask; traversal only


def _detach(directory_fd: int) -> None:
    """Detach the mount at ``directory_fd`` and every mount beneath it from this
    namespace, if it is a mount point (a service that is not root mounts none there).

    Named through the descriptor: a tmpfs laid over an ancestor (a state directory
    under /tmp) hides the path, not the mount, which /proc/self/mounts still lists.
    """
    if _umount2(f"/proc/self/fd/{directory_fd}".encode(), MNT_DETACH) != 0:
        errno = ctypes.get_errno()
        if errno != EINVAL:
            raise OSError(errno, f"detach the other workspaces: {os.strerror(errno)}")


def _virtualenv_interpreter() -> None:
    """Where the virtualenv is hidden, its interpreter's link and a pyvenv.cfg naming
    the real interpreter, in the empty tmpfs that hides it.

    Code that starts ``sys.executable`` (multiprocessing's spawn, joblib, pip) then gets
    the same interpreter and libraries; nothing else of the virtualenv is there.  A
    convenience, not a boundary: a layout where it cannot be made goes without it.
    """
    if not runtime.IN_VIRTUALENV or os.path.lexists(sys.executable):
        return
    with contextlib.suppress(OSError):
        _make_unlistable_dirs(os.path.dirname(sys.executable))
        os.symlink(runtime.REAL_EXECUTABLE, sys.executable)
        with open(os.path.join(sys.prefix, "pyvenv.cfg"), "x", encoding="utf-8") as config:
            config.write(runtime.virtualenv_configuration())


def _minimal_dev(device_fds: dict[str, int], writable: int, shm_options: str) -> None:
    """A /dev of its own: the harmless devices, a private /dev/shm, nothing else.

    The host's /dev holds sockets such as /dev/log (the host's syslog, mode 0666), which
    Landlock does not govern connecting to, and devices no session needs.
    """
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")
    for name, fd in device_fds.items():
        path = f"/dev/{name}"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
    os.mkdir("/dev/shm", 0o1777)
    mount("tmpfs", "/dev/shm", "tmpfs", writable, shm_options)
    for link, target in DEVICE_LINKS.items():
        os.symlink(target, f"/dev/{link}")


def _forbid_executable_memfds() -> None:
    """No exec of memfd files in this PID namespace (the host's setting is untouched).

    A copy of a binary in a memfd, run through /proc/self/fd/N, would otherwise slip
    past Landlock's execute allowlist.  Kernels before 6.3 lack the knob.
    """
    try:
        with open("/proc/sys/vm/memfd_noexec", "w", encoding="ascii") as knob:
            knob.write("2")
    except FileNotFoundError:
        pass


def apply(spec: WorkerSpec, unshare_error: str | None) -> LayerStatus:
    if unshare_error is not None:
        os.chdir(spec.workspace)
        return LayerStatus("namespaces", False, unshare_error)
    nodev_nosuid = MS_NOSUID | MS_NODEV
    # Writable places are never executable: with Landlock granting execute on the
    # dynamic loader, `ld.so ./binary` would otherwise run a binary a session wrote.
    writable = MS_NOSUID | MS_NODEV | MS_NOEXEC
    # Held open so the workspace can be bound even when the mounts below hide its
    # host path (a state directory under /tmp or /mnt).
    workspace_fd = os.open(spec.workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    others = os.path.dirname(os.path.realpath(spec.workspace))
    others_fd = os.open(others, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    covered = covered_directories()
    runtime_paths = _hidden_runtime_paths(covered, spec.executables)
    device_fds = {
        name: os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)
        for name in DEVICES
        if os.path.exists(f"/dev/{name}")
    }
    runtime_fds = {
        path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in runtime_paths
    }
    try:
        # Mounts made from here on stay in this namespace.
        mount("none", "/", None, MS_REC | MS_PRIVATE)
        mount("proc", "/proc", "proc", nodev_nosuid | MS_NOEXEC)
        tmp_options = f"size={PRIVATE_TMP_MB}m,mode=1777"
        mount("tmpfs", "/tmp", "tmpfs", writable, tmp_options)
        _minimal_dev(device_fds, writable, tmp_options)
        for hidden in covered:
            if hidden not in PRIVATE_DIRECTORIES:
                mount("tmpfs", hidden, "tmpfs", writable, "size=1m,mode=0755")
        # /mnt becomes an empty tmpfs so the workspace path is the same on every host.
        mount("tmpfs", "/mnt", "tmpfs", nodev_nosuid, "size=1m,mode=0755")
        _expose_runtime(runtime_paths, runtime_fds, covered)
        _virtualenv_interpreter()
        _forbid_executable_memfds()
        os.mkdir(WORKSPACE_MOUNT, 0o755)
        mount(f"/proc/self/fd/{workspace_fd}", WORKSPACE_MOUNT, None, MS_BIND | MS_REC)
        mount("none", WORKSPACE_MOUNT, None, MS_BIND | MS_REMOUNT | writable)
        # Every other session's workspace is mounted beside this one on the host.  Once
        # ours is bound above, they all go with the mount of their directory (made by
        # workspaces.mount_root).  Where that directory is still in view (no tmpfs of
        # ours covers it), an empty tmpfs hides the names of the mount points beneath.
        _detach(others_fd)
        if os.path.isdir(others):
            mount("tmpfs", others, "tmpfs", writable, "size=1m,mode=0711")
    finally:
        for fd in (
            workspace_fd,
            others_fd,
            *runtime_fds.values(),
            *device_fds.values(),
        ):
            os.close(fd)
    # The checkout the zygote imported the sandbox from is not in this view: nothing
    # more is imported from it, or from what a .pth file added.
    sys.path[:] = runtime.import_path()
    os.chdir(WORKSPACE_MOUNT)
    _sethostname(b"sandbox", 7)
    detail = (
        "pid (worker is init), mount (/proc, private noexec /tmp, /dev/shm and workspace; "
        "only system directories of the host), ipc, uts"
    )
    if spec.policy.network.enabled:
        detail += ", net (loopback only: the egress proxy's listener)"
    else:
        detail += ", net (loopback only, down)"
    return LayerStatus("namespaces", True, detail)
