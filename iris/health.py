"""Liveness and readiness state shared by the loops and the HTTP server."""

from __future__ import annotations

import asyncio
import logging
import time

from iris.errors import RedisUnavailable

log = logging.getLogger(__name__)

MAX_BACKOFF = 2.0
BEAT_EVERY = 1.0  # seconds between heartbeats of the event loop
STUCK_AFTER = 10.0  # a heartbeat older than this means the event loop is stuck


class Health:
    """Ready when started, not draining, and Redis answered the last time anyone asked."""

    def __init__(self) -> None:
        self.starting = True
        self.draining = False
        self._redis_up = False
        self._failures = 0
        self._beat = time.monotonic()
        self._paused: set[tuple[str, str]] = set()  # (destination, why)

    def paused(self, destination: str, is_paused: bool, reason: str) -> None:
        """A destination paused (its circuit opened, its credentials were refused) or resumed;
        /readyz lists the paused ones and why."""
        if is_paused:
            self._paused.add((destination, reason))
        else:
            self._paused.discard((destination, reason))

    async def heartbeat(self) -> None:
        """Runs on the event loop: while it beats, the loop is turning."""
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(BEAT_EVERY)

    def liveness(self) -> tuple[bool, float]:
        """(alive, seconds since the last heartbeat): only a stuck event loop is not alive."""
        age = time.monotonic() - self._beat
        return age < STUCK_AFTER, age

    def redis_ok(self) -> None:
        if not self._redis_up and not self.starting:
            log.info("redis is reachable again")
        self._redis_up = True
        self._failures = 0

    async def redis_failed(self, exc: RedisUnavailable) -> None:
        """Record the failure, log it once per outage, and wait before the caller retries."""
        if self._redis_up or self._failures == 0:
            log.warning("%s; retrying", exc)
        self._redis_up = False
        self._failures += 1
        await asyncio.sleep(min(MAX_BACKOFF, 0.05 * 2 ** min(self._failures, 10)))

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if self.starting:
            reasons.append("starting")
        if self.draining:
            reasons.append("draining")
        if not self._redis_up:
            reasons.append("redis unreachable")
        reasons.extend(f"destination {d} paused ({why})" for d, why in sorted(self._paused))
        return not reasons, reasons
