"""WorkerHandle: the service's grip on one worker, with the verbs of ``subprocess.Popen``.

Signals go through a pidfd, so a recycled pid is never signalled.  The worker is a
child of the process holding the handle (it was re-parented there, see
``sandbox.zygote``), so ``poll`` and ``wait`` read its real exit status.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket

from sandbox import protocol
from sandbox.confine import cgroup
from sandbox.core_watch import CoreWatch
from sandbox.errors import ProtocolError, WorkerLost

# Workers a handle holds and will reap.  Any other exited child of the service that is
# not a zygote was a ready worker of a zygote that died before handing it over: see
# ZygoteClient.reap_orphans.
_held: set[int] = set()


def held_worker_pids() -> frozenset[int]:
    return frozenset(_held)


def describe_returncode(returncode: int | None) -> str:
    if returncode is None:
        return "ended for an unknown reason"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


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
        _held.add(pid)
        self.workspace = workspace
        self.uid = uid
        self.session_key = session_key
        self.quota = quota
        self.cgroup_parent = cgroup_parent
        self._cgroup_version: cgroup.CgroupVersion | str | None = None  # str: why none
        self._oom_counter: cgroup.OomKillCounter | None = None
        self._cores: CoreWatch | None = None
        self.hello: protocol.Hello | None = None
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._channel = channel
        self._channel.setblocking(False)
        self._max_frame = max_frame
        self._decoder = protocol.FrameDecoder(max_frame)
        self._frames: collections.deque[bytes] = collections.deque()
        # The channel is read by a callback that stays registered between runs.
        self._reading_on: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._channel_failure: Exception | None = None  # raised by every later receive
        self._cleaning: asyncio.Future[None] | None = None  # the one cleanup (see cleanup)
        self._exiting: asyncio.Future[None] | None = None  # see _exit_watch

    # -- the Popen verbs ---------------------------------------------------------------

    def poll(self) -> int | None:
        if self.returncode is not None or self._pidfd is None:
            return self.returncode
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # Not our child (the holder is not a subreaper): the pidfd still says
            # whether it ended, but not how.
            return None
        if result is None:
            return None
        if result.si_code == os.CLD_EXITED:
            self.returncode = result.si_status
        else:
            self.returncode = -result.si_status
        _held.discard(self.pid)  # reaped: the pid may be reused from now on
        return self.returncode

    async def wait(self, timeout: float | None = None) -> int | None:
        """The worker's exit status once it has ended; TimeoutError after ``timeout``."""
        if self.poll() is not None or self._pidfd is None:
            return self.returncode
        await asyncio.wait_for(asyncio.shield(self._exit_watch()), timeout)
        return self.poll()

    def _exit_watch(self) -> asyncio.Future[None]:
        """A future the pidfd resolves when the worker ends, shared by every wait.

        A reader registered for the pidfd by each wait would replace the one before it,
        whose wait then ran to its timeout; and a wait's own removal of its reader could,
        once a cleanup had closed the pidfd and the number was reused, remove another
        descriptor's reader.  One reader per handle is removed when it fires, or by
        ``_stop_watching_exit`` before the pidfd is closed.
        """
        assert self._pidfd is not None
        loop = asyncio.get_running_loop()
        watch = self._exiting
        if watch is not None and watch.get_loop() is loop:
            return watch
        self._stop_watching_exit()  # a watch of another loop (a closed one, say)
        watch = self._exiting = loop.create_future()
        pidfd = self._pidfd

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            if not watch.done():
                watch.set_result(None)

        loop.add_reader(pidfd, on_exit)
        return watch

    def _stop_watching_exit(self) -> None:
        """Remove the exit watch's reader; its waits return (not reaped, if so)."""
        watch, self._exiting = self._exiting, None
        if watch is None or watch.done():
            return
        loop = watch.get_loop()
        if loop.is_closed():
            return  # its selector, readers and waits are gone with it
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
        watch.set_result(None)

    def send_signal(self, signum: int) -> None:
        if self._pidfd is None or self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    def interrupt(self) -> None:
        self.send_signal(signal.SIGINT)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def hit_memory_limit(self) -> bool:
        """Whether the kernel's OOM killer acted in this worker's cgroup.

        Read it before ``cleanup``, which removes the cgroup and its counters.
        """
        version = self._cgroup()
        return version.oom_killed(self.session_key) if version else False

    def _cgroup(self) -> cgroup.CgroupVersion | None:
        # Resolved once: which cgroup version and trees hold this worker does not change.
        if self._cgroup_version is None:
            try:
                found = cgroup.select_version(self.cgroup_parent)
            except ValueError:
                found = "invalid cgroup parent"
            self._cgroup_version = found
        return (
            self._cgroup_version if isinstance(self._cgroup_version, cgroup.CgroupVersion) else None
        )

    def oom_kills(self) -> int:
        """Processes of this worker's session the OOM killer has ended so far."""
        if self._oom_counter is None:
            version = self._cgroup()
            if version is None:
                return 0
            try:
                self._oom_counter = cgroup.OomKillCounter(version.oom_kills_file(self.session_key))
            except OSError:
                return 0
        return self._oom_counter.read()

    @property
    def cores(self) -> CoreWatch:
        """Holds the session to all cores but one while it would fill them all."""
        if self._cores is None:
            self._cores = CoreWatch(self._cgroup(), self.session_key)
        return self._cores

    def kill_strays(self) -> None:
        """Kill every process of the session but the worker, from outside it.

        The worker sweeps its own descendants too, but that sweep runs in the
        interpreter user code controls; this one does not.
        """
        version = self._cgroup()
        if version is not None:
            with contextlib.suppress(OSError):
                version.kill_all_but(self.session_key, self.pid)

    def usage(self) -> dict[str, int]:
        """Memory, pids and CPU of the whole session, from its cgroup."""
        version = self._cgroup()
        return version.usage(self.session_key) if version else {}

    async def cleanup(self) -> None:
        """Kill the worker (its PID namespace dies with it), reap it, close everything.

        One cleanup runs per handle, whoever asks and however often: a session ending
        while its abandoned run is being ended asks twice.  Two waits would register
        the pidfd with the loop twice, and the second registration replaces the first's
        callback, so one of them waited out its whole deadline.  A caller cancelled
        meanwhile leaves the cleanup running to its end.
        """
        if self._cleanup_needed():
            # Before anything that awaits: a cancelled cleanup must not leave others idle.
            if self._cores is not None:
                self._cores.close()
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
        if self._channel_failure is None:
            self._fail(WorkerLost("the worker was stopped"))
        self._stop_reading()
        self._channel.close()
        if self._pidfd is not None:
            self._stop_watching_exit()  # before the number can be reused
            os.close(self._pidfd)
            self._pidfd = None
        # Not reaped within the wait: it is an orphan now, for ZygoteClient.reap_orphans.
        _held.discard(self.pid)
        if self._oom_counter is not None:
            self._oom_counter.close()
        version = self._cgroup()
        if version is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(version.kill_and_remove, self.session_key)

    # -- the channel -------------------------------------------------------------------

    async def receive(self) -> protocol.Hello | protocol.RunReply:
        """The worker's next frame, or WorkerLost / ProtocolError once the channel failed.

        Read by ``_on_readable``, which stays registered with the event loop between
        runs: a ``sock_recv`` per run added and removed the reader and made a recv
        that found nothing, about twice the user CPU of this in a bare round trip with
        a child process (measured: 20 to 39 against 12 to 18 us).
        """
        while not self._frames:
            if self._channel_failure is not None:
                raise self._channel_failure
            loop = asyncio.get_running_loop()
            if self._reading_on is not loop:
                self._stop_reading()  # registered with another loop (a closed one, say)
                loop.add_reader(self._channel.fileno(), self._on_readable)
                self._reading_on = loop
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return protocol.decode_worker_message(self._frames.popleft())

    def _on_readable(self) -> None:
        if self._frames or (self._waiter is None and self._decoder.holds_partial_frame):
            # Nobody asked for what was read last: the rest waits in the socket, so a
            # worker writing unasked, whole frames or the start of a long one, makes
            # the service hold one read's worth at most until a receive asks for more.
            self._stop_reading()
            return
        try:
            data = self._channel.recv(protocol.READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(WorkerLost(f"channel error: {exc.strerror}"))
            return
        if not data:
            self._fail(WorkerLost("channel closed"))
            return
        try:
            self._frames.extend(self._decoder.feed(data))
        except ProtocolError as exc:
            self._fail(exc)
            return
        if self._frames and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, failure: Exception) -> None:
        self._channel_failure = failure
        self._stop_reading()  # a closed channel stays readable: stop being told so
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _stop_reading(self) -> None:
        loop, self._reading_on = self._reading_on, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._channel.fileno())

    def hang_up(self) -> None:
        """End the channel from this side: a pending ``receive`` fails at once.

        A killed worker's end closes only when its whole PID namespace is gone; this
        does not wait for that.
        """
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_RDWR)

    async def send(self, message: protocol.RunPython | protocol.RunCommand) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(self._channel, protocol.encode(message, self._max_frame))
        except OSError as exc:
            raise WorkerLost(f"channel error: {exc.strerror}") from None

    async def read_hello(self, timeout: float) -> protocol.Hello:
        try:
            message = await asyncio.wait_for(self.receive(), timeout)
        except TimeoutError:
            raise WorkerLost(f"the worker sent no hello within {timeout:g} s") from None
        if not isinstance(message, protocol.Hello):
            raise ProtocolError("the worker did not start with a hello")
        self.hello = message
        return message
