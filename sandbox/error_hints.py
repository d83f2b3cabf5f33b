"""What the exception that ended a cell says beyond its text, read in the worker.

A policy refusal of a magic line (``sandbox/magics.py``) makes the run ``denied``
with the rule's name.  A few errors carry facts only the live objects hold, which
the service's suggestion rules then put in words: the columns of the DataFrame a
KeyError came from, the program a subprocess could not execute, a connection that
failed because there is no network.  Everything here is bounded and can fail: the
objects are the user's, and nothing they do may cost the session its reply.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import sys
import traceback
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import get_args

from sandbox.commands import DeniedRule
from sandbox.magics import CommandNotAllowed, PackageOptionRefused, PackagesOff, UsageError
from sandbox.protocol import MAX_HINT_NAME_CHARS, MAX_HINT_NAMES, ErrorHint, escape_surrogates

# What a connection attempt meets without a network: no address family (seccomp
# refuses inet sockets), no route, nobody listening.
_NETWORK_ERRNOS = frozenset(
    {errno.EAFNOSUPPORT, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH, errno.ECONNREFUSED}
)
# How far down an exception's causes (``raise ... from``, "during handling") to look.
_MAX_CHAIN = 16


@dataclass(frozen=True)
class FailureNotes:
    denied_rule: DeniedRule | None = None
    error: str | None = None  # replaces the error text (a refusal needs no traceback)
    hint: ErrorHint | None = None


def failure_notes(exc: BaseException | None) -> FailureNotes:
    if exc is None:
        return FailureNotes()
    try:
        refusal = _refusal(exc)
        if refusal is not None:
            return refusal
        return FailureNotes(hint=_hint(exc))
    except Exception:  # noqa: BLE001 - a user's object broke the reading: say nothing more
        return FailureNotes()


def _refusal(exc: BaseException) -> FailureNotes | None:
    """A magic line's refusal or misuse, told without the magics' own frames."""
    # Exact types: a subclass is the user's own exception, however it is named.
    if type(exc) is UsageError:
        return FailureNotes(error=_cell_error(exc))
    if type(exc) not in (CommandNotAllowed, PackagesOff, PackageOptionRefused):
        return None
    rule = getattr(exc, "rule", None)
    for known in get_args(DeniedRule):
        if rule == known:
            return FailureNotes(denied_rule=known, error=_cell_error(exc))
    return None


def _cell_error(exc: BaseException) -> str:
    cell_frames = [
        entry
        for entry in traceback.extract_tb(exc.__traceback__)
        if entry.filename.startswith("<cell-")
    ]
    where = "".join(traceback.format_list(cell_frames)).rstrip()
    return f"{type(exc).__name__}: {exc}" + (f"\n{where}" if where else "")


def _hint(exc: BaseException) -> ErrorHint | None:
    if isinstance(exc, KeyError):
        columns = _dataframe_columns(exc)
        if columns is not None:
            return _names_hint("dataframe-columns", columns)
    if (
        isinstance(exc, PermissionError | FileNotFoundError)
        and exc.filename is not None
        and _passes_through(exc, "subprocess", "_execute_child")
    ):
        return _names_hint("program-refused", [os.fsdecode(exc.filename)])
    if any(_is_network_failure(link) for link in _chain(exc)):
        return ErrorHint(kind="network")
    return None


def _dataframe_columns(exc: KeyError) -> Collection[object] | None:
    """The columns of the DataFrame whose indexing raised (``df[...]``, ``df.loc[...]``)."""
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return None
    for frame, _line in traceback.walk_tb(exc.__traceback__):
        # Only pandas' own frames: their ``self`` is pandas' object, not a user's class.
        if not str(frame.f_globals.get("__name__", "")).startswith("pandas."):
            continue
        owner = frame.f_locals.get("self")
        target = owner if isinstance(owner, pandas.DataFrame) else getattr(owner, "obj", None)
        if isinstance(target, pandas.DataFrame):
            return target.columns  # type: ignore[no-any-return]
    return None


def _names_hint(kind: str, names: Collection[object]) -> ErrorHint:
    shown = [_bounded(name) for name in itertools.islice(names, MAX_HINT_NAMES)]
    return ErrorHint.model_validate({"kind": kind, "names": shown, "total": len(names)})


def _bounded(name: object) -> str:
    # Cut before escaping (the name may be huge), and after (escapes lengthen it).
    return escape_surrogates(str(name)[:MAX_HINT_NAME_CHARS])[:MAX_HINT_NAME_CHARS]


def _passes_through(exc: BaseException, module: str, function: str) -> bool:
    return any(
        frame.f_code.co_name == function and frame.f_globals.get("__name__") == module
        for frame, _line in traceback.walk_tb(exc.__traceback__)
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _is_network_failure(exc: BaseException) -> bool:
    if isinstance(exc, socket.gaierror | socket.herror):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS
