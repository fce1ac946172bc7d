"""Crash recovery for one stream, as seen by this consumer.

- History: what this consumer holds (read, not acknowledged) is read back page by page. At the
  start of a loop this counts as a delivery (the loop that held them before crashed); after a
  Redis fault it does not (``Streams.pending``): iris's own re-reads are not deliveries.
- Reclaim: a periodic claim takes over entries that another consumer left pending longer than
  ``claim_idle_ms`` (it died, or froze). Entries come back with their fields, and the claim
  raises their delivery count. This consumer's own idle entries are left to its history pass.
- Heartbeat: entries this consumer still works on (an open batch, a batch in its retries) are
  touched every third of ``claim_idle_ms``, so a long retry sequence is never mistaken for a
  dead consumer. A heartbeat that fails is tried again at the next call.
- Delivery count: an entry delivered more than ``max_deliveries`` times (it crashed or hung
  its consumer every time) is handed back for the dead-letter stream instead of being tried
  again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from iris.config.model import StreamConfig
from iris.core.records import Trimmed
from iris.errors import RedisUnavailable
from iris.store.errors import Reporter
from iris.store.streams import NEW, Entry, Pending, Streams

START = "0-0"  # a history cursor before every entry
HEARTBEAT_RETRY = 1.0  # seconds before a failed heartbeat is tried again


@dataclass
class Recovered:
    entries: list[Entry] = field(default_factory=list)  # to process (again)
    over_limit: list[Entry] = field(default_factory=list)  # to dead-letter: max_deliveries
    trimmed: list[str] = field(default_factory=list)  # gone from the stream; nothing to deliver


@dataclass
class History:
    """Where a pass over this consumer's pending entries stands."""

    cursor: str = START  # the last id read; NEW once the pass is over
    counted: bool = True  # a loop's first pass counts as a delivery; a pass after a fault not

    @property
    def done(self) -> bool:
        return self.cursor == NEW

    def restart(self) -> None:
        """After a Redis fault: read everything held again, without counting a delivery."""
        self.cursor, self.counted = START, False


class Recovery:
    def __init__(self, streams: Streams, key: str, config: StreamConfig,
                 beats: Reporter) -> None:
        self._streams = streams
        self._key = key
        self._config = config
        self._beats = beats  # the heartbeat reports on its own: it never stops its loop
        idle = config.claim_idle_ms / 1000
        self._claim_every, self._touch_every = idle / 2, idle / 3
        now = time.monotonic()
        self._next_claim, self._next_touch = now + self._claim_every, now + self._touch_every
        self._cursor = "-"  # where the next claim starts (XPENDING range, inclusive)

    @property
    def max_deliveries(self) -> int:
        return self._config.max_deliveries

    @property
    def touch_every(self) -> float:
        return self._touch_every

    async def history(self, history: History, count: int,
                      held: Collection[str] = ()) -> Recovered:
        """The next page of this consumer's pending entries (``held`` ones left out: they are
        being worked on); moves ``history.cursor`` on, to NEW after the last page."""
        if history.counted:
            page = await self._streams.read_history(self._key, history.cursor, count)
            counts = await self._streams.delivery_counts(self._key, _live_ids(page))
        else:
            rows = await self._streams.pending(self._key, history.cursor, count)
            page = [entry for entry, _ in rows]
            counts = {_id(entry): times for entry, times in rows}
        history.cursor = _id(page[-1]) if len(page) >= count else NEW
        return self._sort([e for e in page if _id(e) not in held], counts)

    async def heartbeat(self, held: Callable[[], Collection[str]]) -> None:
        """Touch the entries ``held()`` names, when a heartbeat is due. A failure is reported
        (readiness) and tried again a second later; it never interrupts the caller's work."""
        now = time.monotonic()
        if now < self._next_touch:
            return
        try:
            if ids := held():
                await self._streams.touch(self._key, list(ids))
        except RedisUnavailable as exc:
            self._next_touch = now + min(HEARTBEAT_RETRY, self._touch_every)
            self._beats.noted(exc)
            return
        self._next_touch = now + self._touch_every
        self._beats.ok()

    def seconds_to_chores(self, *, claim: bool = True) -> float:
        """Seconds until the next heartbeat (or claim, if ``claim``) is due."""
        due = min(self._next_touch, self._next_claim) if claim else self._next_touch
        return max(0.0, due - time.monotonic())

    async def reclaim(self, count: int, held: Callable[[], Collection[str]]) -> Recovered | None:
        """Entries abandoned by other consumers, when a claim is due; else None. ``held()``
        names the entries the caller works on (asked only when a claim runs)."""
        now = time.monotonic()
        if now < self._next_claim:
            return None
        cursor, entries, trimmed = await self._streams.claim(
            self._key, self._config.claim_idle_ms, self._cursor, count
        )
        # a full page: more abandoned entries wait, claimed at the caller's next round
        self._cursor = cursor
        self._next_claim = now if cursor != "-" else now + self._claim_every
        ours = held()
        live = [e for e in entries if e[0] not in ours]
        counts = await self._streams.delivery_counts(self._key, [i for i, f in live if f])
        recovered = self._sort(live, counts)
        recovered.trimmed.extend(trimmed)
        return recovered

    async def redeliver(self, ids: list[str]) -> Recovered:
        """Entries whose handling crashed, delivered once more (counted), sorted."""
        entries = await self._streams.redeliver(self._key, ids)
        counts = await self._streams.delivery_counts(self._key, _live_ids(entries))
        return self._sort(entries, counts)

    def _sort(self, entries: Sequence[Pending], counts: dict[str, int]) -> Recovered:
        """Split re-delivered entries into those to retry, to dead-letter, and trimmed ones."""
        recovered = Recovered()
        limit = self._config.max_deliveries
        for entry in entries:
            if isinstance(entry, Trimmed):
                recovered.trimmed.append(entry.id)
            elif counts.get(entry[0], 0) > limit:
                recovered.over_limit.append(entry)
            else:
                recovered.entries.append(entry)
        return recovered


def _id(entry: Pending) -> str:
    return entry.id if isinstance(entry, Trimmed) else entry[0]


def _live_ids(entries: Sequence[Pending]) -> list[str]:
    return [entry[0] for entry in entries if not isinstance(entry, Trimmed)]
