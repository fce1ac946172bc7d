"""The Redis stream adapter: key names, consumer groups, reads, atomic commits and acks.

This is the only module that talks redis-py; it turns connection faults into
``RedisUnavailable`` and recreates a consumer group that vanished (``NOGROUP``) after a Redis
restart without persistence.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from iris.config import Config
from iris.errors import RedisUnavailable

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str] | None]  # (id, fields); fields None: trimmed before delivery
NEW = ">"  # read entries never delivered to this group
HISTORY = "0"  # re-read this consumer's own pending entries
TOUCH_CHUNK = 500

# Reset the idle time of entries this consumer still holds, without taking any that another
# consumer has claimed meanwhile (a plain XCLAIM would steal them back). JUSTID: a heartbeat is
# not a delivery, so the delivery counter stays as it is.
TOUCH_OWNED = """
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then owned[#owned + 1] = ARGV[i] end
end
if #owned > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(owned) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return #owned
"""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@asynccontextmanager
async def unavailable_as_error() -> AsyncIterator[None]:
    """redis-py's connection faults as ``RedisUnavailable``, the one type iris's loops handle."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError) as exc:
        raise RedisUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from None


def connect(config: Config) -> aioredis.Redis:
    """A client whose socket timeout outlasts the blocking read.

    redis-py's own retry is off on purpose: it re-sends a command whose reply was lost, and a
    re-sent MULTI writes its batches twice. Every caller retries explicitly instead, with
    backoff (``Health.redis_failed``), and re-reads its pending list, which is exact.
    """
    return aioredis.Redis.from_url(
        config.redis.url,
        decode_responses=True,
        encoding_errors="surrogateescape",  # invalid UTF-8 reaches the parser, which refuses it
        socket_timeout=config.redis_socket_timeout,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), retries=0),
        health_check_interval=30,
    )


@dataclass
class Commit:
    """What one consume round writes atomically: dead letters, closed batches, inbound acks."""

    dead_letters: list[dict[str, str]] = field(default_factory=list)
    batches: list[tuple[str, dict[str, str | bytes]]] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.dead_letters or self.batches or self.acks)


