"""A circuit breaker per destination: while a partner fails continuously, stop reading its
batches (they wait in Redis) and probe again after a cool-down.

closed --(failure_threshold consecutive failures)--> open --(cooldown)--> half-open
half-open --(a success)--> closed;  half-open --(a failure)--> open
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(
        self, name: str, failure_threshold: int, cooldown: float,
        on_change: Callable[[bool], None], clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._on_change = on_change  # told True when it opens, False when it closes
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def capacity(self, free: int, in_flight: int) -> int:
        """How many new batches to read now: all free slots when closed, none while open, one
        probe (with nothing else in flight) once the cool-down has passed."""
        if self._opened_at is None:
            return free
        if self._clock() - self._opened_at < self._cooldown or in_flight:
            return 0
        return min(free, 1)

    def seconds_to_probe(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._cooldown - (self._clock() - self._opened_at))

    def success(self) -> None:
        self._failures = 0
        if self._opened_at is not None:
            self._opened_at = None
            log.info("destination %s answers again: circuit closed", self._name)
            self._on_change(False)

    def failure(self) -> None:
        self._failures += 1
        if self._opened_at is not None:
            if self._clock() - self._opened_at >= self._cooldown:  # a failed probe
                self._opened_at = self._clock()
            return
        if self._failures >= self._threshold:
            self._opened_at = self._clock()
            log.warning("destination %s failed %d times in a row: circuit open, pausing reads "
                        "for %.0f s", self._name, self._failures, self._cooldown)
            self._on_change(True)
