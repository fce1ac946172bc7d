"""What the publishers of one destination share, one publisher per partition: its circuit
breaker, its count of requests in flight, and its reports.

A partner sees one client however many partitions feed it: ``limits.max_in_flight`` bounds the
requests in flight to it from this worker across every partition, and one circuit opens for all
of them. Without partitions there is one publisher per destination and this is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from iris.config.model import Destination
from iris.core.circuit import CircuitBreaker, Feed
from iris.core.log_digest import LogDigest
from iris.runtime.health import Health
from iris.runtime.metrics import Metrics

log = logging.getLogger("iris.runtime.publisher")


class DestinationState:
    def __init__(self, dest: Destination, metrics: Metrics, health: Health) -> None:
        self.dest = dest
        self._metrics = metrics
        self._health = health
        self.breaker = CircuitBreaker(dest.id, dest.circuit.failure_threshold,
                                      dest.circuit.cooldown, on_change=self._circuit_changed)
        self.fed = asyncio.Event()  # the breaker was fed: a turn may have come
        self.in_flight = 0  # deliveries under way, every partition's publisher together
        self.settling = 0  # deliveries with an outcome whose slot was freed before their settle
        self._blocked = 0  # deliveries with an outcome that keep their slot until their settle
        self._wakes: list[asyncio.Event] = []  # each publisher's: a slot freed
        self.retry_report = LogDigest(
            log, logging.INFO, f"{dest.id}: %d request(s) to retry (%s); further retries are "
            "summed up every 10 s", f"{dest.id}: %d request(s) retried in the last %.0f s; "
            "last: %s", extra={"destination": dest.id})
        self.last_redirect = ""

    def _circuit_changed(self, is_open: bool) -> None:
        self._metrics.circuit_open.labels(self.dest.id).set(int(is_open))
        self._health.paused(self.dest.id, "paused (circuit open)" if is_open else None,
                            "circuit")

    def waken_by_free_slots(self, wake: asyncio.Event) -> None:
        """``wake`` is set whenever a delivery of any partition ends (a slot is free)."""
        self._wakes.append(wake)

    def free(self) -> int:
        """How many more batches the destination may take now, before pauses."""
        limit = self.dest.limits.max_in_flight
        return self.breaker.capacity(limit - self.in_flight, self.in_flight)

    def read_ahead(self) -> int:
        """How many batches each publisher may read beyond its free slots: ``max_in_flight``
        for the destination, shared among its partitions' publishers."""
        return -(-self.dest.limits.max_in_flight // max(1, len(self._wakes)))

    def started(self) -> None:
        self.in_flight += 1

    def settles(self) -> bool:
        """A delivery has its outcome and waits only for its settle: True if its slot is freed
        now (the partner is done with it). At most 2 × ``max_in_flight`` deliveries of the
        destination wait so (two settler flushes' worth at the full rate); the others keep
        their slots until their settle is written, so a Redis that refuses writes stops the
        deliveries it cannot settle."""
        if self.settling >= 2 * self.dest.limits.max_in_flight:
            return False
        self.settling += 1
        self.ended()
        return True

    def settled(self) -> None:
        """A delivery whose slot was freed by ``settles`` ended."""
        self.settling -= 1

    @contextlib.contextmanager
    def keeping_slot(self) -> Iterator[bool]:
        """A delivery that ``settles`` refused keeps its slot while its settle is written;
        yields True when such deliveries hold half the destination's slots (that settle must
        not wait for others to gather)."""
        self._blocked += 1
        try:
            yield 2 * self._blocked >= self.dest.limits.max_in_flight
        finally:
            self._blocked -= 1

    def ended(self) -> None:
        """A delivery ended: wake every partition's publisher, each time another first (the
        first woken takes the free slot)."""
        self.in_flight -= 1
        self._wakes[:] = self._wakes[1:] + self._wakes[:1]
        for wake in self._wakes:
            wake.set()

    def feed(self, feed: Feed, probe: bool, why: str = "") -> None:
        self.breaker.feed(feed, probe, why)
        self.fed.set()  # a turn may have come for those waiting
