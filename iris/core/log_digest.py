"""Lines an operator can read during a flood: at most one per ``every`` seconds for one kind of
event (a destination's retries, its dead letters of one reason), summing up the rest."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

EVERY = 10.0  # seconds between two lines of one digest


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
        self._count = 0
        self._next = 0.0  # when the next line may be written
        self._since = 0.0  # when the last line was written (0: never)

    def add(self, count: int, detail: str) -> None:
        now = self._clock()
        self._count += count
        if now < self._next:
            return
        if self._since:
            self._logger.log(self._level, self._summary, self._count, now - self._since, detail,
                             extra=self._extra)
        else:
            self._logger.log(self._level, self._first, self._count, detail, extra=self._extra)
        self._count, self._since, self._next = 0, now, now + self._every
