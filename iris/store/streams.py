"""The Redis stream adapter: key names, consumer groups, reads, atomic commits and acks.

With ``auth/store.py`` the only code that talks redis-py. Every error it raises comes out as
``RedisUnavailable`` (``redis_errors``); a consumer group that vanished (``NOGROUP``) is
recreated. A worker opens at most ``redis.max_connections`` connections, however many
destinations it serves: reads of the outbound streams are multiplexed (``read_many``), and a
task that finds every connection busy waits for one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from iris.config.model import Config
from iris.errors import GroupMissing, RedisUnavailable
from iris.store import scripts as stream_scripts
from iris.store.errors import redis_errors, translate

log = logging.getLogger(__name__)
T = TypeVar("T")

Entry = tuple[str, dict[str, str] | None]  # (id, fields); fields None: trimmed before delivery
NEW = ">"  # read entries never delivered to this group
TOUCH_CHUNK = 500
PROBE_GROUP = "iris-permission-check"  # never exists: commands on it fail after the ACL check


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def connect(config: Config) -> aioredis.Redis:
    """A client whose socket timeout outlasts the blocking read, over a bounded pool that waits.

    redis-py's own retry is off on purpose: it re-sends a command whose reply was lost, and a
    re-sent MULTI writes its batches twice. Every caller retries explicitly instead, with
    backoff, and re-reads its pending list, which is exact. The pool never raises for being
    full (redis-py's default pool does, at 100 connections): a task waits for a connection.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        config.redis.url,
        max_connections=config.redis.max_connections,
        timeout=None,
        decode_responses=True,
        encoding_errors="surrogateescape",  # invalid UTF-8 reaches the parser, which refuses it
        socket_timeout=config.redis_socket_timeout,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), retries=0),
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)


@dataclass
class Commit:
    """What one consume round writes atomically: dead letters, closed batches, inbound acks;
    and the entries it acknowledges without delivery, by reason (counted once it is written)."""

    dead_letters: list[dict[str, str]] = field(default_factory=list)
    batches: list[tuple[str, dict[str, str | bytes]]] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    written: dict[str, str] = field(default_factory=dict)  # entry → destinations that have it
    unwritten: list[str] = field(default_factory=list)  # entries no longer to keep track of

    def __bool__(self) -> bool:
        return bool(self.dead_letters or self.batches or self.acks or self.written)


