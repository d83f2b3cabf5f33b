"""A worker as a process: a pidfd and the verbs of ``subprocess.Popen``.

Signals go through the pidfd, so a recycled pid is never signalled.  The worker is a
child of the process holding it (it was re-parented there, see ``sandbox.zygote``), so
``poll`` and ``wait`` read its real exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

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


class WorkerProcess:
    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        _held.add(pid)
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._exiting: asyncio.Future[None] | None = None  # see _exit_watch

    @property
    def pidfd(self) -> int | None:
        """The pidfd, until released; lent (a copy goes with SCM_RIGHTS), never closed."""
        return self._pidfd

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
        once the pidfd was closed and the number reused, remove another descriptor's
        reader.  One reader per process is removed when it fires, or by
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

    def release(self) -> None:
        """Close the pidfd; an unreaped worker is an orphan now (ZygoteClient.reap_orphans)."""
        if self._pidfd is not None:
            self._stop_watching_exit()  # before the number can be reused
            os.close(self._pidfd)
            self._pidfd = None
        _held.discard(self.pid)
