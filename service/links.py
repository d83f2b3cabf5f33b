"""Signed, expiring links to workspace files, usable without the bearer header.

A chat client renders a plot from a plain URL; the signature binds the session, the
path and the expiry time, so a link cannot be edited into another file's link.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import quote

LINK_TTL_S = 3600


class LinkSigner:
    def __init__(self, public_url: str, key: bytes | None = None, ttl_s: int = LINK_TTL_S) -> None:
        self._public_url = public_url.rstrip("/")
        # A fresh key per process: links die with the process that issued them,
        # as do the sessions they point into.
        self._key = key or secrets.token_bytes(32)
        self._ttl_s = ttl_s

    def _signature(self, session_id: str, path: str, expires: int) -> str:
        # surrogateescape: a name that is not UTF-8 is signed as its bytes.
        message = f"{session_id}\n{path}\n{expires}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url(self, session_id: str, path: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + self._ttl_s)
        signature = self._signature(session_id, path, expires)
        return (
            f"{self._public_url}/files/{quote(session_id)}/"
            f"{quote(path, errors='surrogateescape')}"
            f"?expires={expires}&signature={signature}"
        )

    def verify(self, session_id: str, path: str, expires: int, signature: str) -> bool:
        if expires < time.time():
            return False
        expected = self._signature(session_id, path, expires)
        return hmac.compare_digest(expected, signature)
