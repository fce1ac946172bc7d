"""Crash recovery for one stream, as seen by this consumer.

- Reclaim: a periodic XAUTOCLAIM takes over entries that another consumer left pending longer
  than ``claim_idle_ms`` (it died, or froze). Entries come back with their fields, and the claim
  raises their delivery count.
- Heartbeat: entries this consumer still works on (an open batch, a batch in its retries) are
  touched every third of ``claim_idle_ms``, so a long retry sequence is never mistaken for a
  dead consumer.
- Delivery count: an entry delivered more than ``max_deliveries`` times (it crashed its
  consumer every time) is handed back for the dead-letter stream instead of being tried again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from iris.config import StreamConfig
from iris.streams import Entry, Streams


@dataclass
class Recovered:
    entries: list[Entry] = field(default_factory=list)  # to process (again)
    over_limit: list[Entry] = field(default_factory=list)  # to dead-letter: max_deliveries
    trimmed: list[str] = field(default_factory=list)  # gone from the stream; nothing to deliver


class Recovery:
    def __init__(self, streams: Streams, key: str, config: StreamConfig) -> None:
        self._streams = streams
        self._key = key
        self._config = config
        idle = config.claim_idle_ms / 1000
        self._claim_every, self._touch_every = idle / 2, idle / 3
        now = time.monotonic()
        self._next_claim, self._next_touch = now + self._claim_every, now + self._touch_every
        self._cursor = "0-0"

    @property
    def max_deliveries(self) -> int:
        return self._config.max_deliveries

    async def heartbeat(self, held: Callable[[], Collection[str]]) -> None:
        """Touch the entries ``held()`` names, when a heartbeat is due."""
        now = time.monotonic()
        if now < self._next_touch:
            return
        self._next_touch = now + self._touch_every
        if ids := held():
            await self._streams.touch(self._key, list(ids))

    async def reclaim(self, count: int) -> Recovered | None:
        """Entries abandoned by other consumers, when a claim is due; else None."""
        now = time.monotonic()
        if now < self._next_claim:
            return None
        self._next_claim = now + self._claim_every
        self._cursor, entries, trimmed = await self._streams.claim(
            self._key, self._config.claim_idle_ms, self._cursor, count
        )
        recovered = await self.sort(entries)
        recovered.trimmed.extend(trimmed)
        return recovered

    async def sort(self, entries: list[Entry]) -> Recovered:
        """Split re-delivered entries into those to retry, to dead-letter, and trimmed ones."""
        recovered = Recovered()
        live = []
        for entry_id, fields in entries:
            if fields:
                live.append((entry_id, fields))
            else:
                recovered.trimmed.append(entry_id)
        counts = await self._streams.delivery_counts(self._key, [e[0] for e in live])
        limit = self._config.max_deliveries
        for entry in live:
            over = counts.get(entry[0], 0) > limit
            (recovered.over_limit if over else recovered.entries).append(entry)
        return recovered
