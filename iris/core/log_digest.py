"""Lines an operator can read during a flood: at most one per ``every`` seconds for one kind of
event (a destination's retries, its dead letters of one reason), summing up the rest. What a
burst leaves unsaid is written by ``flush_due``, which the worker calls every ``EVERY`` s, so
that the sum is written even when nothing follows the burst."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

EVERY = 10.0  # seconds between two lines of one digest
_ALL: weakref.WeakSet[LogDigest] = weakref.WeakSet()  # for ``flush_due``


class LogDigest:
    """``first`` is logged with (count, detail) at once; later ones, at most every ``every``
    seconds, as ``summary`` with (count since the last line, seconds, latest detail)."""

    def __init__(self, logger: logging.Logger, level: int, first: str, summary: str, *,
                 every: float = EVERY, extra: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._level = level
        self._first = first
        self._summary = summary
        self._every = every
        self._extra = extra
        self._clock = clock
        self._count = 0  # added since the last line
        self._detail = ""  # the latest detail added
        self._next = 0.0  # when the next line may be written
        self._since = 0.0  # when the last line was written (0: never)
        _ALL.add(self)

    def add(self, count: int, detail: str) -> None:
        self._count += count
        self._detail = detail
        self.flush()

    def flush(self) -> None:
        """Write what was added since the last line, if anything was and its time has come."""
        now = self._clock()
        if not self._count or now < self._next:
            return
        if self._since:
            self._logger.log(self._level, self._summary, self._count, now - self._since,
                             self._detail, extra=self._extra)
        else:
            self._logger.log(self._level, self._first, self._count, self._detail,
                             extra=self._extra)
        self._count, self._since, self._next = 0, now, now + self._every


def flush_due() -> None:
    """``flush`` every digest of this process."""
    for digest in list(_ALL):
        digest.flush()
