"""A worker the zygote made and holds until the service takes it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sandbox import protocol


@dataclass
class ReadyWorker:
    pid: int
    pidfd: int
    channel: socket.socket
    workspace: str
    uid: int | None
    session_key: str
    quota: bool
    egress_listener: socket.socket | None = None

    def fds(self) -> list[int]:
        listener = [] if self.egress_listener is None else [self.egress_listener.fileno()]
        return [self.channel.fileno(), self.pidfd, *listener]

    def describe(self) -> protocol.WorkerMade:
        return protocol.WorkerMade(
            pid=self.pid,
            workspace=self.workspace,
            uid=self.uid,
            session_key=self.session_key,
            quota=self.quota,
        )

    def close(self) -> None:
        self.channel.close()
        os.close(self.pidfd)
        if self.egress_listener is not None:
            self.egress_listener.close()
