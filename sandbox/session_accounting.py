"""What one session's processes use and suffer, from its cgroup: memory, OOM kills,
CPU and pids; and the sweep of every process but the worker."""

from __future__ import annotations

import asyncio
import contextlib

from sandbox.confine import cgroup
from sandbox.core_watch import CoreWatch


class SessionAccounting:
    def __init__(self, session_key: str, worker_pid: int, cgroup_parent: str) -> None:
        self.session_key = session_key
        self._worker_pid = worker_pid
        self.cgroup_parent = cgroup_parent
        self._version: cgroup.CgroupVersion | str | None = None  # str: why none
        self._oom_counter: cgroup.OomKillCounter | None = None
        self._cores: CoreWatch | None = None

    def _cgroup(self) -> cgroup.CgroupVersion | None:
        # Resolved once: which cgroup version and trees hold this session does not change.
        if self._version is None:
            try:
                found = cgroup.select_version(self.cgroup_parent)
            except ValueError:
                found = "invalid cgroup parent"
            self._version = found
        return self._version if isinstance(self._version, cgroup.CgroupVersion) else None

    def hit_memory_limit(self) -> bool:
        """Whether the kernel's OOM killer acted in this session's cgroup.

        Read it before ``remove``, which removes the cgroup and its counters.
        """
        version = self._cgroup()
        return version.oom_killed(self.session_key) if version else False

    def oom_kills(self) -> int:
        """Processes of this session the OOM killer has ended so far."""
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
                version.kill_all_but(self.session_key, self._worker_pid)

    def usage(self) -> dict[str, int]:
        """Memory, pids and CPU of the whole session, from its cgroup."""
        version = self._cgroup()
        return version.usage(self.session_key) if version else {}

    def stop_watching_cores(self) -> None:
        if self._cores is not None:
            self._cores.close()

    async def remove(self) -> None:
        """Kill what is left of the session and remove its cgroup."""
        if self._oom_counter is not None:
            self._oom_counter.close()
        version = self._cgroup()
        if version is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(version.kill_and_remove, self.session_key)
