"""The zygote: a clean, single-threaded process that forks confined workers.

The service starts it with a fresh exec and a minimal environment, never by forking
itself, so no token or socket of the service can reach a worker.  It imports the
policy's preload modules once, freezes the garbage collector so forks share those
pages, and keeps a small pool of confined workers ready.

Each worker is made by a short-lived intermediate process that enters new
namespaces, forks the worker as init of its PID namespace, puts it in its cgroup
before letting it start, then exits.  The worker is thus re-parented to the service
(a child subreaper), which can wait for it through a pidfd and read how it ended.

It reads its start order (``protocol.StartOrder``: the policy, its control socket,
the state directory, the service's pid) on stdin, so that its command line and
environment, which every worker inherits, name none of them.  Control messages are
then JSON datagrams on a SOCK_SEQPACKET socket, each a model of ``sandbox.protocol``:

    service → zygote  SpawnRequest   →  WorkerMade, with the worker's channel and a
                                        pidfd attached (SCM_RIGHTS), or ZygoteRefusal
    service → zygote  StatusRequest  →  PoolStatus
    service → zygote  DrainRequest   →  Drained, with the killed ready workers' pidfds
                                        attached, for the service (their parent) to reap
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import traceback
from dataclasses import asdict

from sandbox import fork, heap, pool_ledger, protocol, scheduling, warm_up, workspaces
from sandbox.commands import resolve_program
from sandbox.confine import (
    LayerStatus,
    WorkerSpec,
    cgroup,
    cgroup_for_worker,
    confine_worker,
    environment,
    landlock_layer,
    seccomp_layer,
    unshare_for_worker,
)
from sandbox.confine.process import die_with_parent
from sandbox.egress.address import hand_over_listener, receive_listener
from sandbox.errors import ConfinementError
from sandbox.policy import Policy
from sandbox.preload_guard import toolbox_kept_out
from sandbox.ready_worker import ReadyWorker
from sandbox.uids import UidAllocator
from sandbox.worker import run_worker

CONTROL_MESSAGE_MAX = 64 * 1024


class Zygote:
    def __init__(
        self, policy: Policy, state_dir: str, service_pid: int, cgroup_parent: str, ledger: str
    ) -> None:
        self._policy = policy
        self._ledger = ledger
        self._cgroup_parent = cgroup_parent
        self._state_dir = state_dir
        self._service_pid = service_pid
        self._uids = UidAllocator(workspaces.workspaces_root(state_dir))
        self._pool: list[ReadyWorker] = []
        self._executables = tuple(
            path
            for path in (resolve_program(name, policy.commands) for name in policy.commands.allow)
            if path is not None
        )
        workspaces.prepare_root(state_dir)
        workspaces.mount_root(state_dir)
        # Work every worker would repeat, done once here so forks share its pages.
        wanted = policy.isolation.wanted()
        if "cgroup" in wanted:
            # Read-only; the worker selects again.  Done here, the lazy set-up it
            # triggers (the regular expressions it compiles and caches) is shared.
            cgroup.select_version(cgroup_parent)
        if "seccomp" in wanted:
            seccomp_layer.prepare(policy.network.enabled)
        if "landlock" in wanted:
            landlock_layer.prepare(self._executables)

    def fill_pool(self) -> None:
        while len(self._pool) < self._policy.sessions.warm_pool:
            self._pool.append(self.fork_worker(None))

    @property
    def pool_size(self) -> int:
        return len(self._pool)

    def drain_pool(self, reply_to: socket.socket | None = None) -> None:
        """End the ready workers and delete their workspaces and cgroups.

        The workers are the service's children, not ours: with ``reply_to`` their
        pidfds go back to the service, which reaps them.
        """
        for ready in self._pool:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(ready.pidfd, signal.SIGKILL)
        if reply_to is not None:
            pidfds = [ready.pidfd for ready in self._pool]
            socket.send_fds(reply_to, [protocol.Drained().model_dump_json().encode()], pidfds)
        for ready in self._pool:
            self._discard(ready)
        self._pool.clear()

    def _discard(self, ready: ReadyWorker) -> None:
        """End a worker no session will have; remove its workspace and cgroups."""
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(ready.pidfd, signal.SIGKILL)
        ready.close()
        workspaces.remove(ready.workspace)
        with contextlib.suppress(OSError, ValueError):
            cgroup.kill_and_remove(ready.session_key, self._cgroup_parent)
        with contextlib.suppress(OSError):
            pool_ledger.strike(self._state_dir, self._ledger, ready.workspace)

    def take(self, workspace: str | None) -> ReadyWorker:
        """A worker for the service: a ready one for a new workspace, else a new fork."""
        ready = self._pool.pop(0) if workspace is None and self._pool else None
        if ready is None:
            ready = self.fork_worker(workspace)
        if workspace is None:
            try:
                pool_ledger.strike(self._state_dir, self._ledger, ready.workspace)
            except OSError:
                self._discard(ready)
                raise
        return ready

    def fork_worker(self, workspace: str | None) -> ReadyWorker:
        """Fork a confined worker; with no ``workspace``, in a new one the ledger lists."""
        quota = self._policy.limits.workspace_mb
        session_key = secrets.token_hex(8)
        created = workspace is None
        if workspace is None:
            uid = self._uids.allocate()
            # Listed before it exists: no moment of a crash can leave it unlisted.
            workspace = workspaces.new_path(self._state_dir)
            pool_ledger.record(self._state_dir, self._ledger, workspace, session_key)
        else:
            # Its own uid back: re-owning every file would hold up every other spawn.
            uid = self._uids.reclaim(workspace)
            if uid is None:
                uid = self._uids.allocate()
                if uid is not None:
                    workspaces.hand_over(workspace, uid)
        try:
            if created:
                bounded = workspaces.create(workspace, uid, quota)
            else:
                bounded = os.path.ismount(workspace)
            return self._start_worker(workspace, uid, session_key, bounded)
        except BaseException:
            if created:
                workspaces.remove(workspace)
                with contextlib.suppress(OSError):
                    pool_ledger.strike(self._state_dir, self._ledger, workspace)
            raise

    def _start_worker(
        self, workspace: str, uid: int | None, session_key: str, bounded: bool
    ) -> ReadyWorker:
        service_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = WorkerSpec(
            policy=self._policy,
            workspace=workspace,
            uid=uid,
            channel_fd=worker_end.fileno(),
            session_key=session_key,
            cgroup_parent=self._cgroup_parent,
            executables=self._executables,
        )
        pid_read, pid_write = os.pipe()
        listener_here, listener_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        intermediate = fork.fork()
        if intermediate == 0:
            service_end.close()
            listener_here.close()
            os.close(pid_read)
            _intermediate(spec, pid_write, self._service_pid, listener_there)
        worker_end.close()
        listener_there.close()
        os.close(pid_write)
        try:
            raw = _read_all(pid_read)
            listener = receive_listener(listener_here) if raw else None
        finally:
            os.close(pid_read)
            listener_here.close()
        os.waitpid(intermediate, 0)
        if not raw:
            service_end.close()
            if listener is not None:
                listener.close()
            raise RuntimeError("the intermediate process could not fork a worker")
        pid = int(raw)
        # The worker is no child of ours but cannot be reaped before this call: its
        # new parent, the service, waits only on pidfds it was given.
        pidfd = os.pidfd_open(pid)
        return ReadyWorker(pid, pidfd, service_end, workspace, uid, session_key, bounded, listener)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
    return b"".join(chunks)


def _intermediate(
    spec: WorkerSpec, pid_write: int, service_pid: int, listener_to: socket.socket
) -> None:
    """Enter new namespaces, make the egress proxy's listener there, fork the worker as
    their init, put it in its cgroup, report its pid and listener, exit."""
    try:
        unshare_error = unshare_for_worker(spec)
        hand_over_listener(spec.policy.network.enabled, unshare_error, listener_to)
        listener_to.close()
        go_read, go_write = os.pipe()
        worker = fork.fork()
        if worker == 0:
            os.close(pid_write)
            os.close(go_write)
            _worker(spec, unshare_error, service_pid, go_read)
        os.close(go_read)
        # The worker waits for this before it does anything.  What runs here after the
        # fork copies only this process's pages, which go when it exits.
        status = cgroup_for_worker(spec, worker)
        message = b"" if status is None else json.dumps(asdict(status)).encode()
        os.write(go_write, message)
        os.close(go_write)
        os.write(pid_write, str(worker).encode())
    except BaseException:  # noqa: BLE001 - a forked child never returns into the zygote
        traceback.print_exc()
    finally:
        os._exit(0)


def _cgroup_status(go_read: int) -> LayerStatus | None:
    """Wait for the intermediate's go; what it reports of the cgroup layer, if it ran it."""
    try:
        message = _read_all(go_read)
    finally:
        os.close(go_read)
    if not message:
        return None
    fields = json.loads(message)
    return LayerStatus(str(fields["name"]), bool(fields["active"]), str(fields["detail"]))


