"""Liveness and readiness state shared by the loops and the HTTP server.

Each loop that talks to Redis reports its own outcome through a ``RedisRetry``: a failure
records why (the reply Redis gave), and waits with that loop's own backoff, so one loop's
trouble never slows another. The worker is ready while no loop is failing. A fault is logged
twice, however many loops see it and however long it lasts: one WARNING when the first loop
fails, one INFO once the last one has recovered and none failed again for a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from iris.core.retry import doubling
from iris.errors import RedisUnavailable

log = logging.getLogger(__name__)

MAX_BACKOFF = 2.0  # seconds: the longest wait between two tries of a failing loop
BEAT_EVERY = 1.0  # seconds between heartbeats of the event loop
STUCK_AFTER = 10.0  # a heartbeat older than this means the event loop is stuck
QUIET = 1.0  # seconds without a failing loop before a fault is reported over


def backoff_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: 0.1 s doubling to 2 s."""
    return doubling(0.05, failures, MAX_BACKOFF)


class Health:
    """Ready when started, not draining, and no loop's last Redis operation failed: whether
    THIS worker can work. A paused destination (its partner down, its credentials refused) is
    listed beside, not a reason: every replica would be NotReady, and a rollout or a drain
    during a partner's outage would stall."""

    def __init__(
        self,
        on_redis_error: Callable[[str], None] | None = None,
        on_redis_usable: Callable[[bool], None] | None = None,
    ) -> None:
        self.starting = True
        self.draining = False
        self._on_error = on_redis_error  # told the reply of every failure (a metric)
        self._on_usable = on_redis_usable  # told when Redis turns unusable, and usable again
        self._faults: dict[str, RedisUnavailable] = {}  # loop -> the fault it saw last
        self._down_since = 0.0
        self._cleared_at: float | None = None  # the last fault ended then; not yet logged
        self._beat = time.monotonic()
        self._paused: dict[tuple[str, str], str] = {}  # (destination, source) -> why

    def paused(self, destination: str, why: str | None, source: str) -> None:
        """A destination waits (``why``: its circuit opened, its credentials were refused, it
        has no token) or resumes (None); ``source`` tells the circuit from the auth. /readyz
        lists the waiting ones and why."""
        if why is None:
            self._paused.pop((destination, source), None)
        else:
            self._paused[(destination, source)] = why

    async def heartbeat(self) -> None:
        """Runs on the event loop: while it beats, the loop is turning."""
        while True:
            self._beat = time.monotonic()
            self._log_recovery()
            await asyncio.sleep(BEAT_EVERY)

    def liveness(self) -> tuple[bool, float]:
        """(alive, seconds since the last heartbeat): only a stuck event loop is not alive."""
        age = time.monotonic() - self._beat
        return age < STUCK_AFTER, age

    def retry(self, loop: str) -> RedisRetry:
        """The outcome reporter and backoff of one loop (or one kind of operation of it)."""
        return RedisRetry(self, loop)

    def redis_ok(self, loop: str) -> None:
        if self._faults.pop(loop, None) is None or self._faults:
            return
        self._cleared_at = time.monotonic()  # the INFO line waits for a quiet second
        if self._on_usable is not None:
            self._on_usable(True)

    def redis_failed(self, loop: str, exc: RedisUnavailable) -> None:
        if self._on_error is not None:
            self._on_error(exc.reply)
        first = not self._faults
        self._faults[loop] = exc
        if first and self._on_usable is not None:
            self._on_usable(False)
        if not first or self._cleared_at is not None:  # the same fault, still or again
            self._cleared_at = None
            log.debug("%s: %s", loop, exc)
            return
        self._down_since = time.monotonic()
        log.warning("%s — backing off and retrying until it passes (/readyz is 503 meanwhile)",
                    str(exc).rstrip("."))

    def _log_recovery(self) -> None:
        """One INFO line once no loop has failed for ``QUIET`` seconds: the other loops may
        still be finding out about the fault the first one recovered from."""
        cleared = self._cleared_at
        if cleared is not None and not self._faults and time.monotonic() - cleared >= QUIET:
            self._cleared_at = None
            log.info("redis is usable again (it was not for %.1f s)", cleared - self._down_since)

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if self.starting:
            reasons.append("starting")
        if self.draining:
            reasons.append("draining")
        reasons.extend(dict.fromkeys(str(exc) for exc in self._faults.values()))
        if not self._faults and self._cleared_at is not None:  # ready with the INFO line
            reasons.append("redis recovering: waiting for a quiet second")
        return not reasons, reasons

    def paused_destinations(self) -> list[str]:
        """The destinations that wait, and why (listed by /readyz; not a readiness reason)."""
        return [f"destination {d} {why}" for (d, _), why in sorted(self._paused.items())]


class RedisRetry:
    """One loop's reports to ``Health``, and its own backoff between tries."""

    def __init__(self, health: Health, loop: str) -> None:
        self._health = health
        self.loop = loop
        self._failures = 0

    def ok(self) -> None:
        self._failures = 0
        self._health.redis_ok(self.loop)

    def noted(self, exc: RedisUnavailable) -> None:
        """Record a failure without waiting (the caller schedules its own next try)."""
        self._failures += 1
        self._health.redis_failed(self.loop, exc)

    async def failed(self, exc: RedisUnavailable) -> None:
        """Record the failure, then wait before the caller tries again."""
        self.noted(exc)
        await asyncio.sleep(backoff_delay(self._failures))
