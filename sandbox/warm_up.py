"""Run a worker's per-request code in the zygote, before it forks any worker.

CPython 3.11 rewrites a function's bytecode in place once it has run a few times (the
specialising interpreter of PEP 659), and the compiler, pydantic-core and the codecs
fill caches the first time they are used.  Done in a worker, each of those writes
copies a page the worker shares with the zygote; done here once, before the fork, the
pages stay shared (what that saves per idle session: docs/decisions.md).

Only code whose effects stay within its own objects runs here: no descriptor is
redirected, no thread started, no child reaped, and the cells it runs leave nothing in
the zygote's modules (their lines are dropped from ``linecache``).
"""

from __future__ import annotations

import linecache

from sandbox import protocol, workspace
from sandbox.executor import PythonSession
from sandbox.output import BoundedBuffer
from sandbox.policy import Policy
from sandbox.worker import build_reply

# More than the runs after which CPython 3.11 specialises a function's bytecode.
ROUNDS = 16
# A value, statements then a value, and an import of a module every zygote has.
CELLS = ("1 + 1", "x = 21\nx * 2", "import os\nos.sep")


def warm_up(policy: Policy, empty_directory: str) -> None:
    """Serve ``ROUNDS`` rounds of ``CELLS`` as a worker would, short of its channel."""
    session = PythonSession()
    decoder = protocol.FrameDecoder()
    keep = policy.limits.output_chars
    run_id = 0
    for _ in range(ROUNDS):
        for cell in CELLS:
            run_id += 1
            frame = protocol.encode(protocol.RunPython(run_id=run_id, code=cell))
            for payload in decoder.feed(frame):
                request = protocol.decode_request(payload)
                assert isinstance(request, protocol.RunPython)
                before = workspace.snapshot(empty_directory)
                outcome = session.run(request.code)
                reply = build_reply(
                    run_id,
                    keep,
                    session.execution_count,
                    BoundedBuffer(keep),
                    BoundedBuffer(keep),
                    status="error" if outcome.error else "ok",
                    value=outcome.value,
                    error=outcome.error,
                    exc_type=outcome.exc_type,
                    files=workspace.changed_files(before, workspace.snapshot(empty_directory)),
                    outputs=session.outputs,
                    value_at=session.value_at,
                )
                protocol.encode(reply)
    for filename in [name for name in linecache.cache if name.startswith("<cell-")]:
        del linecache.cache[filename]
