"""A destination's ``limits.requests_per_second``, held across every replica.

A partner's rate limit is global: with a limiter per process, two replicas sent twice the
configured rate, and autoscaling multiplied it. The schedule lives in Redis (a GCRA in one Lua
script per destination, on Redis's own clock), and each replica takes request slots from it a
few at a time: at most ``burst`` requests go out together, ``burst`` being a tenth of a second's
worth (at least one). While Redis cannot be used, each replica falls back to a local limiter at
the full rate, so deliveries go on.
"""

from __future__ import annotations

import asyncio

from asyncio_throttle.throttler import Throttler

from iris.errors import RedisUnavailable
from iris.runtime.health import RedisRetry
from iris.store.streams import Streams

BURST_SECONDS = 0.1  # how much of a second's rate may go out at once


def local_throttler(requests_per_second: float) -> Throttler:
    """The rate in one process (asyncio-throttle counts whole requests per period)."""
    rate = max(1, round(requests_per_second))
    return Throttler(rate_limit=rate, period=rate / requests_per_second)


class SharedRate:
    def __init__(self, streams: Streams, destination_id: str,
                 requests_per_second: float, retry: RedisRetry) -> None:
        self._streams = streams
        self._retry = retry  # a Redis fault is reported (readiness, one WARNING), not hidden
        self._destination = destination_id
        self._interval_ms = 1000 / requests_per_second
        self.burst = max(1, round(requests_per_second * BURST_SECONDS))
        self._slots = 0  # taken from the shared schedule, not used yet
        self._lock = asyncio.Lock()  # one request to Redis at a time; the others wait on it
        self._fallback = local_throttler(requests_per_second)

    async def acquire(self) -> None:
        """Wait until one more request may go out."""
        async with self._lock:
            while self._slots == 0:
                try:
                    granted, wait = await self._streams.take_rate(
                        self._destination, self._interval_ms, self.burst, self.burst)
                except RedisUnavailable as exc:
                    self._retry.noted(exc)
                    async with self._fallback:
                        return
                self._retry.ok()
                self._slots = granted
                if not granted:
                    await asyncio.sleep(wait)
            self._slots -= 1
