"""Consume → route → batch: read the inbound stream, fold events into per-destination batches,
and write every closed batch to its destination's outbound stream.

The inbound entries a batch completes are acknowledged in the same MULTI that writes it, so an
entry is either pending inbound or part of a written batch, never both and never neither. An
entry routed to several destinations is acknowledged only when every batch holding it is
written at once: closing one of them closes the others, so a crash can never re-send part of it
under a new idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import orjson

from iris.batching import Batch, BatchBuilder
from iris.config import Config
from iris.dead_letters import INVALID_EVENT, TOO_LARGE, dead_letter_entry
from iris.errors import EventError, RedisUnavailable
from iris.events import parse_event
from iris.health import Health
from iris.metrics import Metrics
from iris.routing import RouteTable
from iris.streams import HISTORY, NEW, Commit, Entry, Streams

log = logging.getLogger(__name__)


class Consumer:
    def __init__(self, config: Config, streams: Streams, metrics: Metrics, health: Health) -> None:
        self._config = config
        self._streams = streams
        self._metrics = metrics
        self._health = health
        self._routes = RouteTable(config.destinations)
        self._builders = {d.id: BatchBuilder(d) for d in config.destinations}
        self._multi: dict[str, list[str]] = {}  # entry id → destinations, for fanned-out entries
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Loop until ``stopping``; then close and write every open batch."""
        stream = self._config.stream
        cursor = HISTORY  # first whatever this consumer name left pending in an earlier life
        while not self.stopping.is_set():
            try:
                entries = await self._streams.read(
                    self._streams.inbound, cursor, stream.read_count, self._block_ms()
                )
                self._health.redis_ok()
                if cursor != NEW:
                    cursor = entries[-1][0] if entries else NEW
                commit = Commit()
                self._take(entries, commit)
                self._close(commit, due_only=True)
                if commit:
                    await self._streams.commit(commit)
            except RedisUnavailable as exc:
                self._forget()
                cursor = HISTORY
                await self._health.redis_failed(exc)
        await self._flush_all()

    def _block_ms(self) -> int:
        deadlines = [b.deadline for b in self._builders.values() if b.deadline is not None]
        block = self._config.stream.block_ms
        if deadlines:
            block = min(block, int((min(deadlines) - time.monotonic()) * 1000) + 1)
        return max(1, block)

    def _take(self, entries: list[Entry], commit: Commit) -> None:
        self._metrics.consumed.inc(len(entries))
        skipped: Counter[str] = Counter()
        invalid = 0
        closed: list[Batch] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending: nothing left to deliver
                skipped["trimmed"] += 1
                commit.acks.append(entry_id)
                continue
            try:
                event = parse_event(entry_id, fields)
            except EventError as exc:
                commit.dead_letters.append(dead_letter_entry(
                    fields, reason=INVALID_EVENT, source_id=entry_id, error=str(exc),
                    destination=fields.get("destination", ""),
                ))
                commit.acks.append(entry_id)
                invalid += 1
                continue
            routes, skips = self._routes.route(event)
            skipped.update(skips)
            if not routes:
                commit.acks.append(entry_id)
                continue
            if len(routes) > 1:
                self._multi[entry_id] = [dest.id for dest, _ in routes]
            for dest, partner_id in routes:
                closed.extend(self._builders[dest.id].add(event, partner_id))
            self._write(closed, commit)  # after every route of the entry is folded in
            closed.clear()
        if invalid:
            self._metrics.dead_lettered.labels("", INVALID_EVENT).inc(invalid)
            log.info("dead-lettered %d invalid events", invalid)
        for reason, count in skipped.items():
            self._metrics.skipped.labels(reason).inc(count)

    def _close(self, commit: Commit, *, due_only: bool) -> None:
        now = time.monotonic()
        for builder in self._builders.values():
            if builder.deadline is not None and (not due_only or builder.due(now)):
                self._write(builder.close(), commit)

    def _write(self, batches: list[Batch], commit: Commit) -> None:
        """Queue closed batches, closing any other batch that shares an entry with them."""
        queue = list(batches)
        while queue:
            batch = queue.pop()
            self._queue_batch(batch, commit)
            for entry_id in batch.source_ids:
                for dest_id in self._multi.pop(entry_id, ()):
                    builder = self._builders[dest_id]
                    if builder.holds(entry_id):
                        queue.extend(builder.close())
                commit.acks.append(entry_id)

    def _queue_batch(self, batch: Batch, commit: Commit) -> None:
        dest = self._config.destination(batch.destination_id)
        if len(batch.body) > dest.batch.max_bytes:  # one user larger than a whole batch may be
            error = f"one user's payload is {len(batch.body)} bytes > max_bytes"
            commit.dead_letters.extend(
                dead_letter_entry(fields, reason=TOO_LARGE, source_id=source_id,
                                  destination=dest.id, error=error)
                for source_id, fields in batch.events
            )
            self._metrics.dead_lettered.labels(dest.id, TOO_LARGE).inc(len(batch.events))
            return
        commit.batches.append((self._streams.outbound(dest.id), {
            "body": batch.body,
            "events": orjson.dumps(batch.events),
            "users": str(batch.users),
            "segments": str(batch.segments),
            "created_ms": str(int(time.time() * 1000)),
        }))

    def _forget(self) -> None:
        """After a failed commit: drop open batches; their entries are re-read from history."""
        self._builders = {d.id: BatchBuilder(d) for d in self._config.destinations}
        self._multi.clear()

    async def _flush_all(self) -> None:
        commit = Commit()
        self._close(commit, due_only=False)
        if commit:
            try:
                await self._streams.commit(commit)
            except RedisUnavailable as exc:
                log.warning("could not write open batches at shutdown (%s); they stay pending", exc)
