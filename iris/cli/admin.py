"""Operator commands over Redis: the dead-letter stream (list, replay) and ``iris status``.

Each takes every partition of the stream (``store.streams.partitions``: one without
partitions), and covers them all: a partition's dead letters are replayed into its own inbound
stream, where the same events belong."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypedDict

from iris.core.partitions import by_partition
from iris.core.records import DeadLetter
from iris.store.streams import Streams

PAGE = 500
PROGRESS_EVERY = 10_000

DeadLetterEntry = tuple[str, dict[str, str]]  # (entry id, fields); one trimmed unread has {}


class DeadLetterCount(TypedDict):
    destination: str
    reason: str
    count: int


class DeadLetterSummary(TypedDict):
    stream: str  # the dead-letter stream; with partitions, ``<stream.key>:{0..P-1}:dlq``
    total: int
    by: list[DeadLetterCount]


class StatusReport(TypedDict):
    """What ``iris status`` shows (``--json`` prints it as is)."""

    streams: list[dict[str, Any]]  # ``StreamStats.describe`` of each stream
    unread: dict[str, int]  # streams no worker reads that hold entries → how many
    dead_letters: DeadLetterSummary


async def every_dead_letter(
    partitions: list[Streams], *, destination: str | None = None, reason: str | None = None,
    limit: int | None = None,
) -> AsyncIterator[tuple[Streams, DeadLetterEntry]]:
    """The dead letters of every partition, partition by partition, each oldest first, up to
    ``limit`` in all: with the partition each belongs to."""
    found = 0
    for streams in partitions:
        left = None if limit is None else limit - found
        if left is not None and left <= 0:
            return
        async for entry in dead_letters(streams, destination=destination, reason=reason,
                                        limit=left):
            found += 1
            yield streams, entry


async def dead_letters(
    streams: Streams, *, destination: str | None = None, reason: str | None = None,
    limit: int | None = None, end: str = "+",
) -> AsyncIterator[DeadLetterEntry]:
    """Dead-letter entries of one partition up to ``end``, oldest first, filtered by
    destination and reason."""
    start, found = "-", 0
    while limit is None or found < limit:
        page = await streams.page(streams.dead_letters, start, PAGE, end)
        if not page:
            return
        for entry_id, stored in page:
            fields = stored or {}
            dead = DeadLetter.decode(fields)
            if destination is not None and dead.destination != destination:
                continue
            if reason is not None and dead.reason != reason:
                continue
            found += 1
            yield entry_id, fields
            if limit is not None and found >= limit:
                return
        start = f"({page[-1][0]}"


def original_event(fields: dict[str, str]) -> dict[str, str]:
    """The event to re-inject: its own fields, aimed only at the destination that failed it."""
    dead = DeadLetter.decode(fields)
    event = dict(dead.event)
    if dead.destination:
        event["destination"] = dead.destination
    return event


async def replay(
    partitions: list[Streams], *, destination: str | None = None, reason: str | None = None,
    limit: int | None = None, dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-inject matching dead letters into their partition's inbound stream and remove them;
    returns how many, ``limit`` at most in all.

    Only the dead letters present when it starts are replayed, each at most once: events that
    fail again while it runs are dead-lettered behind that point and wait for the next replay.
    ``progress`` is told the running count every ``PROGRESS_EVERY`` events."""
    total = 0
    for streams in partitions:
        left = None if limit is None else limit - total
        if left is not None and left <= 0:
            break
        total += await _replay_partition(streams, destination, reason, left, dry_run,
                                         progress, total)
    return total


async def _replay_partition(streams: Streams, destination: str | None, reason: str | None,
                            limit: int | None, dry_run: bool,
                            progress: Callable[[int], None] | None, before: int) -> int:
    """One partition's part of ``replay``, after ``before`` events of the others."""
    end = await streams.last_id(streams.dead_letters)
    if end is None:
        return 0
    batch: list[tuple[str, dict[str, str]]] = []
    total = 0
    async for entry_id, fields in dead_letters(streams, destination=destination, reason=reason,
                                               limit=limit, end=end):
        batch.append((entry_id, original_event(fields)))
        if len(batch) >= PAGE:
            passed = (before + total) // PROGRESS_EVERY
            total += await _replay_batch(streams, batch, dry_run)
            batch = []
            if progress is not None and (before + total) // PROGRESS_EVERY > passed:
                progress(before + total)
    return total + await _replay_batch(streams, batch, dry_run)


