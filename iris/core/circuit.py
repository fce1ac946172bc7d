"""A circuit breaker per destination: while a partner fails continuously, stop reading its
batches (they wait in Redis), hold back the retries of those in flight, and probe again after a
cool-down with one request at a time.

closed --(failure_threshold consecutive failures)--> open --(cooldown)--> half-open
half-open --(a success)--> closed;  half-open --(a failure)--> open

A request sent while the circuit is open is a probe: its failure spends no attempt of its
batch, so an outage of any length dead-letters nothing; the batches wait for the partner.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._probing = False  # a probe request is out
        self._changed = asyncio.Event()  # a success, a failure, or the circuit opened

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

    async def turn(self) -> bool:
        """Wait until a request may go out; True if it goes as the circuit's probe. While the
        circuit is open, one request at a time is let through, once the cool-down is over."""
        while self._opened_at is not None:
            wait = self.seconds_to_probe()
            if wait <= 0 and not self._probing:
                self._probing = True
                return True
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait if wait > 0 else None)
        return False

    def release(self, probe: bool) -> None:
        """A turn taken as the probe was not used (no request went out)."""
        if probe:
            self._probing = False
            self._changed.set()

    def seconds_to_probe(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._cooldown - (self._clock() - self._opened_at))

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self._changed.set()
        if self._opened_at is not None:
            self._opened_at = None
            log.info("destination %s answers again: circuit closed", self._name)
            self._on_change(False)

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        self._changed.set()
        if self._opened_at is not None:
            if self._clock() - self._opened_at >= self._cooldown:  # a failed probe
                self._opened_at = self._clock()
            return
        if self._failures >= self._threshold:
            self._opened_at = self._clock()
            log.warning("destination %s failed %d times in a row: circuit open, pausing reads "
                        "for %.0f s", self._name, self._failures, self._cooldown)
            self._on_change(True)
