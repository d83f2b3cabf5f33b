"""How many connections the service may hold: the descriptor limit, less what its own work needs.

Every open connection is one descriptor.  The service needs others for its own work:
each session's pipes and pidfd (about three), files being uploaded or downloaded, the
zygote's channel, the audit log, the listening socket, Python's own.  If connections
may take them all, a flood of idle connections makes every session fail; worse, the
accept loop then fails with EMFILE on every try.  So the default cap is what remains of
the descriptor limit after

* a reserve for that work: ``BASE_RESERVE`` plus ``FDS_PER_SESSION`` for each session
  the policy allows (``sessions.max_total``), and
* the accept batch: asyncio accepts up to ``backlog`` connections in one go before any
  of them reaches the cap's check, so that many can be open for a moment beyond it, and
* the refused pool: connections told 503 while they finish sending their request.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

BASE_RESERVE = 256
FDS_PER_SESSION = 4
# uvicorn's default listen backlog, and the most asyncio accepts in one loop iteration.
MAX_ACCEPT_BATCH = 2048
MIN_ACCEPT_BATCH = 16
# Connections over the cap that wait for their request head to be answered 503.
REFUSED_POOL = 16
# Below this the service would be no use to anyone: refuse to start instead.
MIN_CONNECTIONS = 16
# Linux's default fs.nr_open, the most RLIMIT_NOFILE can be when the hard limit is unlimited.
NR_OPEN_DEFAULT = 1_048_576


@dataclass(frozen=True)
class ConnectionBudget:
    fd_limit: int
    reserve: int
    accept_batch: int
    max_connections: int

    def describe(self) -> str:
        return (
            f"{self.max_connections} connections; descriptor limit {self.fd_limit}, "
            f"{self.reserve} kept for sessions and files, accept batch {self.accept_batch}"
        )

    def overcommitted(self) -> bool:
        """True when the cap lets connections take descriptors the reserve should keep."""
        return self.max_connections + self.accept_batch + REFUSED_POOL + self.reserve > (
            self.fd_limit
        )


def default_reserve(max_sessions: int) -> int:
    return BASE_RESERVE + FDS_PER_SESSION * max_sessions


def connection_budget(
    fd_limit: int,
    max_sessions: int,
    reserve: int | None = None,
    max_connections: int | None = None,
) -> ConnectionBudget:
    """The cap on connections; ValueError with a sentence if the limit leaves too little."""
    kept = default_reserve(max_sessions) if reserve is None else reserve
    accept_batch = max(MIN_ACCEPT_BATCH, min(MAX_ACCEPT_BATCH, fd_limit // 8))
    if max_connections is None:
        max_connections = fd_limit - kept - accept_batch - REFUSED_POOL
        if max_connections < MIN_CONNECTIONS:
            raise ValueError(
                f"the descriptor limit ({fd_limit}) leaves {max(max_connections, 0)} "
                f"connections after {kept} kept for sessions and files and an accept batch "
                f"of {accept_batch}: raise the hard limit (ulimit -Hn, LimitNOFILE=) "
                "or set CODESHERPA_FD_RESERVE lower"
            )
    return ConnectionBudget(fd_limit, kept, accept_batch, max_connections)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return NR_OPEN_DEFAULT if soft == resource.RLIM_INFINITY else soft
