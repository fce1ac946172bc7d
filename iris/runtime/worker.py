"""The worker: owns every task, as stages started in order and stopped in reverse.

``run()`` reads as a table of contents: start the stages, wait for a stop request, stop them.
Each partition of the inbound stream (``core.partitions``) gets its own consumer, settler,
shared outbound read and one publisher per destination; the publishers of one destination
share its circuit and in-flight bound (``destination.DestinationState``), and every partition
shares the HTTP sessions, the tokens and the consumer name.
Stopping is the reverse of starting (``stages.Stages``): the consumer stops reading and writes
the batches still open, upkeep stops, the publishers stop reading and let in-flight deliveries
finish within ``shutdown_timeout``, the partners' sessions close, and the worker leaves Redis,
handing anything unfinished to the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from iris.auth.base import Auth
from iris.compiled import build
from iris.config.model import Config
from iris.errors import RedisUnavailable
from iris.http.sender import PartnerSession, Sender
from iris.runtime.consumer import Consumer
from iris.runtime.destination import DestinationState
from iris.runtime.health import Health
from iris.runtime.metrics import REDIS_REPLIES, Metrics
from iris.runtime.outbound import OutboundReader
from iris.runtime.probes import HttpServer
from iris.runtime.publisher import Publisher
from iris.runtime.rate_limit import SharedRate
from iris.runtime.settler import Settler
from iris.runtime.stages import Hook, Loops, Stages
from iris.runtime.stopping import unless_stopped
from iris.runtime.upkeep import Upkeep
from iris.runtime.wiring import SharedTokens, make_auth
from iris.store.client import connect
from iris.store.keys import Keys, stray_inbound
from iris.store.lease import ConsumerLease
from iris.store.permissions import check_permissions
from iris.store.streams import Streams, partitions

log = logging.getLogger(__name__)

STATS_CACHE_SECONDS = 1.0
EXIT_MARGIN = 0.3  # of shutdown_timeout, kept for closing sessions and exiting


def tune_gc() -> None:
    """For the daemon process: the hot path allocates a few small objects per event, and with
    the default thresholds the cyclic collector runs every 700 allocations and rescans every
    open batch; measured, it took half the consumer's time. Objects alive at start-up are
    frozen out of collection (without a collection first: it cost ~30–50 ms of CPU to free a
    handful of objects), and collections run a hundred times less often. iris makes few
    reference cycles, so memory stays bounded. The collector is turned on here: the ``iris``
    command kept it off through the start-up's imports (``iris.cli``)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    gc.enable()