class Streams:
    """Stream keys and operations for one configured inbound stream and group."""

    def __init__(self, redis: aioredis.Redis, config: Config) -> None:
        self.redis = redis
        self.inbound = config.stream.key
        self.group = config.stream.group
        self.consumer = config.consumer
        self.dead_letters = f"{self.inbound}:dlq"
        self._touch = self.redis.register_script(TOUCH_OWNED)

    def outbound(self, destination_id: str) -> str:
        """The per-destination stream of closed batches: a failing partner's backlog waits here."""
        return f"{self.inbound}:out:{destination_id}"

    def all_keys(self, destination_ids: Iterable[str]) -> list[str]:
        """The inbound stream, then each destination's outbound stream."""
        return [self.inbound, *(self.outbound(d) for d in destination_ids)]

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            async with unavailable_as_error():
                yield
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis restarted without persistence: the next read recreates the group.
            raise RedisUnavailable(f"consumer group missing: {exc}") from None

    async def ping(self) -> None:
        async with self._translated():
            await self.redis.ping()

    async def ensure_group(self, key: str) -> None:
        """Create the group (and the stream) if missing; an existing group is fine."""
        async with self._translated():
            try:
                await self.redis.xgroup_create(key, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, key: str, cursor: str, count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP from ``cursor`` (NEW or an id into this consumer's history)."""
        for attempt in (1, 2):
            async with self._translated():
                try:
                    reply = await self.redis.xreadgroup(
                        self.group, self.consumer, {key: cursor}, count=count, block=block_ms
                    )
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc) or attempt == 2:
                        raise
                    log.warning("consumer group %s on %s vanished; recreating it", self.group, key)
                    await self.ensure_group(key)
                    continue
            return reply[0][1] if reply else []
        return []

    async def commit(self, commit: Commit) -> None:
        """Dead letters, batches and inbound acks in one MULTI: all happen or none does."""
        async with self._translated(), self.redis.pipeline(transaction=True) as pipe:
            for entry in commit.dead_letters:
                pipe.xadd(self.dead_letters, entry)
            for key, fields in commit.batches:
                pipe.xadd(key, fields)
            if commit.acks:
                pipe.xack(self.inbound, self.group, *commit.acks)
            await pipe.execute()

    async def settle(
        self, key: str, entry_id: str, dead_letters: list[dict[str, str]] | None = None
    ) -> None:
        """Finish one outbound batch: its dead letters (if any), XACK and XDEL, atomically."""
        async with self._translated(), self.redis.pipeline(transaction=True) as pipe:
            for entry in dead_letters or ():
                pipe.xadd(self.dead_letters, entry)
            pipe.xack(key, self.group, entry_id)
            pipe.xdel(key, entry_id)
            await pipe.execute()

    async def claim(
        self, key: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[Entry], list[str]]:
        """XAUTOCLAIM (with the entries, so delivery counts rise): (next start, entries, ids of
        entries trimmed away, which Redis has already dropped from the pending list)."""
        async with self._translated():
            reply = await self.redis.xautoclaim(
                key, self.group, self.consumer, min_idle_ms, start_id=start, count=count
            )
        next_start, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        return next_start, [(i, f) for i, f in entries if i is not None], list(deleted)

    async def delivery_counts(self, key: str, ids: list[str]) -> dict[str, int]:
        """How many times each entry has been delivered to the group (XPENDING)."""
        if not ids:
            return {}
        wanted = set(ids)
        async with self._translated():
            rows = await self.redis.xpending_range(
                key, self.group, min=min(ids, key=_id_key), max=max(ids, key=_id_key),
                count=max(len(ids), 1000) * 2, consumername=self.consumer,
            )
        return {r["message_id"]: r["times_delivered"] for r in rows if r["message_id"] in wanted}

    async def touch(self, key: str, ids: list[str]) -> None:
        """Heartbeat for entries still being worked on, so no one reclaims them as abandoned."""
        async with self._translated():
            for i in range(0, len(ids), TOUCH_CHUNK):
                await self._touch(keys=[key], args=[self.group, self.consumer,
                                                    *ids[i:i + TOUCH_CHUNK]])

    async def page(self, key: str, start: str, count: int) -> list[Entry]:
        """Entries of ``key`` from ``start`` (inclusive; ``(id`` for exclusive), oldest first."""
        async with self._translated():
            return await self.redis.xrange(key, min=start, count=count)

    async def replay(self, items: list[tuple[str, dict[str, str]]]) -> None:
        """Re-inject events and delete their dead-letter entries, atomically."""
        async with self._translated(), self.redis.pipeline(transaction=True) as pipe:
            for dlq_id, fields in items:
                pipe.xadd(self.inbound, fields)
                pipe.xdel(self.dead_letters, dlq_id)
            await pipe.execute()

    async def describe(self, key: str) -> dict[str, object]:
        """Length, groups and their consumers of one stream, for ``iris status``."""
        async with self._translated():
            if not await self.redis.exists(key):
                return {"stream": key, "length": 0, "groups": []}
            groups = []
            for group in await self.redis.xinfo_groups(key):
                consumers = await self.redis.xinfo_consumers(key, group["name"])
                groups.append({
                    "group": group["name"], "pending": group.get("pending", 0),
                    "lag": group.get("lag"), "last_delivered": group.get("last-delivered-id"),
                    "consumers": [{"name": c["name"], "pending": c.get("pending", 0),
                                   "idle_ms": c.get("idle", 0)} for c in consumers],
                })
            return {"stream": key, "length": await self.redis.xlen(key), "groups": groups}

    async def add(self, fields: dict[str, str]) -> str:
        """Produce one inbound event (``iris send``)."""
        async with self._translated():
            return await self.redis.xadd(self.inbound, fields)

    async def add_many(self, events: list[dict[str, str]]) -> list[str]:
        async with self._translated(), self.redis.pipeline(transaction=False) as pipe:
            for fields in events:
                pipe.xadd(self.inbound, fields)
            return await pipe.execute()

    async def group_stats(self, key: str) -> tuple[int, int] | None:
        """(pending, lag) of our group on ``key`` from XINFO GROUPS, or None if it has none."""
        async with self._translated():
            try:
                groups = await self.redis.xinfo_groups(key)
            except ResponseError:
                return None
        for group in groups:
            if group.get("name") == self.group:
                return int(group.get("pending") or 0), int(group.get("lag") or 0)
        return None