async def _replay_batch(streams: Streams, batch: list[tuple[str, dict[str, str]]],
                        dry_run: bool) -> int:
    if batch and not dry_run:
        await streams.replay(batch)
    return len(batch)


async def repartition(partitions: list[Streams], strays: list[str], *,
                      dry_run: bool = False) -> dict[str, Counter[str]]:
    """Move the entries of ``strays`` (inbound streams no worker reads) into the partitions
    they belong in, a page at a time: added there, then deleted here (a stop between the two
    leaves a page in both; the same events are then delivered twice), and delete each emptied
    stream. Returns, for each stray stream that held any, how many went to each partition."""
    first = partitions[0]
    moved: dict[str, Counter[str]] = {}
    for key in (await first.lengths(strays)):
        start = "-"
        while page := await first.page(key, start, PAGE):
            start = f"({page[-1][0]}"
            events = [fields for _, fields in page]
            placed = {where: [events[i] for i in indexes]
                      for where, indexes in by_partition(events, len(partitions)).items()}
            counts = moved.setdefault(key, Counter())
            for where, events in placed.items():
                counts[partitions[where].inbound] += len(events)
            if dry_run:
                continue
            for where, events in placed.items():
                await partitions[where].add_many(events)
            await first.remove(key, [entry_id for entry_id, _ in page])
        if not dry_run:
            await first.drop_if_empty(key)  # its group's counters would report a false lag
    return moved


def printable(fields: dict[str, str]) -> dict[str, str]:
    """Fields as text that can always be printed: bytes that were not UTF-8 (kept by the
    client as lone surrogates) are shown as ``\\xNN`` escapes."""
    return {_escape(k): _escape(v) for k, v in fields.items()}


def _escape(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


async def status(partitions: list[Streams], destination_ids: Iterable[str],
                 strays: list[str] | None = None) -> StatusReport:
    """Every stream of every partition, the streams no worker reads (``strays``) that hold
    entries, and the dead letters of all, counted by destination and reason."""
    ids = list(destination_ids)
    counts: Counter[tuple[str, str]] = Counter()
    async for _, (_, fields) in every_dead_letter(partitions):
        dead = DeadLetter.decode(fields)
        counts[(dead.destination, dead.reason)] += 1
    described = [await streams.stats.describe(key)
                 for streams in partitions for key in streams.all_keys(ids)]
    first = partitions[0]
    dlq = first.dead_letters if len(partitions) == 1 else (
        f"{first.keys.base}:{{0..{len(partitions) - 1}}}:dlq")
    return {
        "streams": described,
        "unread": await first.lengths(strays or []),
        "dead_letters": {"stream": dlq, "total": sum(counts.values()),
                         "by": [{"destination": d, "reason": r, "count": n}
                                for (d, r), n in sorted(counts.items())]},
    }


def format_status(report: StatusReport) -> str:
    lines = []
    for info in report["streams"]:
        lines.append(f"{info['stream']}: length {info['length']}")
        for group in info["groups"]:
            lines.append(f"  group {group['group']}: pending {group['pending']}, "
                         f"lag {group['lag']}, last delivered {group['last_delivered']}")
            for consumer in group["consumers"]:
                lines.append(f"    consumer {consumer['name']}: pending {consumer['pending']}, "
                             f"idle {consumer['idle_ms'] / 1000:.1f} s")
    for key, length in report["unread"].items():
        lines.append(f"{key}: {length} entries that no worker reads (`iris repartition` moves "
                     "them into their partitions)")
    dlq = report["dead_letters"]
    lines.append(f"{dlq['stream']}: {dlq['total']} dead letter{'' if dlq['total'] == 1 else 's'}")
    for row in dlq["by"]:
        lines.append(f"  {row['destination'] or '(none)'} {row['reason']}: {row['count']}")
    return "\n".join(lines)
