"""A circuit breaker per destination: while a partner fails continuously, stop reading its
batches (they wait in Redis), hold back the retries of those in flight, and probe again after a
cool-down with one request at a time.

closed --(failure_threshold consecutive failures)--> open --(cooldown)--> half-open
half-open --(a success)--> closed;  half-open --(a failure)--> open

A request sent while the circuit is open is a probe: its failure spends no attempt of its
batch, so an outage of any length dead-letters nothing; the batches wait for the partner.
The breaker only decides; the publisher waits (``turn`` None: until ``seconds_to_probe`` has
passed or the breaker was fed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

log = logging.getLogger(__name__)


class Feed(StrEnum):
    """What the breaker is told of a request (``DeliveryPolicy`` says which)."""

    SUCCESS = "success"  # the partner answered, whatever it thought of the batch
    FAILURE = "failure"  # no answer, or a retryable one
    RELEASE = "release"  # no request was made: a probe's turn goes back unused


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

    def turn(self) -> bool | None:
        """May a request go out now? False: yes; True: yes, as the circuit's probe; None: not
        yet (the circuit is open: one request at a time, once the cool-down is over)."""
        if self._opened_at is None:
            return False
        if self.seconds_to_probe() <= 0 and not self._probing:
            self._probing = True
            return True
        return None

    def feed(self, feed: Feed, probe: bool, why: str = "") -> None:
        """Tell the breaker what became of a request sent on a turn (``probe``: as its probe;
        ``why``: a failure's cause, named when the circuit opens)."""
        if feed is Feed.SUCCESS:
            self.success()
        elif feed is Feed.FAILURE:
            self.failure(why)
        elif probe:  # no request went out: the probe's turn goes back
            self._probing = False

    def seconds_to_probe(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._cooldown - (self._clock() - self._opened_at))

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._opened_at is not None:
            self._opened_at = None
            log.info("destination %s answers again: circuit closed", self._name)
            self._on_change(False)

    def failure(self, why: str = "") -> None:
        self._failures += 1
        self._probing = False
        if self._opened_at is not None:
            if self._clock() - self._opened_at >= self._cooldown:  # a failed probe
                self._opened_at = self._clock()
            return
        if self._failures >= self._threshold:
            self._opened_at = self._clock()
            log.warning("destination %s failed %d times in a row%s: circuit open, pausing "
                        "reads for %.0f s", self._name, self._failures,
                        f" (the last: {why})" if why else "", self._cooldown)
            self._on_change(True)
