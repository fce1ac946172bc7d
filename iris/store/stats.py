"""What a stream and our consumer group hold, for metrics, ``iris status`` and upkeep: length,
pending, lag (counted when Redis cannot tell), and entries deleted before the group read them.
"""

from __future__ import annotations

from iris.store.client import RedisClient
from iris.store.errors import redis_errors
from iris.store.keys import id_key


class StreamStats:
    def __init__(self, redis: RedisClient, group: str) -> None:
        self.redis = redis
        self.group = group

    async def describe(self, key: str) -> dict[str, object]:
        """Length, groups and their consumers of one stream, for ``iris status``."""
        with redis_errors():
            if not await self.redis.exists(key):
                return {"stream": key, "length": 0, "groups": []}
            groups = []
            length = int(await self.redis.xlen(key))
            for group in await self.redis.xinfo_groups(key):
                consumers = await self.redis.xinfo_consumers(key, group["name"])
                groups.append({
                    "group": group["name"], "pending": group.get("pending", 0),
                    "lag": await self._lag(key, group, length),
                    "last_delivered": group.get("last-delivered-id"),
                    "consumers": [{"name": c["name"], "pending": c.get("pending", 0),
                                   "idle_ms": c.get("idle", 0)} for c in consumers],
                })
            return {"stream": key, "length": length, "groups": groups}

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
                    lag = await self._lag(key, group, int(length))
                    return int(length), int(group.get("pending") or 0), lag
        return None

    async def _lag(self, key: str, group: dict[str, object], length: int) -> int | None:
        """The group's lag: Redis's, or counted when Redis cannot tell (None if that would
        take a long scan). An entry not read yet is in the stream, so never more than its
        length: Redis's count runs ahead after entries were deleted unread (``entries-read``
        is not moved past them)."""
        lag = group.get("lag")
        if lag is None:
            last = group.get("last-delivered-id")
            lag = await self._count_after(key, str(last) if last else None)
        return None if lag is None else min(int(str(lag)), length)

    async def _count_after(self, key: str, last_delivered: str | None,
                           limit: int = 10_000) -> int | None:
        """Entries after ``last_delivered``: XLEN minus those at or before it (few, on a trimmed
        inbound stream or an outbound stream whose delivered batches are deleted)."""
        length = await self.redis.xlen(key)
        if not last_delivered:
            return int(length)
        older = await self.redis.xrange(key, "-", last_delivered, count=limit + 1)
        return None if len(older) > limit else int(length) - len(older)

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
        last = id_key(group.get("last-delivered-id") or "0-0")
        deleted = info.get("max-deleted-entry-id") or "0-0"
        if id_key(deleted) > last:
            return deleted, None
        first = info.get("first-entry")
        if first is None or id_key(first[0]) <= last:
            return None
        read = group.get("entries-read")
        if read is None and last != (0, 0):
            return None  # Redis cannot tell what the group read
        gone = int(info["entries-added"]) - int(info["length"]) - int(read or 0)
        return (first[0], gone) if gone > 0 else None
