"""The Jupyter anchor: an ipykernel driven by jupyter_client, as ChatGPT's interpreter and
E2B drive theirs.  Optional: ``pip install -e '.[bench]'``; absent, the run skips it.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

FIRST_RESULT = "import pandas as pd; pd.__version__"


def available() -> bool:
    try:
        import ipykernel  # noqa: F401
        import jupyter_client  # noqa: F401
    except ImportError:
        return False
    return True


def environment(runtime: str) -> dict[str, str]:
    """The kernels' environment: connection files and IPython's state under runtime."""
    return {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": runtime,
        "IPYTHONDIR": os.path.join(runtime, "ipython"),
        "MPLBACKEND": "Agg",
        # What the zygote sets for its workers: one BLAS thread.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


class Kernel:
    """One kernel and its blocking client."""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client.manager import start_new_kernel

        # stderr: the kernel's warning about plain-TCP transport, once per kernel.
        self.manager, self.client = start_new_kernel(
            startup_timeout=120, kernel_name="python3", env=env, stderr=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        process = self.manager.provisioner.process  # type: ignore[union-attr]
        return int(process.pid)

    def execute_until_result(self, code: str, timeout: float = 60.0) -> tuple[float, Any]:
        """Send code; return (seconds until its execute_result arrived, the value).

        The clock stops when the client holds the value (iopub execute_result), the
        earliest moment a caller could use it; the execute_reply and the idle status
        that follow are drained outside the measured time.
        """
        started = time.perf_counter()
        msg_id = self.client.execute(code)
        value: Any = None
        took: float | None = None
        idle = False
        while not idle:
            message = self.client.get_iopub_msg(timeout=timeout)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "execute_result" and took is None:
                took = time.perf_counter() - started
                value = message["content"]["data"].get("text/plain")
            elif kind == "error":
                raise RuntimeError(f"the kernel failed: {message['content'].get('evalue')}")
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
        reply = self.client.get_shell_msg(timeout=timeout)
        assert reply["content"]["status"] == "ok", reply["content"]
        if took is None:
            raise RuntimeError(f"no execute_result for {code!r}")
        return took, value

    def execute_until_reply(self, code: str, timeout: float = 60.0) -> float:
        """Send code; return seconds until its execute_reply arrived on the shell channel.

        The cheapest round trip jupyter_client offers (about 2x faster here than waiting
        for the value on iopub), so the ratio against it is the strict one.  The iopub
        messages are drained afterwards, outside the measured time.
        """
        started = time.perf_counter()
        msg_id = self.client.execute(code)
        reply = self.client.get_shell_msg(timeout=timeout)
        took = time.perf_counter() - started
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok", reply["content"]
        while True:
            message = self.client.get_iopub_msg(timeout=timeout)
            if (
                message["parent_header"].get("msg_id") == msg_id
                and message["msg_type"] == "status"
                and message["content"]["execution_state"] == "idle"
            ):
                return took

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
