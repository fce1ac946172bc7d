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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from iris.config.model import RedisSettings
from iris.core.records import DeadLetter, OutboundBatch, Trimmed
from iris.errors import GroupMissing, RedisUnavailable
from iris.store import scripts as stream_scripts
from iris.store.atomic import Atomic, Commands
from iris.store.client import RedisClient, connect
from iris.store.errors import redis_errors
from iris.store.keys import Keys, id_key
from iris.store.replies import parse_xreadgroup
from iris.store.stats import StreamStats

__all__ = ["Commit", "Entry", "Pending", "RedisClient", "Settle", "Streams", "connect",
           "partitions"]  # ``connect`` lives in ``store.client``; it is kept importable here

log = logging.getLogger(__name__)
T = TypeVar("T")

Entry = tuple[str, dict[str, str]]  # (id, fields)
Pending = Entry | Trimmed  # an entry delivered to us, or its id if the stream no longer holds it
Settle = tuple[str, str, list[DeadLetter]]  # (outbound stream, entry id, its dead letters)
NEW = ">"  # read entries never delivered to this group
TOUCH_CHUNK = 500


@dataclass
class Commit:
    """What one consume round writes atomically: dead letters, closed batches, inbound acks;
    and the entries it acknowledges without delivery, by reason (counted once it is written)."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    batches: list[tuple[str, OutboundBatch]] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    written: dict[str, str] = field(default_factory=dict)  # entry → destinations that have it
    unwritten: list[str] = field(default_factory=list)  # entries no longer to keep track of

    def __bool__(self) -> bool:
        return bool(self.dead_letters or self.batches or self.acks or self.written)


class Streams:
    """Stream keys and operations for one inbound stream (the configured one, or one of its
    partitions: ``keys``) and group.

    ``consumer`` is this worker's consumer name; the identity lease may change it at start."""

    def __init__(self, redis: RedisClient, config: RedisSettings, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys.partitions(config)[0]
        self.inbound = self.keys.inbound
        self.group = config.stream.group
        self.consumer = config.consumer
        self.dead_letters = self.keys.dead_letters
        self.written_key = self.keys.written  # see ``Commit.written``
        self.stats = StreamStats(redis, self.group)
        # reads come back as ``{stream: entries}`` (``store.replies``); on a cluster client
        # the callbacks are one dict, shared by every node's connections
        redis.set_response_callback("XREADGROUP", parse_xreadgroup)
        self._touch = self.redis.register_script(stream_scripts.TOUCH_OWNED)
        self._claim = self.redis.register_script(stream_scripts.CLAIM_ABANDONED)
        self._trim = self.redis.register_script(stream_scripts.TRIM_ACKNOWLEDGED)
        self._drop_idle = self.redis.register_script(stream_scripts.DROP_IDLE_CONSUMERS)
        self._drop_own = self.redis.register_script(stream_scripts.DROP_OWN_CONSUMER)
        self._hand_back = self.redis.register_script(stream_scripts.HAND_BACK)
        self._rate = self.redis.register_script(stream_scripts.TAKE_RATE)
        self._drop_empty = self.redis.register_script(stream_scripts.DROP_EMPTY_STREAM)
        self._atomic = Atomic(redis)

    @property
    def partition(self) -> str:
        """This partition's inbound stream with partitions, else "" (one stream)."""
        return "" if self.inbound == self.keys.base else self.inbound

    @property
    def where(self) -> str:
        """`` (<partition's inbound stream>)`` with partitions, else nothing: for the names of
        the loops that work on one partition (each reports its Redis faults apart)."""
        return f" ({self.partition})" if self.partition else ""

    def outbound(self, destination_id: str) -> str:
        """The per-destination stream of closed batches: a failing partner's backlog waits here."""
        return self.keys.outbound(destination_id)

    def all_keys(self, destination_ids: Iterable[str]) -> list[str]:
        """The inbound stream, then each destination's outbound stream."""
        return [self.inbound, *(self.outbound(d) for d in destination_ids)]

    async def ping(self) -> None:
        with redis_errors():
            await self.redis.ping()

    async def ensure_group(self, key: str) -> None:
        """Create the group (and the stream) if missing; an existing group is fine."""
        try:
            with redis_errors():
                await self.redis.xgroup_create(key, self.group, id="0", mkstream=True)
        except RedisUnavailable as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, key: str, count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP of entries never delivered to the group."""
        return (await self.read_many([key], count, block_ms)).get(key, [])

    async def read_many(
        self, keys: list[str], count: int, block_ms: int | None
    ) -> dict[str, list[Entry]]:
        """One XREADGROUP of new entries over several streams (up to ``count`` from each)."""
        reply: dict[str, list[Entry]] = await self._in_group(keys, lambda: self.redis.xreadgroup(
            self.group, self.consumer, dict.fromkeys(keys, NEW), count=count, block=block_ms))
        return reply

    async def read_history(self, key: str, after: str, count: int) -> list[Pending]:
        """XREADGROUP of this consumer's pending entries after ``after`` (each counts as a
        delivery); an entry the stream no longer holds comes back as ``Trimmed``."""
        reply = await self._in_group([key], lambda: self.redis.xreadgroup(
            self.group, self.consumer, {key: after}, count=count))
        return [_pending(entry_id, fields) for entries in reply.values()
                for entry_id, fields in entries]

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

    async def pending(self, key: str, after: str, count: int) -> list[tuple[Pending, int]]:
        """This consumer's pending entries after ``after`` (exclusive), with their delivery
        counts, WITHOUT counting a delivery (XREADGROUP from an id would): iris's own re-reads
        after a fault are not deliveries. A trimmed entry comes back as ``Trimmed``."""
        rows = await self._in_group([key], lambda: self.redis.xpending_range(
            key, self.group, min=f"({after}", max="+", count=count, consumername=self.consumer))
        if not rows:
            return []
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xrange(key, row["message_id"], row["message_id"])
                found = await pipe.execute()
        return [(_pending(row["message_id"], entries[0][1] if entries else None),
                 row["times_delivered"]) for row, entries in zip(rows, found, strict=True)]

    async def commit(self, commit: Commit) -> None:
        """Dead letters, batches and inbound acks as one atomic command (``store.atomic``): all
        happen or none does, and the acknowledgement comes last."""
        commands = Commands()
        for entry in commit.dead_letters:
            commands.add("XADD", self.dead_letters, "*", *_flat(entry.encode()))
        for key, batch in commit.batches:
            commands.add("XADD", key, "*", *_flat(batch.encode()))
        if commit.written:
            commands.add_each("HSET", self.written_key, (), _flat(commit.written))
        if commit.unwritten:
            commands.add_each("HDEL", self.written_key, (), commit.unwritten)
        if commit.acks:
            commands.add_each("XACK", self.inbound, (self.group,), commit.acks)
        await self._atomic.run(commands)

    async def written(self, ids: list[str]) -> dict[str, set[str]]:
        """Which destinations already have each of ``ids`` written (only entries routed to
        several destinations, some of whose batches were written, are recorded)."""
        if not ids:
            return {}
        with redis_errors():
            found = await self.redis.hmget(self.written_key, ids)
        return {i: set(v.split(",")) for i, v in zip(ids, found, strict=True) if v}

    async def settle_many(self, settles: list[Settle]) -> None:
        """Finish outbound batches, of one stream or several, as one atomic command: their dead
        letters first, then one XACK and one XDEL per stream."""
        commands = Commands()
        ids: dict[str, list[str]] = {}
        for key, entry_id, dead_letters in settles:
            ids.setdefault(key, []).append(entry_id)
            for entry in dead_letters:
                commands.add("XADD", self.dead_letters, "*", *_flat(entry.encode()))
        for key, entry_ids in ids.items():
            commands.add_each("XACK", key, (self.group,), entry_ids)
            commands.add_each("XDEL", key, (), entry_ids)
        await self._atomic.run(commands)

    async def claim(
        self, key: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[Entry], list[str]]:
        """Take over entries other consumers left pending ``min_idle_ms`` or more, from
        ``start`` (delivery counts rise: each is a delivery): (next start, "-" after the last
        page; the entries; ids of entries deleted from the stream, now acknowledged)."""
        reply = await self._in_group([key], lambda: self._claim(
            keys=[key], args=[self.group, self.consumer, min_idle_ms, start, count]))
        next_start, claimed, deleted = reply
        entries: list[Entry] = [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                                for entry_id, flat in claimed]
        return str(next_start or "-"), entries, [str(d) for d in deleted]

    async def redeliver(self, key: str, ids: list[str]) -> list[Pending]:
        """Deliver this consumer's own ``ids`` to it once more, counted (XCLAIM): for entries
        whose handling crashed. An entry deleted from the stream comes back as ``Trimmed``
        (Redis has dropped it from the pending list)."""
        with redis_errors():
            found = dict(await self.redis.xclaim(key, self.group, self.consumer, 0, ids))
        return [_pending(entry_id, found.get(entry_id)) for entry_id in ids]

    async def delivery_counts(self, key: str, ids: list[str]) -> dict[str, int]:
        """How many times each entry has been delivered to the group (XPENDING)."""
        if not ids:
            return {}
        wanted = set(ids)
        with redis_errors():
            rows = await self.redis.xpending_range(
                key, self.group, min=min(ids, key=id_key), max=max(ids, key=id_key),
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
            entries: list[Entry] = await self.redis.xrange(key, min=start, max=end, count=count)
        return entries

    async def last_id(self, key: str) -> str | None:
        """The id of the newest entry of ``key``, or None when it is empty."""
        with redis_errors():
            newest = await self.redis.xrevrange(key, count=1)
        return newest[0][0] if newest else None

    async def replay(self, items: list[tuple[str, dict[str, str]]]) -> None:
        """Re-inject events and delete their dead-letter entries, atomically."""
        commands = Commands()
        for dlq_id, fields in items:
            commands.add("XADD", self.inbound, "*", *_flat(fields))
            commands.add("XDEL", self.dead_letters, dlq_id)
        await self._atomic.run(commands)

    async def add(self, fields: dict[str, str]) -> str:
        """Produce one inbound event (``iris send``)."""
        with redis_errors():
            return str(await self.redis.xadd(self.inbound, fields))

    async def add_many(self, events: list[dict[str, str]]) -> list[str]:
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for fields in events:
                    pipe.xadd(self.inbound, fields)
                return [str(entry_id) for entry_id in await pipe.execute()]

    async def lengths(self, keys: list[str]) -> dict[str, int]:
        """XLEN of each of ``keys`` that holds entries: one EXISTS for all (one command on a
        single Redis), then, only if some exist, one pipeline of XLEN."""
        with redis_errors():
            if not keys or not await self.redis.exists(*keys):
                return {}
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xlen(key)
                found = await pipe.execute(raise_on_error=False)
        return {key: n for key, n in zip(keys, found, strict=True) if isinstance(n, int) and n}

    async def remove(self, key: str, ids: list[str]) -> None:
        """XDEL ``ids`` from ``key``."""
        with redis_errors():
            await self.redis.xdel(key, *ids)

    async def drop_if_empty(self, key: str) -> bool:
        """Delete ``key`` if it is an empty stream no group holds anything of: its groups'
        counters would report a lag that can never be read (Redis keeps ``entries-read``
        behind after entries were deleted unread). True if deleted."""
        with redis_errors():
            return bool(await self._drop_empty(keys=[key]))

    async def trim(self, key: str) -> int:
        """Trim what every group of ``key`` has acknowledged; returns how many were trimmed."""
        with redis_errors():
            return int(await self._trim(keys=[key]))

    async def drop_idle_consumers(self, key: str, idle_ms: int) -> int:
        """Remove the group's consumers that hold nothing and were idle ``idle_ms`` or more."""
        with redis_errors():
            return int(await self._drop_idle(keys=[key], args=[self.group, idle_ms,
                                                               self.consumer]))

    async def take_rate(self, destination_id: str, interval_ms: float, burst: int,
                        wanted: int) -> tuple[int, float]:
        """Up to ``wanted`` request slots of the destination's shared rate: (granted, seconds
        to wait when none was)."""
        with redis_errors():
            granted, wait_ms = await self._rate(keys=[self.keys.rate(destination_id)],
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


def partitions(redis: RedisClient, config: RedisSettings) -> list[Streams]:
    """One ``Streams`` per partition of the configured stream, partition 0 first."""
    return [Streams(redis, config, keys) for keys in Keys.partitions(config)]


def _pending(entry_id: str, fields: dict[str, str] | None) -> Pending:
    """Redis returns an entry deleted from the stream, but still pending, with no fields."""
    return (entry_id, fields) if fields else Trimmed(entry_id)


def _flat(fields: Mapping[str, str | bytes]) -> list[str | bytes]:
    """A mapping as the field and value words of XADD or HSET."""
    return [word for pair in fields.items() for word in pair]
