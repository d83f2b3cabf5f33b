"""WorkerHandle: the service's grip on one worker, with the verbs of ``subprocess.Popen``.

It joins three parts, each a module of its own: the process (``worker_process``: a
pidfd, poll, wait, signals), its channel (``worker_channel``: framed messages) and the
session's accounting (``session_accounting``: its cgroup's counters and sweep).  Here
they are started and ended together.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from sandbox import protocol
from sandbox.confine import cgroup
from sandbox.core_watch import CoreWatch
from sandbox.errors import ProtocolError, WorkerLost
from sandbox.session_accounting import SessionAccounting
from sandbox.worker_channel import WorkerChannel
from sandbox.worker_process import WorkerProcess, describe_returncode, held_worker_pids

__all__ = ["WorkerHandle", "describe_returncode", "held_worker_pids"]


class WorkerHandle:
    def __init__(
        self,
        pid: int,
        pidfd: int,
        channel: socket.socket,
        workspace: str,
        uid: int | None,
        session_key: str,
        quota: bool,
        cgroup_parent: str = cgroup.PARENT_GROUP,
        max_frame: int = protocol.DEFAULT_MAX_FRAME,
    ) -> None:
        self.pid = pid
        self.workspace = workspace
        self.uid = uid
        self.session_key = session_key
        self.quota = quota
        self.cgroup_parent = cgroup_parent
        self.hello: protocol.Hello | None = None
        self.process = WorkerProcess(pid, pidfd)
        self.channel = WorkerChannel(channel, max_frame)
        self.accounting = SessionAccounting(session_key, pid, cgroup_parent)
        self._cleaning: asyncio.Future[None] | None = None  # the one cleanup (see cleanup)
        # The egress proxy's listener in the worker's network namespace, until the
        # service hands it to the proxy (network.mode = "allowlist" only).
        self.egress_listener: socket.socket | None = None

    # -- the Popen verbs ---------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        return self.process.poll()

    async def wait(self, timeout: float | None = None) -> int | None:
        """The worker's exit status once it has ended; TimeoutError after ``timeout``."""
        return await self.process.wait(timeout)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def interrupt(self) -> None:
        self.process.interrupt()

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    async def cleanup(self) -> None:
        """Kill the worker (its PID namespace dies with it), reap it, close everything.

        One cleanup runs per handle, whoever asks and however often: a session ending
        while a run's recovery ends its worker asks twice, and two waits on one pidfd
        would each register it with the loop.  A caller cancelled meanwhile leaves the
        cleanup running to its end.
        """
        if self._cleanup_needed():
            # Before anything that awaits: a cancelled cleanup must not leave others idle.
            self.accounting.stop_watching_cores()
            self.kill()
            self._cleaning = asyncio.ensure_future(self._finish_cleanup())
        assert self._cleaning is not None
        await asyncio.shield(self._cleaning)

    def _cleanup_needed(self) -> bool:
        """Whether no cleanup has run, or the last one cannot finish (it is safe to redo).

        One cut short (its loop ended, cancelling it) or failed is run again; so is one
        still pending on another loop, which nothing here could await.
        """
        cleaning = self._cleaning
        if cleaning is None:
            return True
        if not cleaning.done():
            return cleaning.get_loop() is not asyncio.get_running_loop()
        return cleaning.cancelled() or cleaning.exception() is not None

    async def _finish_cleanup(self) -> None:
        with contextlib.suppress(TimeoutError):
            await self.wait(timeout=5)
        # A receive still pending ends now, and any later one fails as WorkerLost, even
        # if the worker outlived the wait (its end of the channel is still open then).
        self.channel.close()
        if self.egress_listener is not None:
            self.egress_listener.close()
            self.egress_listener = None
        self.process.release()
        await self.accounting.remove()

    # -- the session's accounting --------------------------------------------------------

    def hit_memory_limit(self) -> bool:
        return self.accounting.hit_memory_limit()

    def oom_kills(self) -> int:
        return self.accounting.oom_kills()

    @property
    def cores(self) -> CoreWatch:
        return self.accounting.cores

    def kill_strays(self) -> None:
        self.accounting.kill_strays()

    def usage(self) -> dict[str, int]:
        return self.accounting.usage()

    # -- the channel -------------------------------------------------------------------

    async def receive(self) -> protocol.WorkerFrame:
        return await self.channel.receive()

    async def send(self, message: protocol.RunPython | protocol.RunCommand) -> None:
        await self.channel.send(message)

    def hang_up(self) -> None:
        self.channel.hang_up()

    async def read_hello(self, timeout: float) -> protocol.Hello:
        try:
            message = await asyncio.wait_for(self.channel.receive(), timeout)
        except TimeoutError:
            raise WorkerLost(f"the worker sent no hello within {timeout:g} s") from None
        if not isinstance(message, protocol.Hello):
            raise ProtocolError("the worker did not start with a hello")
        self.hello = message
        return message
