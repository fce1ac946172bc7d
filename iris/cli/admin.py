"""Operator commands over Redis: the dead-letter stream (list, replay) and ``iris status``."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypedDict

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
    stream: str
    total: int
    by: list[DeadLetterCount]


class StatusReport(TypedDict):
    """What ``iris status`` shows (``--json`` prints it as is)."""

    streams: list[dict[str, Any]]  # ``StreamStats.describe`` of each stream
    dead_letters: DeadLetterSummary


async def dead_letters(
    streams: Streams, *, destination: str | None = None, reason: str | None = None,
    limit: int | None = None, end: str = "+",
) -> AsyncIterator[DeadLetterEntry]:
    """Dead-letter entries up to ``end``, oldest first, filtered by destination and reason."""
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
    streams: Streams, *, destination: str | None = None, reason: str | None = None,
    limit: int | None = None, dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-inject matching dead letters into the inbound stream and remove them; returns count.

    Only the dead letters present when it starts are replayed, each at most once: events that
    fail again while it runs are dead-lettered behind that point and wait for the next replay.
    ``progress`` is told the running count every ``PROGRESS_EVERY`` events."""
    end = await streams.last_id(streams.dead_letters)
    if end is None:
        return 0
    batch: list[tuple[str, dict[str, str]]] = []
    total = 0
    async for entry_id, fields in dead_letters(streams, destination=destination, reason=reason,
                                               limit=limit, end=end):
        batch.append((entry_id, original_event(fields)))
        if len(batch) >= PAGE:
            total += await _replay_batch(streams, batch, dry_run)
            batch = []
            if progress is not None and total % PROGRESS_EVERY == 0:
                progress(total)
    return total + await _replay_batch(streams, batch, dry_run)


async def _replay_batch(streams: Streams, batch: list[tuple[str, dict[str, str]]],
                        dry_run: bool) -> int:
    if batch and not dry_run:
        await streams.replay(batch)
    return len(batch)


def printable(fields: dict[str, str]) -> dict[str, str]:
    """Fields as text that can always be printed: bytes that were not UTF-8 (kept by the
    client as lone surrogates) are shown as ``\\xNN`` escapes."""
    return {_escape(k): _escape(v) for k, v in fields.items()}


def _escape(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


async def status(streams: Streams, destination_ids: Iterable[str]) -> StatusReport:
    keys = streams.all_keys(destination_ids)
    counts: Counter[tuple[str, str]] = Counter()
    async for _, fields in dead_letters(streams):
        dead = DeadLetter.decode(fields)
        counts[(dead.destination, dead.reason)] += 1
    return {
        "streams": [await streams.stats.describe(key) for key in keys],
        "dead_letters": {"stream": streams.dead_letters, "total": sum(counts.values()),
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
    dlq = report["dead_letters"]
    lines.append(f"{dlq['stream']}: {dlq['total']} dead letters")
    for row in dlq["by"]:
        lines.append(f"  {row['destination'] or '(none)'} {row['reason']}: {row['count']}")
    return "\n".join(lines)
