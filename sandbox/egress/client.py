"""The service's side of the egress proxy: start it, hand it each session's listener,
read its reports.

The proxy reads what sessions send, so it is a process of its own (a crash or a stall
there is no crash or stall of the service) with nothing of the service's: a clean exec,
no environment but the package path, its start order on stdin, an unprivileged uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.egress.process import ProxyStartOrder, SessionListener
from sandbox.errors import EgressUnavailable
from sandbox.handle import WorkerHandle
from sandbox.policy.network import Network
from sandbox.uids import UID_RANGE_START

if TYPE_CHECKING:
    from sandbox.session import Session

log = logging.getLogger("codesherpa.egress")

# Below the workers' uids: no session shares it, so none can signal or trace the proxy.
PROXY_UID = UID_RANGE_START - 1
STOP_TIMEOUT_S = 5.0
START_TIMEOUT_S = 30.0
REPORT_MAX_BYTES = 64 * 1024  # a report's texts are cut to 500 characters each


class EgressReport(BaseModel):
    """One connection, as the proxy reports it; checked, since the proxy reads what
    sessions send and is trusted no more than it must be."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant: str = Field(max_length=256)
    session: str = Field(max_length=256)
    host: str | None = Field(None, max_length=512)
    port: int | None = None
    address: str | None = Field(None, max_length=64)
    method: str | None = Field(None, max_length=512)
    verdict: str = Field(pattern="^(allowed|refused)$")
    key: str | None = Field(None, max_length=512)
    reason: str | None = Field(None, max_length=1024)
    bytes_up: int = 0
    bytes_down: int = 0
    cut: str | None = Field(None, max_length=512)
    duration_ms: float = 0.0


ReportSink = Callable[[EgressReport], None]


def proxy_environment() -> dict[str, str]:
    from sandbox.zygote_client import zygote_environment

    return {key: zygote_environment()[key] for key in ("PATH", "LANG", "PYTHONPATH")} | {
        "PYTHONDONTWRITEBYTECODE": "1"
    }


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class EgressClient:
    def __init__(self, network: Network, service_ports: tuple[int, ...], max_sessions: int) -> None:
        self.network = network
        self.service_ports = service_ports
        self._open_files = 64 + max_sessions * (2 + 2 * network.max_open_connections)
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._reading_on: asyncio.AbstractEventLoop | None = None
        self._sink: ReportSink | None = None
        self._stopping = False
        self._restart: asyncio.Future[None] | None = None
        self.layers: list[str] = []  # how the running proxy confined itself

    def start(self) -> None:
        self._stopping = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        order = ProxyStartOrder(
            network=self.network,
            service_ports=list(self.service_ports),
            control_fd=theirs.fileno(),
            uid=PROXY_UID if os.geteuid() == 0 else None,
            open_files=self._open_files,
        )
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-m", "sandbox.egress"],
            stdin=subprocess.PIPE,
            env=proxy_environment(),
            pass_fds=(theirs.fileno(),),
            cwd="/",
            close_fds=True,
        )
        theirs.close()
        assert self._process.stdin is not None
        self._process.stdin.write(order.model_dump_json().encode())
        self._process.stdin.close()
        ours.settimeout(START_TIMEOUT_S)
        try:
            layers = json.loads(ours.recv(REPORT_MAX_BYTES))["ready"]
        except (OSError, ValueError, KeyError, TypeError):
            ours.close()
            self.stop()
            raise EgressUnavailable(
                "the egress proxy did not start; see its output above"
            ) from None
        self.layers = [str(layer) for layer in layers]
        for layer in self.layers:
            log.info("egress proxy: %s", layer)
        ours.setblocking(False)
        self._control = ours

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def ready(self) -> bool:
        """Running and confined: it takes sessions."""
        return self._control is not None and self.alive()

    def stop(self) -> None:
        """End the proxy (it exits when its control socket closes) and reap it.  From any
        thread: the loop that reads the socket releases it itself when it is running."""
        self._stopping = True
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_RDWR)
            loop = self._reading_on
            if loop is None or not loop.is_running() or _running_loop() is loop:
                self._release_control()
        if self._process is not None:
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def attach(self, worker: WorkerHandle, tenant: str, session_id: str) -> bool:
        """Give the proxy this worker's listener, for this session: every connection it
        accepts there is this session's.  The service keeps no copy (the proxy closes
        its copy when the worker's pidfd says the worker ended)."""
        listener, worker.egress_listener = worker.egress_listener, None
        if listener is None:
            return False
        try:
            pidfd = worker.process.pidfd
            if self._control is None or pidfd is None:
                return False
            message = SessionListener(tenant=tenant, session=session_id)
            data = message.model_dump_json().encode()
            # A datagram of a few hundred bytes to a socket the proxy drains: if even
            # that would block, the proxy is stuck, and this session goes without network.
            socket.send_fds(self._control, [data], [listener.fileno(), pidfd])
        except OSError as exc:
            log.error("cannot hand session %s's listener to the egress proxy: %s", session_id, exc)
            return False
        finally:
            listener.close()
        return True

    def report_to(self, sink: ReportSink) -> None:
        """Deliver the proxy's reports to ``sink``, on the running loop."""
        self._sink = sink
        loop = asyncio.get_running_loop()
        if self._control is not None and self._reading_on is not loop:
            self._reading_on = loop
            loop.add_reader(self._control, self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(64):  # a burst does not hold the loop
            if self._control is None:
                return
            try:
                data = self._control.recv(REPORT_MAX_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._on_proxy_ended()
                return
            self._deliver(data)

    def _on_proxy_ended(self) -> None:
        """On the loop: the proxy went (a crash, a kill).  Sessions it served have lost
        their way out; a new proxy serves the sessions started from now on."""
        loop = self._reading_on
        if loop is None or self._control is None:
            return
        self._release_control()
        if self._stopping:
            return
        log.error("the egress proxy ended; starting another for new sessions")
        # A thread's future, not a task: a loop that closes before it ends leaves no
        # coroutine behind never awaited.
        try:
            self._restart = loop.run_in_executor(None, self._reap_and_start)
        except RuntimeError:  # the loop's executor is shut down: the service is ending
            return
        self._restart.add_done_callback(self._started_again)

    def _release_control(self) -> None:
        loop, self._reading_on = self._reading_on, None
        control, self._control = self._control, None
        if control is None:
            return
        if loop is not None and not loop.is_closed():
            loop.remove_reader(control)
        control.close()

    def _started_again(self, started: asyncio.Future[None]) -> None:
        if started.cancelled():
            return
        failure = started.exception()
        if failure is not None:
            log.error(
                "cannot start the egress proxy again: new sessions have no network: %s", failure
            )
            return
        if self._sink is not None and not self._stopping:
            self.report_to(self._sink)

    def _reap_and_start(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        self.start()

    def _deliver(self, data: bytes) -> None:
        try:
            fields: Any = json.loads(data)
            report = EgressReport.model_validate(fields)
        except (ValueError, ValidationError):
            log.warning("a malformed report from the egress proxy was dropped")
            return
        if self._sink is not None:
            try:
                self._sink(report)
            except Exception:
                log.exception("cannot record an egress report")


def give_network(session: Session, tenant: str, session_id: str) -> bool:
    """Hand the egress proxy a session's listener, now and after each restart, in the
    session's name; False where its policy has no network (or the proxy is down)."""
    egress = session.zygote.egress
    if egress is None:
        return False

    def attach(worker: WorkerHandle) -> bool:
        return egress.attach(worker, tenant, session_id)

    session.on_new_worker = attach
    return session.worker is not None and attach(session.worker)
