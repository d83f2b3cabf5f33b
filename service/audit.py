"""The audit log: one JSON line per run, never holding a token or the code itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import sys
import time
from typing import Any, TextIO

from pydantic_core import to_json

from sandbox.egress.client import EgressReport


def open_private_log(path: str) -> TextIO:
    """Append to ``path``, which only its owner can read: created 0600, made so if not.

    The log names tenants, sessions and what they ran; a link planted at its path is
    refused rather than followed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{path}: the audit log must be a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logging.getLogger("codesherpa").warning(
                "%s was open to others (mode %o); it is now private (0600)", path, mode & 0o777
            )
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


class AuditLog:
    """Writes to a file (appending), to stdout (``-``), or nowhere (empty).

    Inside an event loop a run's line is written once the loop has finished the step
    that recorded it, which sends that run's reply first; the lines recorded in one
    step go out in one write.  Writing a line (hash, timestamp, encoding, write and
    flush) is a large share of the service's own work for a run (docs/decisions.md), and
    the client should not wait for it.  A line is lost only if the process dies within
    that step.  Outside a loop (a script, a test) each line is written at once.
    """

    def __init__(self, destination: str) -> None:
        self._stream: TextIO | None = None
        self._owned = False
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._write_scheduled_on: asyncio.AbstractEventLoop | None = None
        self._second: tuple[int, str] = (-1, "")  # the last timestamp's second, formatted
        if destination == "-":
            self._stream = sys.stdout
        elif destination:
            self._stream = open_private_log(destination)
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
        owner: str | None = None,
    ) -> None:
        if self._stream is None:
            return
        fields = {
            "tenant": tenant,
            "owner": owner,
            "session": session_id,
            "kind": kind,
            "text": text,
            "status": status,
            "duration_ms": duration_ms,
            "limit": limit,
            "denied_rule": denied_rule,
            "policy": policy,
        }
        self._pending.append((time.time(), fields))
        self._schedule_write()

    def record_egress(self, report: EgressReport) -> None:
        """One connection through the egress proxy, allowed or refused."""
        if self._stream is None:
            return
        fields = {"kind": "egress", **report.model_dump()}
        self._pending.append((time.time(), fields))
        self._schedule_write()

    def _schedule_write(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pending()
            return
        if self._write_scheduled_on is not loop:  # else this line goes with that write
            self._write_scheduled_on = loop
            loop.call_soon(self._write_pending)

    def _write_pending(self) -> None:
        self._write_scheduled_on = None
        pending, self._pending = self._pending, []
        if self._stream is None or not pending:
            return
        log = logging.getLogger("codesherpa")
        lines = []
        for at, fields in pending:
            try:
                lines.append(self._line(at, fields))
            except Exception:  # one line that cannot be encoded must not take the rest
                log.exception("cannot encode an audit line of session %s", fields["session"])
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed under us
            log.exception("cannot write %d audit line(s)", len(lines))

    def _line(self, at: float, fields: dict[str, Any]) -> str:
        second = int(at)
        if self._second[0] != second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + "Z"
            self._second = (second, stamp)
        if fields["kind"] == "egress":
            # tenant, session, host, port, address, bytes both ways, verdict, key.
            return json.dumps({"time": self._second[1], **fields}, separators=(",", ":")) + "\n"
        text: str = fields["text"]
        entry = {
            "time": self._second[1],
            "tenant": fields["tenant"],
            "owner": fields["owner"],
            "session": fields["session"],
            "kind": fields["kind"],
            "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
            "status": fields["status"],
            "duration_ms": round(fields["duration_ms"], 3),
            "limit": fields["limit"],
            "denied_rule": fields["denied_rule"],
            "policy": fields["policy"],
        }
        # pydantic-core's encoder: compact like json.dumps with tight separators, and
        # faster (docs/decisions.md).
        line = to_json(entry).decode()
        if not line.isascii():
            # Escaped, so that the line can be written whatever the stream's encoding
            # (stdout's may be ASCII), and a batch never fails on one line's characters.
            line = json.dumps(entry, separators=(",", ":"))
        return line + "\n"

    def close(self) -> None:
        self._write_pending()
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream = None
