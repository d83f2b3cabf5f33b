"""Log a storm of the same failure as one line every few seconds, with a count of the rest.

When descriptors run out, asyncio's accept loop reports EMFILE once per accept it
tries (up to the listen backlog each loop iteration, a traceback each), hundreds of
megabytes a minute (docs/decisions.md).  uvloop reports the same failure under another
message.  Both go through the event loop's exception handler to the ``asyncio`` logger
with the ``OSError`` attached, so the filter recognises the errno rather than a message.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_ERROR_INTERVAL_S = 5.0


def is_out_of_resources(record: logging.LogRecord) -> bool:
    if not record.exc_info:
        return False
    exc = record.exc_info[1]
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


class RateLimitedFilter(logging.Filter):
    """Let at most one matching record through per interval, shortened to one line."""

    def __init__(
        self,
        matches: Callable[[logging.LogRecord], bool] = is_out_of_resources,
        interval_s: float = ACCEPT_ERROR_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.matches = matches
        self.interval_s = interval_s
        self.clock = clock
        self.suppressed = 0
        self._last_emitted: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.matches(record):
            return True
        now = self.clock()
        if self._last_emitted is not None and now - self._last_emitted < self.interval_s:
            self.suppressed += 1
            return False
        line = str(record.msg).split("\n", 1)[0]
        if record.exc_info and record.exc_info[1] is not None:
            line += f": {record.exc_info[1]}"
        if self.suppressed:
            line += (
                f" ({self.suppressed} more like it in the last "
                f"{now - (self._last_emitted or now):.0f} s not logged)"
            )
        # One line, no traceback: the traceback is the event loop's, the same each time.
        record.msg, record.args = line, ()
        record.exc_info, record.exc_text = None, None
        self._last_emitted = now
        self.suppressed = 0
        return True


def limit_accept_error_logs(interval_s: float = ACCEPT_ERROR_INTERVAL_S) -> RateLimitedFilter:
    """Install the filter on the logger the event loop reports accept errors to."""
    limiter = RateLimitedFilter(interval_s=interval_s)
    logging.getLogger("asyncio").addFilter(limiter)
    return limiter
