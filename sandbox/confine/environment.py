"""Layer 8: an allowlisted environment and no inherited descriptor but the channel."""

from __future__ import annotations

import os

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.egress.address import proxy_environment

# closerange uses close_range(2), so a high ceiling costs nothing.
_FD_CEILING = 1 << 20

SESSION_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "Agg",
    # One thread per numeric library: the session's process limit counts threads.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TERM": "dumb",
}


def session_environment(home: str, egress_proxy: bool = False) -> dict[str, str]:
    """The whole environment of a session; with the egress proxy, the variables that
    point urllib, requests, httpx and pip at it (its only way out)."""
    proxy = proxy_environment() if egress_proxy else {}
    return {
        **SESSION_ENVIRONMENT,
        **proxy,
        "HOME": home,
        "TMPDIR": "/tmp",
        "MPLCONFIGDIR": "/tmp",
    }


class _Prepared:
    environment = False


def _replace_environment(home: str, egress_proxy: bool) -> None:
    os.environ.clear()
    os.environ.update(session_environment(home, egress_proxy))


def prepare(egress_proxy: bool = False) -> None:
    """In the zygote, once it needs its own environment no more: the sessions' one.

    Replacing ``os.environ`` runs enough of ``os.py`` to copy shared pages in a fork;
    done here, a worker only sets its HOME.
    """
    _replace_environment("/", egress_proxy)
    _Prepared.environment = True


def apply(spec: WorkerSpec) -> LayerStatus:
    if _Prepared.environment:
        os.environ["HOME"] = os.getcwd()
    else:
        _replace_environment(os.getcwd(), spec.policy.network.enabled)
    os.closerange(3, spec.channel_fd)
    os.closerange(spec.channel_fd + 1, _FD_CEILING)
    for fd in (0, 1, 2):
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    return LayerStatus(
        "environment",
        True,
        f"{len(os.environ)} allowlisted variables; fds 0-2 and the channel only",
    )
