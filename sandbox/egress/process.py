"""The proxy as a process: its start order, its own confinement, and its control socket.

The service execs ``python -P -m sandbox.egress`` with a clean environment and writes
a ``ProxyStartOrder`` on its stdin (the command line and environment name nothing).
Then, on a SOCK_SEQPACKET control socket:

    proxy → service  {"ready": [its layers]} once confined
    service → proxy  SessionListener (JSON) with the session's listener and its
                     worker's pidfd attached: serve that session until the worker ends
    proxy → service  one JSON report per connection, allowed or refused
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import importlib
import ipaddress
import json
import os
import resource
import signal
import socket
import sys
import time
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field

from sandbox.confine.process import (
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    prctl,
)
from sandbox.egress.budget import RESOLVER_THREADS, SessionBudget
from sandbox.egress.confinement import apply_landlock, apply_seccomp, prepare_seccomp
from sandbox.egress.destinations import DestinationPolicy, IPAddress
from sandbox.egress.proxy import EgressProxy
from sandbox.policy.network import Network

MAX_PENDING_REPORTS = 10_000
MAX_BUDGETS = 10_000
OWN_ADDRESSES_TTL_S = 5.0
CONTROL_MESSAGE_MAX = 4096
# getaddrinfo in the loop's thread pool; the IDNA codec for names it encodes.
LAZY_IMPORTS = ("concurrent.futures.thread", "encodings.idna", "stringprep", "unicodedata")


class ProxyStartOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    network: Network
    service_ports: list[int]
    control_fd: int
    uid: int | None  # drop to this uid (when started as root)
    open_files: int = Field(gt=0)


class SessionListener(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(max_length=256)
    session: str = Field(max_length=256)


def own_addresses() -> frozenset[IPAddress]:
    """Every address of this host's interfaces (the proxy runs in the host's namespace)."""
    found: set[IPAddress] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.add(ipaddress.ip_address(address.address.split("%")[0]))
    return frozenset(found)


def import_what_is_used_later() -> None:
    """Modules the proxy would import lazily, imported while it may still read them: as
    its own uid it may not (the interpreter's installation can be private to root)."""
    for name in LAZY_IMPORTS:
        importlib.import_module(name)


def confine_self(order: ProxyStartOrder) -> None:
    """What of a worker's confinement fits a network proxy: rlimits, no core, not
    dumpable, no-new-privs, an unprivileged uid, death with the service.  No file-size
    limit: its stderr (the service's, maybe a file) must take its lines; Landlock keeps
    it from opening any file for writing."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (order.open_files, order.open_files))
    if order.uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(order.uid, order.uid, order.uid)
        os.setresuid(order.uid, order.uid, order.uid)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)


class ProxyProcess:
    def __init__(self, order: ProxyStartOrder) -> None:
        self.order = order
        self.control = socket.socket(fileno=order.control_fd)
        self.control.setblocking(False)
        self.pending: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self._destinations: tuple[float, DestinationPolicy] | None = None
        self.proxy = EgressProxy(order.network, self.destinations, self.report)
        # A session's budget outlives its workers (a restart must not renew it); kept
        # for MAX_BUDGETS sessions, those with no worker left going first.
        self.budgets: dict[tuple[str, str], SessionBudget] = {}
        self.serving: collections.Counter[tuple[str, str]] = collections.Counter()
        self.sessions: set[asyncio.Future[None]] = set()
        self.done = asyncio.get_running_loop().create_future()

    def destinations(self) -> DestinationPolicy:
        now = time.monotonic()
        if self._destinations is None or now - self._destinations[0] > OWN_ADDRESSES_TTL_S:
            policy = DestinationPolicy(
                self.order.network, own_addresses(), self.order.service_ports
            )
            self._destinations = (now, policy)
        return self._destinations[1]

    # -- reports to the service --------------------------------------------------------

    def report(self, fields: dict[str, Any]) -> None:
        if len(self.pending) >= MAX_PENDING_REPORTS:
            self.dropped += 1
            return
        self.pending.append(json.dumps(fields, default=str).encode())
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            try:
                self.control.send(self.pending[0])
            except BlockingIOError:
                loop.add_writer(self.control, self._flush_when_writable)
                return
            except OSError as exc:
                # The service is gone or its socket broken: these are lost too, counted.
                self.dropped += len(self.pending)
                self.pending.clear()
                why = f"the control socket failed: {exc}"
                break
            self.pending.popleft()
        else:
            why = "the service did not read them"
        if self.dropped:
            # The audit log misses these lines: the operator must hear of it somewhere.
            print(
                f"codesherpa egress proxy: {self.dropped} connection reports dropped "
                f"({why}); the audit log misses them",
                file=sys.stderr,
                flush=True,
            )
            self.dropped = 0

    def _flush_when_writable(self) -> None:
        asyncio.get_running_loop().remove_writer(self.control)
        self._flush()

    # -- sessions from the service -----------------------------------------------------

    def on_control(self) -> None:
        try:
            data, fds, _flags, _address = socket.recv_fds(self.control, CONTROL_MESSAGE_MAX, 2)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            # The service let go of us: nothing may outlive it.
            for fd in fds:
                os.close(fd)
            if not self.done.done():
                self.done.set_result(None)
            return
        try:
            message = SessionListener.model_validate_json(data)
            if len(fds) != 2:
                raise ValueError("a session listener comes with its listener and pidfd")
        except ValueError:
            for fd in fds:
                os.close(fd)
            return
        listener, pidfd = fds
        task = asyncio.ensure_future(self.serve_session(message, listener, pidfd))
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)

    async def serve_session(self, message: SessionListener, listener_fd: int, pidfd: int) -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket(fileno=listener_fd)
        listener.setblocking(False)
        key = (message.tenant, message.session)
        budget = self.budgets.setdefault(key, SessionBudget(message.tenant, message.session))
        self.serving[key] += 1
        server = await asyncio.start_server(
            lambda reader, writer: self.proxy.handle(reader, writer, budget), sock=listener
        )
        ended = loop.create_future()

        def on_exit() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await ended
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            # The listener holds the session's network namespace: it goes now.
            server.close()
            self.serving[key] -= 1
            self._forget_ended_sessions()

    def _forget_ended_sessions(self) -> None:
        for key in list(self.budgets):
            if len(self.budgets) <= MAX_BUDGETS:
                return
            if self.serving[key] <= 0 and self.budgets[key].open_now == 0:
                del self.budgets[key]
                del self.serving[key]

    async def run(self) -> None:
        asyncio.get_running_loop().add_reader(self.control, self.on_control)
        await self.done


def main() -> None:
    order = ProxyStartOrder.model_validate_json(sys.stdin.buffer.read())
    import_what_is_used_later()
    seccomp = prepare_seccomp()
    confine_self(order)
    # Single-threaded still: both layers hold every thread started from here on.
    layers = [apply_landlock(), apply_seccomp(seccomp)]
    # The service waits for this before it hands the proxy any session.
    socket.socket(fileno=os.dup(order.control_fd)).send(json.dumps({"ready": layers}).encode())

    async def serve() -> None:
        executor = concurrent.futures.ThreadPoolExecutor(RESOLVER_THREADS, "resolver")
        asyncio.get_running_loop().set_default_executor(executor)
        await ProxyProcess(order).run()

    asyncio.run(serve())