def _worker(spec: WorkerSpec, unshare_error: str | None, service_pid: int, go_read: int) -> None:
    code = 0
    try:
        fork.prepare_worker()
        cgroup_status = _cgroup_status(go_read)
        # Every inherited descriptor goes: other workers' channels, the control socket.
        _close_all_but({spec.channel_fd})
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Before /proc is remounted for our namespace: it must show the host's pids.
        die_with_parent(service_pid)
        try:
            layers = confine_worker(spec, unshare_error, cgroup_status)
        except ConfinementError as refusal:
            _refuse(spec.channel_fd, refusal)
            raise
        run_worker(spec.channel_fd, spec.policy, layers)
    except BaseException:  # noqa: BLE001 - report, then leave without unwinding into the zygote
        traceback.print_exc()
        code = 3
    finally:
        os._exit(code)


def _refuse(channel_fd: int, refusal: ConfinementError) -> None:
    """Tell the service which required layer failed, instead of dying silently."""
    hello = protocol.Hello(
        pid=os.getpid(), workspace=os.getcwd(), layers=refusal.report, fatal=str(refusal)
    )
    with socket.socket(fileno=os.dup(channel_fd)) as channel:
        channel.sendall(protocol.encode(hello))


def _close_all_but(keep: set[int]) -> None:
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 20)