@dataclass
class Partition:
    """What works on one partition of the inbound stream."""

    streams: Streams
    consumer: Consumer
    settler: Settler
    publishers: list[Publisher] = field(default_factory=list)


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.inbound = [keys.inbound for keys in Keys.partitions(config)]
        self.metrics = Metrics([d.id for d in config.destinations], self.inbound,
                               config.stream.group,
                               longest_timeout=max(d.timeout for d in config.destinations))
        self.health = Health(on_redis_error=self._count_redis_error,
                             on_redis_usable=lambda usable: self.metrics.redis_usable.set(usable))
        host, port = config.http.host_port
        self.http = HttpServer(host, port, self.metrics, self.health, self._refresh_stream_stats)
        self._stop = asyncio.Event()
        self._stages = Stages()
        self._sessions: list[PartnerSession] = []
        self._auths: list[Auth] = []
        self.partitions: list[Partition] = []
        self._stats_at = 0.0
        self._lease_lost = False
        self.exit_code = 0

    def _count_redis_error(self, reply: str) -> None:
        self.metrics.redis_errors.labels(reply if reply in REDIS_REPLIES else "other").inc()

    def request_stop(self) -> None:
        """Safe from a signal handler: only sets flags; the main coroutine does the work."""
        self.health.draining = True  # /readyz says so from this moment
        self._stop.set()

    def _lost_lease(self) -> None:
        """Another worker reads with our consumer name now: stop without writing open batches
        (their entries are that worker's to finish), and exit non-zero."""
        self._lease_lost = True
        self.exit_code = 1
        self.request_stop()

    async def run(self) -> None:
        try:
            await self._startup()
            await self._stop.wait()
        finally:
            self.health.draining = True
            await self._stages.stop(time.monotonic() + self.config.shutdown_timeout)
            log.info("stopped")

    @property
    def _publishers(self) -> list[Publisher]:
        return [p for partition in self.partitions for p in partition.publishers]

    async def _startup(self) -> None:
        self.redis = connect(self.config)
        self.all_streams = partitions(self.redis, self.config)
        self.streams = self.all_streams[0]
        self.lease = ConsumerLease(self.redis, self.config.stream.key)
        await self._stages.start(self.http)
        await self._stages.start(Loops("heartbeat", [("heartbeat", self.health.heartbeat)]))
        log.info("metrics on http://%s:%d/metrics", self.config.http.host_port[0], self.http.port)
        await self._stages.start(Hook("redis", self._leave_redis))
        if not await self._wait_for_redis():
            return
        self.partitions = [
            Partition(streams, Consumer(self.config, streams, self.metrics, self.health),
                      Settler(streams, self.health.retry(f"settle{streams.where}")))
            for streams in self.all_streams]
        await self._stages.start(Hook("partners", self._close_partners))
        await self._stages.start(Hook("deliveries", self._drain))
        await self._stages.start(self._publishing())
        ids = self._destination_ids()
        upkeep = Upkeep([(p.streams, p.streams.all_keys(ids)) for p in self.partitions], self.lease,
                        self.config.stream, self.metrics, self.health,
                        on_lease_lost=self._lost_lease, strays=stray_inbound(self.config))
        with contextlib.suppress(RedisUnavailable):  # events dropped while no worker ran
            await upkeep.check_unread_deleted()
            await upkeep.check_strays()
        await self._stages.start(Loops("upkeep", [
            (f"upkeep-{name}", partial(upkeep.run, name, every, chore))
            for name, every, chore in upkeep.chores()]))
        consume = Loops("consume", [(self._task_name("consume", p), p.consumer.run)
                                    for p in self.partitions])
        consume.before_cancel = partial(self._stop_consuming, consume)
        await self._stages.start(consume)
        self.health.starting = False
        self.metrics.redis_usable.set(1)
        count = len(self.config.destinations)
        where = "Redis Cluster" if self.config.redis.cluster else "Redis"
        if len(self.all_streams) > 1:
            where += f", {len(self.all_streams)} partitions"
        log.info("started: consumer %s, %d destination%s (%s; %s)", self.streams.consumer, count,
                 "" if count == 1 else "s", where, build())

    def _task_name(self, name: str, partition: Partition) -> str:
        """``name``, with the partition's inbound stream when there are several."""
        return name if len(self.partitions) == 1 else f"{name} {partition.streams.inbound}"

    def _destination_ids(self) -> list[str]:
        return [d.id for d in self.config.destinations]

    def _publishing(self) -> Loops:
        """Per partition: one publisher per destination, and the shared read of their
        outbound streams; per destination: one HTTP session, auth and rate for all."""
        shared = SharedTokens.from_config(self.config, self.redis, self.streams.consumer)
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for dest in self.config.destinations:
            session = PartnerSession(dest)
            on_pause = partial(self.health.paused, dest.id, source="auth")
            auth = make_auth(dest, session, self.metrics, shared, on_pause=on_pause)
            self._sessions.append(session)
            self._auths.append(auth)
            rate = SharedRate(self.streams, dest.id, dest.limits.requests_per_second,
                              self.health.retry(f"publish {dest.id}: rate"))
            sender = Sender(dest, auth, session, self.metrics, rate)
            state = DestinationState(dest, self.metrics, self.health)
            for partition in self.partitions:
                publisher = Publisher(dest, partition.streams, sender, self.metrics, self.health,
                                      self.config.stream, partition.settler, state)
                partition.publishers.append(publisher)
                loops.append((self._task_name(f"publish-{dest.id}", partition), publisher.run))
        for partition in self.partitions:
            reader = OutboundReader(partition.streams, partition.publishers,
                                    self.config.stream.block_ms, self.health)
            loops.append((self._task_name("publish-shared-read", partition), reader.run))
        publishing = Loops("publish", loops)
        publishing.before_cancel = self._stop_publishing
        return publishing

    async def _wait_for_redis(self) -> bool:
        """Create the groups, check the Redis user's permissions and claim the consumer name,
        retrying until Redis can be used or a stop is requested."""
        retry = self.health.retry("start")
        while not self._stop.is_set():
            try:
                for streams, key in self._stream_keys():
                    await streams.ensure_group(key)
                for streams in self.all_streams:
                    await check_permissions(streams)
                claimed, name = await unless_stopped(self.lease.claim(self.config.consumer),
                                                     self._stop)
                if not claimed or name is None:
                    return False
                for streams in self.all_streams:
                    streams.consumer = name
            except RedisUnavailable as exc:
                await retry.failed(exc)
                continue
            retry.ok()
            return True
        return False

    def _stream_keys(self) -> list[tuple[Streams, str]]:
        """Every stream, each with its partition's ``Streams``: per partition, its inbound
        stream, then each destination's outbound stream."""
        ids = self._destination_ids()
        return [(streams, key) for streams in self.all_streams for key in streams.all_keys(ids)]

    async def _stop_consuming(self, consume: Loops, deadline: float) -> None:
        """The consumers write their open batches, then return (unless the lease was lost:
        their open batches are another worker's entries now)."""
        for partition in self.partitions:
            if self._lease_lost:
                partition.consumer.abandon()
            partition.consumer.stopping.set()
        await asyncio.wait(consume.tasks, timeout=self.config.stream.block_ms / 1000 + 2)

    async def _stop_publishing(self, deadline: float) -> None:
        for publisher in self._publishers:
            publisher.stopping.set()  # read nothing more; retry waits end
        for partition in self.partitions:
            partition.settler.stopping.set()  # a settle Redis refuses is left pending

    async def _drain(self, deadline: float) -> None:
        """In-flight deliveries finish by the deadline (less a margin to exit); the rest stay
        pending, for the other workers."""
        remaining = deadline - time.monotonic() - EXIT_MARGIN
        await asyncio.gather(*(p.drain(remaining) for p in self._publishers))
        await asyncio.gather(*(p.settler.close(deadline - time.monotonic() - EXIT_MARGIN)
                               for p in self.partitions))

    async def _close_partners(self, deadline: float) -> None:
        grace = max(0.5, deadline - time.monotonic())  # a token exchange under way may finish
        await asyncio.gather(*(auth.close(grace) for auth in self._auths))
        for session in self._sessions:
            await session.close()

    async def _leave_redis(self, deadline: float) -> None:
        if held := await self._leave():
            log.info("handed %d unfinished entries back to the other workers", held)
        await self.redis.aclose()

    async def _leave(self) -> int:
        """Hand back what this worker still holds (to the other workers at once, not counted
        as a delivery), trim what it acknowledged, leave the groups and free its name. Returns
        how many entries it handed back."""
        if not self.lease.name or self._lease_lost:
            return 0
        stream = self.config.stream
        held = 0
        try:
            for streams, key in self._stream_keys():
                held += await streams.hand_back(key, stream.claim_idle_ms)
                await streams.drop_own_consumer(key)
            if stream.trim:
                for streams in self.all_streams:
                    await streams.trim(streams.inbound)
            await self.lease.release()
        except RedisUnavailable as exc:
            log.info("could not hand back this worker's entries (%s); the others take them "
                     "over after stream.claim_idle_ms", exc)
        return held

    async def _refresh_stream_stats(self) -> None:
        """Stream gauges (XLEN, XINFO GROUPS) at scrape time, cached briefly, never on the hot
        path. A lag Redis cannot count (nil) and that would take a long scan is left out, and
        so is the total of the inbound streams' lag then."""
        if not hasattr(self, "streams") or time.monotonic() - self._stats_at < STATS_CACHE_SECONDS:
            return
        self._stats_at = time.monotonic()
        group = self.streams.group
        total: int | None = 0
        for streams, key in self._stream_keys():
            try:
                stats = await streams.stats.group_stats(key)
            except RedisUnavailable:
                return
            if stats is None:
                if key == streams.inbound:
                    total = None  # a partition without our group: no total to tell
                continue
            length, pending, lag = stats
            self.metrics.stream_length.labels(key).set(length)
            self.metrics.stream_pending.labels(key, group).set(pending)
            if key == streams.inbound:
                total = None if lag is None or total is None else total + lag
            if lag is None:
                with contextlib.suppress(KeyError):
                    self.metrics.stream_lag.remove(key, group)
            else:
                self.metrics.stream_lag.labels(key, group).set(lag)
        if total is None:
            with contextlib.suppress(KeyError):
                self.metrics.stream_lag_total.remove(group)
        else:
            self.metrics.stream_lag_total.labels(group).set(total)
