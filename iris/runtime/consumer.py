"""Consume → route → batch: read the inbound stream, fold events into per-destination batches,
and write every closed batch to its destination's outbound stream.

The inbound entries a batch completes are acknowledged in the same atomic write
(``store.atomic``) that writes it, after it, so an entry is either pending inbound or part of a
written batch, never both and never neither. Each destination batches on its own terms: an
entry routed to several destinations is acknowledged when its last batch is written. Until
then, every write of one of its batches also records, in ``<stream.key>:written``, which
destinations have it: after a crash, the entry is read again and folded only into the batches
of the destinations that do not, so no partner sees it twice under different idempotency keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Set as AbstractSet

import orjson

from iris.config.model import Config
from iris.core.batching import Batch, BatchBuilder
from iris.core.dead_letters import (
    INVALID_EVENT,
    MAX_DELIVERIES,
    TOO_LARGE,
    report_written,
)
from iris.core.events import parse_event
from iris.core.records import DeadLetter, OutboundBatch
from iris.core.routing import RouteTable
from iris.errors import EventError, RedisUnavailable
from iris.runtime.health import Health, RedisRetry
from iris.runtime.metrics import Metrics
from iris.store.recovery import History, Recovered, Recovery
from iris.store.streams import Commit, Entry, Streams

log = logging.getLogger(__name__)

NOTHING_WRITTEN: frozenset[str] = frozenset()  # an entry no destination has written yet


class Consumer:
    def __init__(self, config: Config, streams: Streams, metrics: Metrics, health: Health) -> None:
        self._config = config
        self._streams = streams
        self._metrics = metrics
        self._health = health
        self._routes = RouteTable(config.destinations)
        self._builders = {d.id: BatchBuilder(d) for d in config.destinations}
        self._remaining: dict[str, set[str]] = {}  # fanned-out entry → destinations to write
        self._done: dict[str, set[str]] = {}  # fanned-out entry → destinations written
        self._recovery = Recovery(streams, streams.inbound, config.stream,
                                  health.retry(f"consume{streams.where}: heartbeat"))
        self._abandoned = False
        self.stopping = asyncio.Event()

    def abandon(self) -> None:
        """Write nothing more: the entries we hold are another worker's now."""
        self._abandoned = True
        self._forget()

    async def run(self) -> None:
        """Loop until ``stopping``; then close and write every open batch.

        Every (re)start begins from this consumer's own pending history with empty batches:
        after a crash or a lost Redis reply, Redis's pending list is the truth, and batches
        that were never written can be rebuilt without any partner seeing a duplicate. Only a
        start counts that re-read as a delivery; a re-read after a Redis fault does not.
        Reads and writes report apart: when Redis refuses writes (OOM), reads still work, and
        only a write that succeeds ends the fault.

        A round's commit is written while the next round reads and batches (Redis writes while
        the worker works: at 1,000-user batches the worker waited ~2 ms per commit, 15 % of
        its time). Commits stay in order: the next one starts only once this one is written;
        if it fails, what the next round did is forgotten with the rest, and read again. Only
        rounds of new entries overlap so: a round of history must not find pending what the
        commit under way acknowledges (an entry claimed from a dead consumer, say), or it would
        fold it into a second batch, under another idempotency key.
        """
        self._forget()
        history = History()
        where = self._streams.where
        reads = self._health.retry(f"consume{where}")
        writes = self._health.retry(f"consume{where}: write")
        writing: asyncio.Task[Commit] | None = None  # the last round's commit, under way
        try:
            while not self.stopping.is_set():
                try:
                    commit = await self._round(history)
                except RedisUnavailable as exc:
                    if failed := await self._written_or_not(writing):  # we read again anyway
                        writes.noted(failed)
                    writing = None
                    await self._start_over(history, reads, exc)
                    continue
                reads.ok()
                failed = await self._written_or_not(writing)
                writing = None
                if failed is not None:
                    await self._start_over(history, writes, failed)
                    continue
                # before the write: what we hold stays ours even while Redis refuses writes
                await self._recovery.heartbeat(self._held)
                if commit and not self._abandoned:
                    writing = asyncio.create_task(self._commit(commit, writes),
                                                  name=f"commit{where}")
                    if not history.done and (failed := await self._written_or_not(writing)):
                        writing = None
                        await self._start_over(history, writes, failed)
                        continue
                elif not self._held():  # nothing to write
                    writes.ok()
            if failed := await self._written_or_not(writing):
                log.warning("could not write the last round's batches at shutdown (%s); they "
                            "stay pending", failed)
            else:
                await self._flush_all()
        finally:  # cancelled (a stop's deadline) or a bug: no commit runs on unwatched
            if writing is not None:
                writing.cancel()  # its fault, if it had one, is this loop's no more
                writing.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _commit(self, commit: Commit, writes: RedisRetry) -> Commit:
        await self._streams.commit(commit)
        self._written(commit)
        writes.ok()
        return commit

    @staticmethod
    async def _written_or_not(writing: asyncio.Task[Commit] | None) -> RedisUnavailable | None:
        """Wait for the commit under way; the Redis fault that stopped it, if one did."""
        if writing is None:
            return None
        try:
            await writing
        except RedisUnavailable as exc:
            return exc
        return None

    async def _start_over(self, history: History, retry: RedisRetry,
                          exc: RedisUnavailable) -> None:
        """After a fault: forget the open batches, and read what we hold again after a wait."""
        self._forget()
        history.restart()
        await retry.failed(exc)

    async def _round(self, history: History) -> Commit:
        """One read (new entries, or a page of history) and reclaim: what to commit."""
        stream = self._config.stream
        commit = Commit()
        if history.done:
            entries = await self._streams.read(
                self._streams.inbound, stream.read_count, self._block_ms())
            self._metrics.consumed.inc(len(entries))
            self._take(entries, commit)
        else:
            await self._take_recovered(
                await self._recovery.history(history, stream.read_count), commit)
        claimed = await self._recovery.reclaim(stream.read_count, self._held)
        if claimed is not None:
            await self._take_recovered(claimed, commit)
        self._close(commit, due_only=True)
        return commit

    def _written(self, commit: Commit) -> None:
        """Count what a commit did, once it is done."""
        if commit.dead_letters:
            report_written(commit.dead_letters, self._metrics.dead_lettered)
        for reason, count in commit.skipped.items():
            self._metrics.skipped.labels(reason).inc(count)

    def _held(self) -> set[str]:
        """Inbound entries folded into open batches: pending, and still ours to finish."""
        return set().union(*(b.source_ids for b in self._builders.values()))

    async def _take_recovered(self, recovered: Recovered, commit: Commit) -> None:
        """Entries read again: those trimmed or delivered too often are finished; the others
        go only to the destinations that do not have them written yet."""
        commit.skipped["trimmed"] += len(recovered.trimmed)
        commit.acks.extend(recovered.trimmed)
        commit.unwritten.extend(recovered.trimmed)
        for entry_id, fields in recovered.over_limit:
            commit.dead_letters.append(DeadLetter(
                fields, MAX_DELIVERIES, entry_id, fields.get("destination", ""),
                error=f"delivered more than {self._config.stream.max_deliveries} times",
            ))
            commit.acks.append(entry_id)
            commit.unwritten.append(entry_id)
        written = await self._streams.written([entry_id for entry_id, _ in recovered.entries])
        self._take(recovered.entries, commit, written)

    def _block_ms(self) -> int:
        deadlines = [b.deadline for b in self._builders.values() if b.deadline is not None]
        block = self._config.stream.block_ms
        if deadlines:
            block = min(block, int((min(deadlines) - time.monotonic()) * 1000) + 1)
        return max(1, block)

    def _take(self, entries: list[Entry], commit: Commit,
              written: dict[str, set[str]] | None = None) -> None:
        written = written or {}
        for entry_id, fields in entries:
            try:
                self._take_one(entry_id, fields, commit, written.get(entry_id, NOTHING_WRITTEN))
                continue
            except EventError as exc:
                error = str(exc)
            except Exception as exc:  # a bug must cost one entry, not the stream behind it
                log.exception("entry %s could not be processed; dead-lettering it", entry_id)
                error = f"processing failed: {type(exc).__name__}"
            commit.dead_letters.append(DeadLetter(
                fields, INVALID_EVENT, entry_id, fields.get("destination", ""), error=error))
            commit.acks.append(entry_id)

    def _take_one(self, entry_id: str, fields: dict[str, str], commit: Commit,
                  written: AbstractSet[str]) -> None:
        """Route one event and fold it into the open batch of each destination that does not
        have it written already (``written``: recorded before a crash)."""
        event = parse_event(entry_id, fields)
        routes, skips = self._routes.route(event)
        if skips:
            commit.skipped.update(skips)
        if written:
            routes = [(dest, partner_id) for dest, partner_id in routes if dest.id not in written]
        if not routes:
            commit.acks.append(entry_id)
            if written:
                commit.unwritten.append(entry_id)
            return
        if len(routes) > 1 or written:
            self._remaining[entry_id] = {dest.id for dest, _ in routes}
            self._done[entry_id] = set(written)
        closed: list[Batch] = []
        for dest, partner_id in routes:
            closed += self._builders[dest.id].add(event, partner_id)
        if closed:
            self._write(closed, commit)  # only after every route of the entry is folded in

    def _close(self, commit: Commit, *, due_only: bool) -> None:
        now = time.monotonic()
        for builder in self._builders.values():
            if builder.deadline is not None and (not due_only or builder.due(now)):
                self._write(builder.close(), commit)

    def _write(self, batches: list[Batch], commit: Commit) -> None:
        """Queue closed batches; acknowledge the entries they finish, and record which
        destinations have the others."""
        for batch in batches:
            try:
                self._queue_batch(batch, commit)
            except Exception as exc:  # a bug must cost this batch's events, not the stream
                log.exception("batch for %s could not be written; dead-lettering its events",
                              batch.destination_id)
                commit.dead_letters.extend(
                    DeadLetter(fields, INVALID_EVENT, source_id, batch.destination_id,
                               error=f"processing failed: {type(exc).__name__}")
                    for source_id, fields in batch.events)
            if self._remaining:
                for entry_id in batch.source_ids:
                    self._finished(entry_id, batch.destination_id, commit)
            else:  # no entry is fanned out: each is finished with this batch
                commit.acks.extend(batch.source_ids)

    def _finished(self, entry_id: str, destination: str, commit: Commit) -> None:
        """``entry_id`` is in a batch written for ``destination``."""
        remaining = self._remaining.get(entry_id)
        if remaining is None:
            commit.acks.append(entry_id)
            return
        remaining.discard(destination)
        done = self._done[entry_id]
        recorded = bool(done) or entry_id in commit.written
        done.add(destination)
        if remaining:
            commit.written[entry_id] = ",".join(sorted(done))
            return
        del self._remaining[entry_id], self._done[entry_id]
        commit.written.pop(entry_id, None)
        commit.acks.append(entry_id)
        if recorded:
            commit.unwritten.append(entry_id)

    def _queue_batch(self, batch: Batch, commit: Commit) -> None:
        dest = self._builders[batch.destination_id].dest
        if len(batch.body) > dest.batch.max_bytes:  # one user larger than a whole batch may be
            error = f"one user's payload is {len(batch.body)} bytes > max_bytes"
            commit.dead_letters.extend(
                DeadLetter(fields, TOO_LARGE, source_id, dest.id, error=error)
                for source_id, fields in batch.events
            )
            return
        commit.batches.append((self._streams.outbound(dest.id), OutboundBatch(
            batch.body, orjson.dumps(batch.events), batch.users, batch.segments,
            batch.idempotency_key(self._streams.partition), int(time.time() * 1000))))

    def _forget(self) -> None:
        """After a failed commit: drop open batches; their entries are re-read from history."""
        self._builders = {d.id: BatchBuilder(d) for d in self._config.destinations}
        self._remaining.clear()
        self._done.clear()

    async def _flush_all(self) -> None:
        if self._abandoned:
            return
        commit = Commit()
        self._close(commit, due_only=False)
        if commit:
            try:
                await self._streams.commit(commit)
            except RedisUnavailable as exc:
                log.warning("could not write open batches at shutdown (%s); they stay pending", exc)
                return
            self._written(commit)
