"""Periodic chores that keep Redis tidy while the worker runs, each a task of its own.

- Lease: renew this worker's consumer-name lease (``identity``); a lease lost to another
  worker stops this one, so two workers never read with one name.
- Trim: keep each inbound stream (one per partition) bounded by trimming what every consumer
  group has acknowledged (never an entry that some group still holds or has not read); and warn when
  something else deleted entries before iris read them (a producer's MAXLEN).
- Stray streams: warn about inbound streams no worker reads (``stream.key`` itself with
  partitions; partitions beyond ``stream.partitions``) while they hold events, and export
  their length, so events a producer put in the wrong place are never silently left there.
- Idle consumers: remove consumers that hold nothing and have been idle for
  ``idle_consumer_ms`` (replicas that are gone), so ``iris status`` stays short.
- Log summaries: write the sums of retries and dead letters that a burst left unsaid
  (``core.log_digest``), every 10 s.

A chore that fails is tried again at its next turn: a Redis fault is reported (readiness) and
a bug logged, and neither stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from iris.config.model import StreamConfig
from iris.core.log_digest import EVERY as DIGEST_EVERY
from iris.core.log_digest import flush_due
from iris.errors import RedisUnavailable
from iris.runtime.health import Health
from iris.runtime.metrics import Metrics
from iris.store.lease import RENEW_EVERY, ConsumerLease
from iris.store.streams import Streams

log = logging.getLogger(__name__)

Chore = tuple[str, float, Callable[[], Awaitable[None]]]  # (name, every seconds, what)


STRAY_EVERY = 60.0  # seconds between looks for stray inbound streams
Partition = tuple[Streams, Sequence[str]]  # a partition's streams: its inbound, then outbound


class Upkeep:
    def __init__(self, partitions: Sequence[Partition], lease: ConsumerLease,
                 config: StreamConfig, metrics: Metrics, health: Health,
                 on_lease_lost: Callable[[], None], strays: Sequence[str] = ()) -> None:
        """``strays``: the inbound streams no worker reads (``keys.stray_inbound``)."""
        self._partitions = partitions
        self._lease = lease
        self._config = config
        self._metrics = metrics
        self._health = health
        self._on_lease_lost = on_lease_lost
        self._lost: dict[str, str] = {}  # inbound stream → the last unread deletion warned about
        self._strays = list(strays)
        self._stray_seen: dict[str, int] = {}  # stray stream → its length at the last look

    def chores(self) -> list[Chore]:
        chores: list[Chore] = [("lease", RENEW_EVERY, self.renew_lease),
                               ("stray streams", STRAY_EVERY, self.check_strays),
                               ("log summaries", DIGEST_EVERY, self.flush_log_summaries)]
        if self._config.trim:
            chores.append(("trim", self._config.trim_interval_ms / 1000, self.trim))
        every = min(60.0, self._config.idle_consumer_ms / 2000)
        chores.append(("idle consumers", every, self.drop_idle_consumers))
        return chores

    async def run(self, name: str, every: float, chore: Callable[[], Awaitable[None]]) -> None:
        """Run ``chore`` every ``every`` seconds until cancelled."""
        retry = self._health.retry(f"upkeep: {name}")
        wait = every
        while True:
            await asyncio.sleep(wait)
            wait = every
            try:
                await chore()
            except RedisUnavailable as exc:
                await retry.failed(exc)  # and again soon: the fault holds readiness back
                wait = 0
                continue
            except Exception:
                log.exception("upkeep chore %r failed; trying again in %.0f s", name, every)
                continue
            retry.ok()

    @staticmethod
    async def flush_log_summaries() -> None:
        flush_due()

    async def renew_lease(self) -> None:
        if not await self._lease.renew():
            log.error("another worker took over the consumer name %r (this one did not renew "
                      "its lease in time: frozen, or cut off from Redis); stopping, so that two "
                      "workers never read as one", self._lease.name)
            self._on_lease_lost()

    async def check_unread_deleted(self) -> None:
        """Warn (once per occurrence) when entries were deleted before our group read them."""
        await self._each([partial(self._check_unread_deleted, s) for s, _ in self._partitions])

    @staticmethod
    async def _each(chores: list[Callable[[], Awaitable[None]]]) -> None:
        """Every chore, one per partition or stream, even when one of them fails (its master
        is down, say): then the first failure is raised once all were tried."""
        failed: RedisUnavailable | None = None
        for chore in chores:
            try:
                await chore()
            except RedisUnavailable as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    async def _check_unread_deleted(self, streams: Streams) -> None:
        inbound = streams.inbound
        lost = await streams.stats.deleted_unread(inbound)
        if lost is None or lost[0] == self._lost.get(inbound):
            return
        self._lost[inbound], count = lost
        log.warning("%s events of %s were deleted before group %s read them (up to %s): a "
                    "producer's MAXLEN, XTRIM or XDEL drops events iris never saw; remove it "
                    "(iris trims the stream itself, safely)", "some" if count is None else count,
                    inbound, streams.group, lost[0])

    async def check_strays(self) -> None:
        """Warn, at every look, while a stream no worker reads holds events; export how many
        (``iris_stream_unread``, which IrisEventsUnread alerts on)."""
        streams = self._partitions[0][0]
        found = await streams.lengths(self._strays)
        for key in set(self._stray_seen) - set(found):
            self._metrics.stream_unread.remove(key)
        self._stray_seen = found
        for key, length in found.items():
            self._metrics.stream_unread.labels(key).set(length)
        if found:
            held = ", ".join(f"{k} ({n})" for k, n in sorted(found.items())[:8])
            log.warning("events that no worker reads: %s%s; with stream.partitions %d they "
                        "belong in %s … %s (partition crc32(uuid) mod %d): move them there "
                        "with `iris repartition`, and make producers write there (README: "
                        "Scaling past one Redis)", held, " and more" if len(found) > 8 else "",
                        len(self._partitions), self._partitions[0][0].inbound,
                        self._partitions[-1][0].inbound, len(self._partitions))

    async def trim(self) -> None:
        await self._each([partial(self._trim, streams) for streams, _ in self._partitions])

    async def _trim(self, streams: Streams) -> None:
        await self._check_unread_deleted(streams)
        trimmed = await streams.trim(streams.inbound)
        if trimmed:
            self._metrics.stream_trimmed.labels(streams.inbound).inc(trimmed)

    async def drop_idle_consumers(self) -> None:
        await self._each([partial(self._drop_idle_consumers, streams, key)
                          for streams, keys in self._partitions for key in keys])

    async def _drop_idle_consumers(self, streams: Streams, key: str) -> None:
        removed = await streams.drop_idle_consumers(key, self._config.idle_consumer_ms)
        if removed:
            log.info("removed %d idle consumer(s) holding nothing from %s", removed, key)