def serve(control: socket.socket, zygote: Zygote) -> None:
    zygote.fill_pool()
    control.send(protocol.ZygoteReady().model_dump_json().encode())
    while True:
        try:
            data = control.recv(CONTROL_MESSAGE_MAX)
        except InterruptedError:
            continue
        if not data:
            # The service let go of us: nothing may outlive it.
            zygote.drain_pool()
            return
        try:
            request = protocol.decode_zygote_request(data)
            if isinstance(request, protocol.StatusRequest):
                status = protocol.PoolStatus(pool=zygote.pool_size)
                control.send(status.model_dump_json().encode())
                continue
            if isinstance(request, protocol.DrainRequest):
                zygote.drain_pool(reply_to=control)
                continue
            ready = zygote.take(request.workspace)
        except Exception as exc:  # noqa: BLE001 - the zygote answers every request
            control.send(protocol.ZygoteRefusal(error=str(exc)).model_dump_json().encode())
            continue
        try:
            socket.send_fds(
                control,
                [ready.describe().model_dump_json().encode()],
                ready.fds(),
            )
        finally:
            ready.close()
        zygote.fill_pool()


def _preload(policy: Policy) -> None:
    with fork.recording_child_hooks():
        for module in policy.python.preload:
            importlib.import_module(module)
        if "matplotlib" in policy.python.preload:
            importlib.import_module("matplotlib.pyplot")


def main() -> None:
    start = protocol.StartOrder.model_validate_json(sys.stdin.buffer.read())
    die_with_parent(start.service_pid)
    # The service's short time slice is for its requests, not for session code.
    scheduling.use_default_slice()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Set here, not in the environment the zygote was started with: that block is what
    # a worker's /proc/self/environ shows.
    os.environ["HOME"] = start.state_dir
    os.environ["MPLCONFIGDIR"] = os.path.join(start.state_dir, "matplotlib")
    policy = start.policy
    with toolbox_kept_out(policy.python.preload):
        zygote = _warmed_zygote(start, policy)
    # Everything imported so far is shared, read-only, by every worker: keep the
    # collector from touching (and so copying) those pages in each fork.
    gc.collect()
    heap.pack()
    gc.freeze()
    serve(socket.socket(fileno=start.control_fd), zygote)


def _warmed_zygote(start: protocol.StartOrder, policy: Policy) -> Zygote:
    """The policy's modules imported, the layers prepared, the session path run once."""
    _preload(policy)
    fork.locate_numpy_state()
    zygote = Zygote(policy, start.state_dir, start.service_pid, start.cgroup_parent, start.ledger)
    if "environment" in policy.isolation.wanted():
        environment.prepare(policy.network.enabled)
    try:
        with tempfile.TemporaryDirectory(dir=start.state_dir, prefix="warm-up-") as empty:
            warm_up.warm_up(policy, empty)
    except Exception:  # noqa: BLE001 - only memory is at stake: the zygote still serves
        traceback.print_exc()
    return zygote


if __name__ == "__main__":
    main()
