"""Index URLs as logs and error messages may show them: without what may be a secret.

A URL's userinfo (``user:token@``) and its query string are where an index's
credentials go; the service never writes either to a log, a policy error or a
session's pip command line.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

_HIDDEN = "***"


def _parts(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _netloc(parts: SplitResult) -> str:
    """The host and port of ``parts``, its userinfo left out."""
    return parts.netloc.rpartition("@")[2]


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries userinfo or a query string (where tokens go)."""
    parts = _parts(url)
    if parts is None:
        return "@" in url or "?" in url
    return "@" in parts.netloc or bool(parts.query)


def without_credentials(url: str) -> str:
    """``url`` with its userinfo, query string and fragment dropped."""
    parts = _parts(url)
    if parts is None:
        return ""
    return urlunsplit((parts.scheme, _netloc(parts), parts.path, "", ""))


def redacted(url: str) -> str:
    """``url`` fit for a log: its userinfo and query string shown as ``***``."""
    parts = _parts(url)
    if parts is None:
        return _HIDDEN
    netloc = _netloc(parts)
    if "@" in parts.netloc:
        netloc = f"{_HIDDEN}@{netloc}"
    query = _HIDDEN if parts.query else ""
    fragment = _HIDDEN if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
