"""Start the zygote with a clean exec and ask it for workers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from sandbox import package_index, pool_ledger, protocol, state_lock, workspaces
from sandbox.confine import cgroup
from sandbox.confine.process import PR_SET_CHILD_SUBREAPER, prctl
from sandbox.egress.client import EgressClient
from sandbox.errors import (
    ConfinementError,
    ProtocolError,
    StateDirectoryInUse,
    ZygoteUnavailable,
)
from sandbox.handle import WorkerHandle, held_worker_pids
from sandbox.policy import Policy
from sandbox.protocol import StartOrder

log = logging.getLogger("codesherpa.zygote")

# Preloading numpy, pandas and matplotlib takes a few seconds on a cold disk.
ZYGOTE_START_TIMEOUT_S = 120.0
SPAWN_TIMEOUT_S = 30.0
ZYGOTE_STOP_TIMEOUT_S = 10.0
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


def zygote_environment() -> dict[str, str]:
    """The zygote's whole environment: nothing of the service's, so no secret.

    A worker's /proc/self/environ shows this block (the zygote's at exec), so it names
    no host path but the package's; the state directory comes through stdin instead.
    """
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": _PACKAGE_PARENT,
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


# The zygotes this process started and has not yet reaped (after a policy reload, the
# old one lives on beside the new until its sessions end).
_zygote_pids: set[int] = set()
# The state directories of the running clients, one entry per client: the directory of
# all workspaces is released when the last client of its state directory stops.
_running_state_dirs: list[str] = []


def cgroup_parent_for(state_dir: str) -> str:
    """One cgroup parent per service instance, so services sharing a host never meet."""
    digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:12]
    return f"codesherpa-{digest}"


def _request(
    message: protocol.SpawnRequest | protocol.StatusRequest | protocol.DrainRequest,
) -> bytes:
    return message.model_dump_json().encode()


def _clean_up_unwanted(made: asyncio.Future[WorkerHandle]) -> None:
    if made.cancelled() or made.exception() is not None:
        return
    _unwanted_cleanups.add(task := asyncio.ensure_future(made.result().cleanup()))
    task.add_done_callback(_unwanted_cleanups.discard)


# Cleanups of workers nobody waits for, kept referenced until they are done.
_unwanted_cleanups: set[asyncio.Future[None]] = set()


class ZygoteClient:
    def __init__(self, policy: Policy, state_dir: str, service_ports: tuple[int, ...] = ()) -> None:
        self.policy = policy
        self.service_ports = service_ports
        # The only way out of a session when the policy allows any network.
        self.egress = (
            EgressClient(policy.network, service_ports, policy.sessions.max_total)
            if policy.network.enabled
            else None
        )
        self.state_dir = state_dir
        self.cgroup_parent = cgroup_parent_for(state_dir)
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()
        self._ledger = ""  # the running zygote's pool ledger, drawn at each start
        self._owns_state_dir = False
        self.restarts = 0

    def start(self, clean_leftovers: bool = True) -> None:
        # Workers are re-parented to us when their intermediate exits; being a
        # subreaper is what lets us wait for them and read how they ended.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        if not self._owns_state_dir:
            # Raises StateDirectoryInUse before anything of another owner is touched.
            state_lock.acquire(self.state_dir)
            self._owns_state_dir = True
        if clean_leftovers and os.path.realpath(self.state_dir) in _running_state_dirs:
            # Another zygote of this process serves sessions there: nothing is a leftover.
            raise StateDirectoryInUse(os.path.realpath(self.state_dir), os.getpid())
        if clean_leftovers:
            # What an earlier run of this service left (a crash leaves it) ends now.
            with contextlib.suppress(OSError, ValueError):
                cgroup.remove_all_sessions(self.cgroup_parent)
            workspaces.remove_all(self.state_dir)
            shutil.rmtree(pool_ledger.ledgers_root(self.state_dir), ignore_errors=True)
        self._ledger = pool_ledger.new_ledger()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control_fd = theirs.fileno()
        # Every worker's /proc/self/cmdline is this command line: it names the interpreter
        # (which /proc/self/exe shows anyway, and which must be argv[0] for Python to
        # find its standard library) and nothing else of the host; the rest of what the
        # zygote needs to know comes through stdin.
        command = [
            sys.executable,
            # -P: no working directory on sys.path, so nothing there becomes importable
            # (or readable by a session through the interpreter's own path rules).
            "-P",
            "-m",
            "sandbox.zygote",
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            env=zygote_environment(),
            pass_fds=(control_fd,),
            cwd="/",
            close_fds=True,
        )
        _zygote_pids.add(self._process.pid)
        _running_state_dirs.append(os.path.realpath(self.state_dir))
        theirs.close()
        assert self._process.stdin is not None
        start = StartOrder(
            # An empty packages.index_url becomes the host's, read now, in the service.
            policy=package_index.for_sessions(self.policy),
            control_fd=control_fd,
            state_dir=self.state_dir,
            service_pid=os.getpid(),
            cgroup_parent=self.cgroup_parent,
            ledger=self._ledger,
        )
        self._process.stdin.write(start.model_dump_json().encode())
        self._process.stdin.close()
        ours.settimeout(ZYGOTE_START_TIMEOUT_S)
        try:
            ready = ours.recv(65536)
        except TimeoutError:
            ready = b""
        try:
            started = bool(ready) and protocol.decode_zygote_reply(ready, protocol.ZygoteReady)
        except ProtocolError:
            started = False
        if not started:
            self.stop()
            raise ZygoteUnavailable("the zygote did not start; see its output above")
        ours.settimeout(SPAWN_TIMEOUT_S)
        self._control = ours
        if self.egress is not None and not self.egress.alive():
            try:
                self.egress.start()
            except BaseException:
                self.stop()
                raise

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, keep_egress: bool = False) -> None:
        """End the ready workers and reap them, close the control socket, reap the zygote;
        stop the egress proxy too, unless ``keep_egress`` (a zygote restart: the running
        sessions keep their way out)."""
        if self._control is not None:
            if self.alive():
                self._reap_drained_pool()
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=ZYGOTE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            _zygote_pids.discard(self._process.pid)
            self._process = None
            # A zygote that died (or was killed just now) could not drain its pool: the
            # workspaces and cgroups of its ready workers are still listed.
            try:
                left = pool_ledger.clear(self.state_dir, self._ledger, self.cgroup_parent)
            except Exception:
                log.exception("cannot remove what the stopped zygote's ready workers left")
            else:
                if left:
                    log.warning("removed %d workspace(s) a stopped zygote left", left)
            _running_state_dirs.remove(os.path.realpath(self.state_dir))
            if os.path.realpath(self.state_dir) not in _running_state_dirs:
                # While the directory is still ours.  Refused by the kernel while a
                # session's workspace is still mounted there.
                with contextlib.suppress(OSError):
                    workspaces.release_root(self.state_dir)
        if self.egress is not None and not keep_egress:
            self.egress.stop()
        if self._owns_state_dir:
            self._owns_state_dir = False
            state_lock.release(self.state_dir)

    def _reap_drained_pool(self) -> None:
        # The ready workers were re-parented to us: only we can collect them.
        assert self._control is not None
        try:
            self._control.send(_request(protocol.DrainRequest()))
            _data, pidfds, _flags, _addr = socket.recv_fds(self._control, 65536, 64)
        except OSError:
            return
        for pidfd in pidfds:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            os.close(pidfd)

    def ensure_running(self) -> bool:
        """Restart a dead zygote; True if it had to be restarted.

        Sessions do not depend on it: their workers were re-parented to us when made.
        """
        with self._lock:
            if self.alive():
                return False
            # Held across the restart, so the directory never goes without an owner.
            with state_lock.claimed(self.state_dir):
                self.stop(keep_egress=True)
                self.start(clean_leftovers=False)
            self.restarts += 1
            return True

    def pool_size(self) -> int | None:
        with self._lock:
            if self._control is None or not self.alive():
                return None
            try:
                self._control.send(_request(protocol.StatusRequest()))
                reply = self._control.recv(65536)
                return protocol.decode_zygote_reply(reply, protocol.PoolStatus).pool
            except (OSError, ProtocolError):
                return None

    def _spawn_blocking(self, workspace: str | None) -> WorkerHandle:
        self.ensure_running()
        # The handle is made under the lock: reap_orphans must never see the new
        # worker's pid before a handle holds it.
        with self._lock:
            if self._control is None or not self.alive():
                raise ZygoteUnavailable("the zygote is not running")
            try:
                self._control.send(_request(protocol.SpawnRequest(workspace=workspace)))
                data, fds, _flags, _addr = socket.recv_fds(self._control, 65536, 3)
            except OSError as exc:
                raise ZygoteUnavailable(f"the zygote did not answer: {exc}") from None
            if not data:
                raise ZygoteUnavailable("the zygote closed its control socket")
            try:
                made = protocol.decode_zygote_reply(data, protocol.WorkerMade)
                if len(fds) not in (2, 3):
                    raise ProtocolError("the zygote's reply came without the worker's fds")
            except ProtocolError as exc:
                for fd in fds:
                    os.close(fd)
                raise ZygoteUnavailable(f"the zygote could not make a worker: {exc}") from None
            channel_fd, pidfd = fds[:2]
            handle = WorkerHandle(
                pid=made.pid,
                pidfd=pidfd,
                channel=socket.socket(fileno=channel_fd),
                workspace=made.workspace,
                uid=made.uid,
                session_key=made.session_key,
                quota=made.quota,
                cgroup_parent=self.cgroup_parent,
            )
            if len(fds) > 2:
                handle.egress_listener = socket.socket(fileno=fds[2])
            return handle

    def reap_orphans(self) -> int:
        """Reap exited children nothing else will; return how many.

        When a zygote dies, the ready workers of its pool lose their channel and exit;
        they were re-parented to this process, and no handle holds them.  A child held
        by a WorkerHandle, or a zygote (its Popen reaps it), is left alone.
        """
        reaped = 0
        with self._lock:
            spared = held_worker_pids() | frozenset(_zygote_pids)
            for child in psutil.Process().children():
                if child.pid in spared:
                    continue
                try:
                    if child.status() != psutil.STATUS_ZOMBIE:
                        continue
                    os.waitpid(child.pid, os.WNOHANG)
                except (psutil.Error, ChildProcessError):
                    continue
                reaped += 1
        return reaped

    async def spawn(
        self, workspace: str | None = None, hello_timeout: float = 30.0
    ) -> WorkerHandle:
        made = asyncio.ensure_future(asyncio.to_thread(self._spawn_blocking, workspace))
        try:
            handle = await asyncio.shield(made)
        except asyncio.CancelledError:
            # The thread cannot be stopped: the worker it hands over after the caller
            # has gone is ended, not dropped (nothing else would ever end it).
            made.add_done_callback(_clean_up_unwanted)
            raise
        try:
            hello = await handle.read_hello(hello_timeout)
        except BaseException:
            await handle.cleanup()
            raise
        if hello.fatal:
            await handle.cleanup()
            raise ConfinementError(hello.fatal, hello.layers)
        return handle
