"""Consumer identity: one live worker per consumer name.

Two workers reading with one consumer name would both take the same pending entries (each
re-reads "its" history) and could send them under different Idempotency-Keys. So a worker holds
a lease on its name: a key ``<stream.key>:consumer:<name>`` with a token of its own, renewed
every few seconds and released at a clean stop. A worker that finds the name leased waits a
little: a lease that is not renewed belonged to a worker that died, and the name is taken over
(with it, that worker's pending entries, re-read as deliveries); a lease that is renewed
belongs to a live worker, and the newcomer takes a unique name and says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time

from iris.store import scripts as stream_scripts
from iris.store.client import RedisClient
from iris.store.errors import redis_errors
from iris.store.keys import Keys

log = logging.getLogger(__name__)

LEASE_TTL = 10.0  # seconds a lease outlives its last renewal
RENEW_EVERY = 3.0  # seconds between renewals


class ConsumerLease:
    def __init__(self, redis: RedisClient, stream_key: str) -> None:
        self._redis = redis
        self._keys = Keys(stream_key)
        self.token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.name = ""
        self._renew = redis.register_script(stream_scripts.RENEW_LEASE)
        self._release = redis.register_script(stream_scripts.RELEASE_LEASE)

    def _key(self, name: str) -> str:
        return self._keys.consumer_lease(name)

    async def claim(self, wanted: str) -> str:
        """The consumer name to use: ``wanted`` once no live worker holds it, else a unique one.

        Waits at most ``LEASE_TTL`` (a dead worker's lease to lapse), and only as long as it
        takes to see a live holder renew (``RENEW_EVERY``) when there is one."""
        deadline = time.monotonic() + LEASE_TTL + 1
        last_ttl: int | None = None
        while True:
            if await self._take(wanted):
                self.name = wanted
                return wanted
            with redis_errors():
                ttl = int(await self._redis.pttl(self._key(wanted)))
            renewed = last_ttl is not None and ttl > last_ttl
            if renewed or time.monotonic() > deadline:
                break
            if last_ttl is None:
                log.info("consumer name %r is leased by another worker; waiting up to %.0f s to "
                         "see whether it is alive (a restarted worker takes its name over)",
                         wanted, ttl / 1000)
            last_ttl = ttl
            await asyncio.sleep(1.0)
        unique = f"{wanted}-{self.token.rsplit('-', 1)[1]}"
        await self._take(unique)
        log.warning("consumer name %r is in use by another live worker; this one reads as %r "
                    "instead (give each replica its own stream.consumer, or leave it empty for "
                    "hostname-pid)", wanted, unique)
        self.name = unique
        return unique

    async def _take(self, name: str) -> bool:
        with redis_errors():
            return bool(await self._redis.set(self._key(name), self.token, nx=True,
                                              px=int(LEASE_TTL * 1000)))

    async def renew(self) -> bool:
        """Extend the lease (taking it back if it lapsed); False if another worker holds it."""
        with redis_errors():
            return bool(await self._renew(keys=[self._key(self.name)],
                                          args=[self.token, int(LEASE_TTL * 1000)]))

    async def release(self) -> None:
        with redis_errors():
            await self._release(keys=[self._key(self.name)], args=[self.token])