class Streams:
    """Stream keys and operations for one configured inbound stream and group.

    ``consumer`` is this worker's consumer name; the identity lease may change it at start."""

    def __init__(self, redis: aioredis.Redis, config: Config) -> None:
        self.redis = redis
        self.inbound = config.stream.key
        self.group = config.stream.group
        self.consumer = config.consumer
        self.dead_letters = f"{self.inbound}:dlq"
        self.written_key = f"{self.inbound}:written"  # see ``Commit.written``
        self._touch = self.redis.register_script(stream_scripts.TOUCH_OWNED)
        self._claim = self.redis.register_script(stream_scripts.CLAIM_ABANDONED)
        self._trim = self.redis.register_script(stream_scripts.TRIM_ACKNOWLEDGED)
        self._drop_idle = self.redis.register_script(stream_scripts.DROP_IDLE_CONSUMERS)
        self._drop_own = self.redis.register_script(stream_scripts.DROP_OWN_CONSUMER)
        self._hand_back = self.redis.register_script(stream_scripts.HAND_BACK)
        self._rate = self.redis.register_script(stream_scripts.TAKE_RATE)

    def outbound(self, destination_id: str) -> str:
        """The per-destination stream of closed batches: a failing partner's backlog waits here."""
        return f"{self.inbound}:out:{destination_id}"

    def all_keys(self, destination_ids: Iterable[str]) -> list[str]:
        """The inbound stream, then each destination's outbound stream."""
        return [self.inbound, *(self.outbound(d) for d in destination_ids)]

    async def ping(self) -> None:
        with redis_errors():
            await self.redis.ping()

    async def check_permissions(self) -> None:
        """Run every kind of command iris needs once, harmlessly, on its own keys; raise
        ``RedisUnavailable`` (NOPERM) naming each one the Redis user may not run."""
        key, group, me = self.inbound, self.group, self.consumer
        probe = f"{key}:permission-check"  # never written
        probes = {
            "xreadgroup": ("XREADGROUP", "GROUP", PROBE_GROUP, me, "COUNT", 1, "STREAMS", key,
                           NEW),
            "xadd": ("XADD", key, "NOMKSTREAM", "0-0", "f", "v"),  # refused: id 0-0 (no write)
            "xack": ("XACK", key, group, "0-0"),
            "xdel": ("XDEL", key, "0-0"),
            "xrange": ("XRANGE", key, "+", "-", "COUNT", 1),
            "xpending": ("XPENDING", key, PROBE_GROUP),
            "xautoclaim": ("XAUTOCLAIM", key, PROBE_GROUP, me, 1, "0-0", "COUNT", 1),
            "xclaim": ("XCLAIM", key, PROBE_GROUP, me, 1, "0-0", "JUSTID"),
            "xinfo": ("XINFO", "GROUPS", key),
            "xtrim": ("XTRIM", key, "MINID", "0-0"),
            "xgroup": ("XGROUP", "DELCONSUMER", key, PROBE_GROUP, me),
            "time": ("TIME",),  # the shared rate limit's clock
            "get": ("GET", probe),  # tokens, leases, rates: keys under the stream's name
            "set": ("SET", probe, "v", "XX"),  # XX: sets nothing, the key does not exist
            "del": ("DEL", probe),
            "pexpire": ("PEXPIRE", probe, 1),
            "pttl": ("PTTL", probe),
            "hgetall": ("HGETALL", probe),
            "hdel": ("HDEL", probe, "f"),
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            for args in probes.values():
                pipe.execute_command(*args)
            with redis_errors():
                replies = await pipe.execute(raise_on_error=False)
        denied = [name for name, reply in zip(probes, replies, strict=True)
                  if isinstance(reply, Exception) and _is_noperm(reply)]
        for name, probe in (("evalsha", self._touch(keys=[key], args=[PROBE_GROUP, me])),
                            ("multi", self._multi_ack())):
            try:
                with redis_errors():
                    await probe
            except RedisUnavailable as exc:
                if exc.reply != "NOPERM":
                    raise
                denied.append(name)
        if denied:
            raise RedisUnavailable(
                f"the redis user lacks a permission: NOPERM for {', '.join(denied)} (iris needs "
                "+@stream +@scripting +@transaction +@string +@hash +@keyspace +@connection "
                "+time on the keys under its stream's name)", "NOPERM")

    async def _multi_ack(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.inbound, self.group, "0-0")  # acknowledges nothing
            await pipe.execute()

    async def ensure_group(self, key: str) -> None:
        """Create the group (and the stream) if missing; an existing group is fine."""
        try:
            with redis_errors():
                await self.redis.xgroup_create(key, self.group, id="0", mkstream=True)
        except RedisUnavailable as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, key: str, cursor: str, count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP from ``cursor`` (NEW or an id into this consumer's history)."""
        return (await self.read_many({key: cursor}, count, block_ms)).get(key, [])

    async def read_many(
        self, cursors: dict[str, str], count: int, block_ms: int | None
    ) -> dict[str, list[Entry]]:
        """One XREADGROUP over several streams (up to ``count`` entries from each)."""
        reply = await self._in_group(list(cursors), lambda: self.redis.xreadgroup(
            self.group, self.consumer, cursors, count=count, block=block_ms))
        return {key: entries for key, entries in reply or ()}

    async def _in_group(self, keys: list[str], command: Callable[[], Awaitable[T]]) -> T:
        """Run a command on our group; if the group vanished (NOGROUP), recreate it and run
        the command once more."""
        try:
            with redis_errors():
                return await command()
        except GroupMissing:
            for key in keys:
                await self.ensure_group(key)  # a Redis that refuses (a replica) raises here
            log.warning("consumer group %s vanished from %s; recreated it", self.group,
                        ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3
                                                else ""))
        with redis_errors():
            return await command()

    async def pending(self, key: str, after: str, count: int) -> list[tuple[Entry, int]]:
        """This consumer's pending entries after ``after`` (exclusive), with their delivery
        counts, WITHOUT counting a delivery (XREADGROUP from an id would): iris's own re-reads
        after a fault are not deliveries. A trimmed entry comes back with fields None."""
        rows = await self._in_group([key], lambda: self.redis.xpending_range(
            key, self.group, min=f"({after}", max="+", count=count, consumername=self.consumer))
        if not rows:
            return []
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xrange(key, row["message_id"], row["message_id"])
                found = await pipe.execute()
        return [((row["message_id"], entries[0][1] if entries else None), row["times_delivered"])
                for row, entries in zip(rows, found, strict=True)]

    async def commit(self, commit: Commit) -> None:
        """Dead letters, batches and inbound acks in one MULTI: all happen or none does."""
        with redis_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                for entry in commit.dead_letters:
                    pipe.xadd(self.dead_letters, entry)
                for key, fields in commit.batches:
                    pipe.xadd(key, fields)
                if commit.written:
                    pipe.hset(self.written_key, mapping=commit.written)
                if commit.unwritten:
                    pipe.hdel(self.written_key, *commit.unwritten)
                if commit.acks:
                    pipe.xack(self.inbound, self.group, *commit.acks)
                await pipe.execute()

    async def written(self, ids: list[str]) -> dict[str, set[str]]:
        """Which destinations already have each of ``ids`` written (only entries routed to
        several destinations, some of whose batches were written, are recorded)."""
        if not ids:
            return {}
        with redis_errors():
            found = await self.redis.hmget(self.written_key, ids)
        return {i: set(v.split(",")) for i, v in zip(ids, found, strict=True) if v}

    async def settle(
        self, key: str, entry_id: str, dead_letters: list[dict[str, str]] | None = None
    ) -> None:
        """Finish one outbound batch: its dead letters (if any), XACK and XDEL, atomically."""
        with redis_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                for entry in dead_letters or ():
                    pipe.xadd(self.dead_letters, entry)
                pipe.xack(key, self.group, entry_id)
                pipe.xdel(key, entry_id)
                await pipe.execute()

    async def claim(
        self, key: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[Entry], list[str]]:
        """Take over entries other consumers left pending ``min_idle_ms`` or more, from
        ``start`` (delivery counts rise: each is a delivery): (next start, "-" after the last
        page; the entries; ids of entries deleted from the stream, now acknowledged)."""
        reply = await self._in_group([key], lambda: self._claim(
            keys=[key], args=[self.group, self.consumer, min_idle_ms, start, count]))
        next_start, claimed, deleted = reply
        entries = [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                   for entry_id, flat in claimed]
        return next_start or "-", entries, list(deleted)

    async def redeliver(self, key: str, ids: list[str]) -> list[Entry]:
        """Deliver this consumer's own ``ids`` to it once more, counted (XCLAIM): for entries
        whose handling crashed. An entry deleted from the stream comes back as None (Redis has
        dropped it from the pending list)."""
        with redis_errors():
            found = dict(await self.redis.xclaim(key, self.group, self.consumer, 0, ids))
        return [(entry_id, found.get(entry_id)) for entry_id in ids]

    async def delivery_counts(self, key: str, ids: list[str]) -> dict[str, int]:
        """How many times each entry has been delivered to the group (XPENDING)."""
        if not ids:
            return {}
        wanted = set(ids)
        with redis_errors():
            rows = await self.redis.xpending_range(
                key, self.group, min=min(ids, key=_id_key), max=max(ids, key=_id_key),
                count=max(len(ids), 1000) * 2, consumername=self.consumer,
            )
        return {r["message_id"]: r["times_delivered"] for r in rows if r["message_id"] in wanted}

    async def touch(self, key: str, ids: list[str]) -> None:
        """Heartbeat for entries still being worked on, so no one reclaims them as abandoned."""
        with redis_errors():
            for i in range(0, len(ids), TOUCH_CHUNK):
                await self._touch(keys=[key], args=[self.group, self.consumer,
                                                    *ids[i:i + TOUCH_CHUNK]])

    async def page(self, key: str, start: str, count: int, end: str = "+") -> list[Entry]:
        """Entries of ``key`` from ``start`` to ``end`` (inclusive; ``(id`` for exclusive)."""
        with redis_errors():
            return await self.redis.xrange(key, min=start, max=end, count=count)

    async def last_id(self, key: str) -> str | None:
        """The id of the newest entry of ``key``, or None when it is empty."""
        with redis_errors():
            newest = await self.redis.xrevrange(key, count=1)
        return newest[0][0] if newest else None

    async def replay(self, items: list[tuple[str, dict[str, str]]]) -> None:
        """Re-inject events and delete their dead-letter entries, atomically."""
        with redis_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                for dlq_id, fields in items:
                    pipe.xadd(self.inbound, fields)
                    pipe.xdel(self.dead_letters, dlq_id)
                await pipe.execute()

    async def describe(self, key: str) -> dict[str, object]:
        """Length, groups and their consumers of one stream, for ``iris status``."""
        with redis_errors():
            if not await self.redis.exists(key):
                return {"stream": key, "length": 0, "groups": []}
            groups = []
            for group in await self.redis.xinfo_groups(key):
                consumers = await self.redis.xinfo_consumers(key, group["name"])
                lag = group.get("lag")
                if lag is None:
                    lag = await self._count_after(key, group.get("last-delivered-id") or "0-0")
                groups.append({
                    "group": group["name"], "pending": group.get("pending", 0),
                    "lag": lag, "last_delivered": group.get("last-delivered-id"),
                    "consumers": [{"name": c["name"], "pending": c.get("pending", 0),
                                   "idle_ms": c.get("idle", 0)} for c in consumers],
                })
            return {"stream": key, "length": await self.redis.xlen(key), "groups": groups}

    async def add(self, fields: dict[str, str]) -> str:
        """Produce one inbound event (``iris send``)."""
        with redis_errors():
            return await self.redis.xadd(self.inbound, fields)

    async def add_many(self, events: list[dict[str, str]]) -> list[str]:
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for fields in events:
                    pipe.xadd(self.inbound, fields)
                return await pipe.execute()

    async def group_stats(self, key: str) -> tuple[int, int, int | None] | None:
        """(length, pending, lag) of our group on ``key``, or None when it has no such group.

        Redis reports the lag as unknown (nil) after entries were deleted past the group's
        position; it is then counted here, or None when that would mean a long scan."""
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(key)
                pipe.xinfo_groups(key)
                length, groups = await pipe.execute(raise_on_error=False)
            if isinstance(groups, Exception):
                return None
            for group in groups:
                if group.get("name") == self.group:
                    lag = group.get("lag")
                    if lag is None:
                        lag = await self._count_after(key, group.get("last-delivered-id"))
                    return int(length), int(group.get("pending") or 0), lag
        return None

    async def _count_after(self, key: str, last_delivered: str | None,
                           limit: int = 10_000) -> int | None:
        """Entries after ``last_delivered``: XLEN minus those at or before it (few, on a trimmed
        inbound stream or an outbound stream whose delivered batches are deleted)."""
        length = await self.redis.xlen(key)
        if not last_delivered:
            return int(length)
        older = await self.redis.xrange(key, "-", last_delivered, count=limit + 1)
        return None if len(older) > limit else int(length) - len(older)

    async def trim(self, key: str) -> int:
        """Trim what every group of ``key`` has acknowledged; returns how many were trimmed."""
        with redis_errors():
            return int(await self._trim(keys=[key]))

    async def deleted_unread(self, key: str) -> tuple[str, int | None] | None:
        """Entries deleted from ``key`` before our group read them (a producer's MAXLEN or
        XTRIM, an XDEL): (the id that marks the loss, how many, when Redis can tell), or None.

        Trimmed from the head past the group's position: the group's last-delivered id is
        below the first entry, and of the entries ever added, some are neither in the stream
        nor read by the group. Deleted singly (XDEL) past its position: the newest deleted id
        is above its last-delivered id."""
        with redis_errors():
            info = await self.redis.xinfo_stream(key)
            groups = await self.redis.xinfo_groups(key)
        group = next((g for g in groups if g.get("name") == self.group), None)
        if group is None:
            return None
        last = _id_key(group.get("last-delivered-id") or "0-0")
        deleted = info.get("max-deleted-entry-id") or "0-0"
        if _id_key(deleted) > last:
            return deleted, None
        first = info.get("first-entry")
        if first is None or _id_key(first[0]) <= last:
            return None
        read = group.get("entries-read")
        if read is None and last != (0, 0):
            return None  # Redis cannot tell what the group read
        gone = int(info["entries-added"]) - int(info["length"]) - int(read or 0)
        return (first[0], gone) if gone > 0 else None

    async def drop_idle_consumers(self, key: str, idle_ms: int) -> int:
        """Remove the group's consumers that hold nothing and were idle ``idle_ms`` or more."""
        with redis_errors():
            return int(await self._drop_idle(keys=[key], args=[self.group, idle_ms,
                                                               self.consumer]))

    def rate_key(self, destination_id: str) -> str:
        """Where a destination's shared request rate is kept."""
        return f"{self.inbound}:rate:{destination_id}"

    async def take_rate(self, destination_id: str, interval_ms: float, burst: int,
                        wanted: int) -> tuple[int, float]:
        """Up to ``wanted`` request slots of the destination's shared rate: (granted, seconds
        to wait when none was)."""
        with redis_errors():
            granted, wait_ms = await self._rate(keys=[self.rate_key(destination_id)],
                                                args=[interval_ms, burst, wanted])
        return int(granted), int(wait_ms) / 1000

    async def hand_back(self, key: str, idle_ms: int) -> int:
        """At a clean stop: what this consumer holds on ``key`` goes to the others at once,
        without counting as a delivery. Returns how many entries it held."""
        with redis_errors():
            return int(await self._hand_back(keys=[key], args=[self.group, self.consumer,
                                                                idle_ms]))

    async def drop_own_consumer(self, key: str) -> bool:
        """Remove this worker's consumer from the group of ``key`` if it holds nothing."""
        with redis_errors():
            return bool(await self._drop_own(keys=[key], args=[self.group, self.consumer]))


def _is_noperm(reply: Exception) -> bool:
    translated = translate(reply)
    return translated is not None and translated.reply == "NOPERM"
