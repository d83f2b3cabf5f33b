"""Which sessions exist, whose they are, and when they end.

A session belongs to the caller it was made for (a tenant, and inside it a conversation
or the tenant itself, see service/callers.py); any other caller asking for it gets the
same 404 as for an id that never existed.  Ended sessions are remembered (bounded) so
their caller gets a 410 rather than a confusing 404.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sandbox import Session, ZygoteClient, workspaces
from sandbox.egress.client import ReportSink, give_network
from sandbox.errors import SandboxError
from service.callers import Caller
from service.errors import (
    QuotaExceeded,
    SandboxUnavailable,
    SessionExpired,
    SessionNotFound,
)

log = logging.getLogger("codesherpa.sessions")

EXPIRED_MEMORY = 10_000
REAP_INTERVAL_S = 5.0


@dataclass
class SessionRecord:
    session_id: str
    caller: Caller  # the one it was made for; every other caller is told it does not exist
    session: Session
    implicit_key: str | None = None
    created_at: float = field(default_factory=time.time)

    @property
    def tenant(self) -> str:
        return self.caller.tenant

    def expires_at(self) -> float:
        sessions = self.session.policy.sessions
        return min(
            self.created_at + sessions.max_lifetime_s, self.session.last_used + sessions.idle_ttl_s
        )


def new_session_id() -> str:
    # 192 random bits: unguessable, and URL-safe for file routes.
    return secrets.token_urlsafe(24)


class SessionRegistry:
    def __init__(self, zygote: ZygoteClient, on_egress: ReportSink | None = None) -> None:
        self.zygote = zygote
        self._on_egress = on_egress
        self._hear_egress(zygote)
        self._sessions: dict[str, SessionRecord] = {}
        self._implicit: dict[tuple[Caller, str], str] = {}
        self._expired: OrderedDict[str, Caller] = OrderedDict()
        self._creating = asyncio.Lock()
        self._retired: list[ZygoteClient] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def for_tenant(self, tenant: str) -> list[SessionRecord]:
        """Every session of the tenant, whichever of its callers it was made for."""
        return [record for record in self._sessions.values() if record.tenant == tenant]

    def for_caller(self, caller: Caller) -> list[SessionRecord]:
        now = time.time()
        return [
            record
            for record in self._sessions.values()
            if record.caller == caller and record.expires_at() > now
        ]

    def find(self, session_id: str) -> SessionRecord | None:
        """A live session by id alone, for routes whose credential is a signed link."""
        record = self._sessions.get(session_id)
        if record is None or record.expires_at() <= time.time():
            return None
        return record

    def get(self, caller: Caller, session_id: str) -> SessionRecord:
        """The caller's session: the one check every route that names a session passes."""
        record = self._sessions.get(session_id)
        if record is not None and record.caller == caller:
            if record.expires_at() <= time.time():
                raise SessionExpired("the session expired", _NEW_SESSION_HINT)
            return record
        if self._expired.get(session_id) == caller:
            raise SessionExpired("the session expired or was ended", _NEW_SESSION_HINT)
        raise SessionNotFound("no such session", _NEW_SESSION_HINT)

    async def create(self, caller: Caller, implicit_key: str | None = None) -> SessionRecord:
        policy = self.zygote.policy.sessions
        async with self._creating:
            # A session ended by its clock frees its slot now, not at the reaper's next round.
            try:
                await self.end_expired()
            except Exception:  # another session's cleanup must not refuse this one
                log.exception("cannot end an expired session")
            if len(self._sessions) >= policy.max_total:
                raise QuotaExceeded(
                    "the service is at its session capacity",
                    "Delete a session you no longer need, or retry later.",
                    retry_after_s=30,
                )
            if len(self.for_tenant(caller.tenant)) >= policy.max_per_tenant:
                raise QuotaExceeded(
                    f"this tenant already holds {policy.max_per_tenant} sessions",
                    "Delete a session you no longer need (DELETE /sessions/{id}).",
                    retry_after_s=30,
                )
            try:
                session = await Session.start(self.zygote)
            except SandboxError as exc:
                log.error("cannot start a session: %s", exc)
                raise SandboxUnavailable(
                    "the sandbox cannot start a session right now", "Retry in a few seconds."
                ) from None
            record = SessionRecord(new_session_id(), caller, session, implicit_key)
            give_network(session, caller.tenant, record.session_id)
            self._sessions[record.session_id] = record
            if implicit_key is not None:
                self._implicit[(caller, implicit_key)] = record.session_id
            return record

    def _hear_egress(self, zygote: ZygoteClient) -> None:
        if zygote.egress is not None and self._on_egress is not None:
            zygote.egress.report_to(self._on_egress)

    async def resolve(
        self, caller: Caller, session_id: str | None, implicit_key: str = "default"
    ) -> SessionRecord:
        """The explicit session, or the caller's implicit one (created on first use).

        ``implicit_key`` tells a caller's implicit sessions apart: one per MCP session.
        """
        if session_id is not None:
            return self.get(caller, session_id)
        key = (caller, implicit_key)
        existing = self._implicit.get(key)
        if existing is not None and existing in self._sessions:
            record = self._sessions[existing]
            if record.expires_at() > time.time():
                return record
            await self.end(record)
        return await self.create(caller, implicit_key=implicit_key)

    async def replace_zygote(self, zygote: ZygoteClient) -> None:
        """New sessions come from ``zygote``; running ones keep their own until they end."""
        previous = self.zygote
        self.zygote = zygote
        self._hear_egress(zygote)
        self._retired.append(previous)
        await self._stop_unused_zygotes()

    async def _stop_unused_zygotes(self) -> None:
        in_use = {id(record.session.zygote) for record in self._sessions.values()}
        for zygote in [z for z in self._retired if id(z) not in in_use]:
            self._retired.remove(zygote)
            await asyncio.to_thread(zygote.stop)

    async def end(self, record: SessionRecord) -> None:
        if self._sessions.pop(record.session_id, None) is None:
            return
        if record.implicit_key is not None:
            self._implicit.pop((record.caller, record.implicit_key), None)
        self._expired[record.session_id] = record.caller
        while len(self._expired) > EXPIRED_MEMORY:
            self._expired.popitem(last=False)
        await record.session.close()
        # Off the loop: a workspace is a tree the session shaped, up to its inode quota.
        await asyncio.to_thread(workspaces.remove, record.session.workspace)
        if self._retired:
            await self._stop_unused_zygotes()

    async def end_expired(self) -> int:
        now = time.time()
        expired = [
            r for r in self._sessions.values() if r.expires_at() <= now and not r.session.busy
        ]
        for record in expired:
            await self.end(record)
        return len(expired)

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                ended = await self.end_expired()
                # Ready workers of a zygote that died exit; nothing else collects them.
                orphans = await asyncio.to_thread(self.zygote.reap_orphans)
            except Exception:
                log.exception("session reaper failed")
                continue
            if ended:
                log.info("ended %d expired session(s)", ended)
            if orphans:
                log.info("reaped %d worker(s) left by a zygote that died", orphans)

    async def close_all(self) -> None:
        for record in list(self._sessions.values()):
            await self.end(record)
        for zygote in self._retired:
            await asyncio.to_thread(zygote.stop)
        self._retired.clear()


_NEW_SESSION_HINT = (
    "Start a new session (POST /sessions, or omit session_id to use your implicit one); "
    "variables from the old session are gone, re-run your setup code."
)
