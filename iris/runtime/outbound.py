"""The worker's one shared read of the outbound streams.

Each destination's publisher reads its own stream while it has a backlog; once it has caught up,
the wait for the next batch is shared: one blocking XREADGROUP over the streams of every
publisher with a free slot, as many batches per stream as every one of them has room for,
handed to its publisher. So a worker
holds one Redis connection in a blocking read for all its destinations, not one each, and a
batch written by any worker reaches an idle publisher at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from iris.errors import RedisUnavailable
from iris.runtime.health import Health
from iris.runtime.publisher import Publisher
from iris.store.streams import Streams


class OutboundReader:
    def __init__(self, streams: Streams, publishers: Sequence[Publisher], block_ms: int,
                 health: Health) -> None:
        self._streams = streams
        self._publishers = publishers
        self._block_ms = block_ms
        self._retry = health.retry(f"publish: shared read{streams.where}")
        self._changed = asyncio.Event()  # some publisher may want batches now
        for publisher in publishers:
            publisher.wants_changed = self._changed
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        while not self.stopping.is_set():
            self._changed.clear()
            waiting = {p.key: p for p in self._publishers if p.wants()}
            if not waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self._block_ms / 1000)
                continue
            try:
                room = min(p.room() for p in waiting.values())  # COUNT is per stream
                taken = await self._streams.read_many(list(waiting), room, self._block_ms)
            except RedisUnavailable as exc:
                await self._retry.failed(exc)
                continue
            self._retry.ok()
            for key, entries in taken.items():
                waiting[key].hand(entries)
