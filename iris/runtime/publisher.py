"""Deliver one destination's closed batches from its outbound stream, and acknowledge them.

Each batch is read from Redis and POSTed; ``policy.DeliveryPolicy`` decides, from what
``retry.classify`` made of each answer, whether to retry, refresh, split or dead-letter it, and
this module carries the steps out. A batch is then settled: XACK + XDEL after a 2xx, or
dead-lettered and acknowledged in one atomic write. A batch that is neither stays pending in Redis.

Per destination (all partitions together), at most ``max_in_flight`` batches are being
delivered; a batch with an outcome frees its slot at once, and is held until its settle is
written (tens of milliseconds, longer while Redis refuses writes), up to 2 × ``max_in_flight``
such batches (``DestinationState.settles``); and ``max_in_flight`` more, shared among the
partitions' publishers, are read ahead (pending for this consumer), so that a freed slot takes
a batch without a read of its own. The rest of a slow partner's backlog waits in its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import assert_never

from iris.config.model import Destination, StreamConfig
from iris.core.batching import split_in_halves
from iris.core.circuit import Feed
from iris.core.dead_letters import MAX_DELIVERIES, REDIRECTED, TOO_LARGE, report_written
from iris.core.policy import Dead, DeliveryPolicy, Done, Send, Split, Step, Wait
from iris.core.records import DeadLetter, Events, OutboundBatch, events_of
from iris.core.retry import Outcome, failure
from iris.errors import RedisUnavailable
from iris.http.sender import Sender
from iris.runtime.destination import DestinationState
from iris.runtime.health import Health
from iris.runtime.metrics import Metrics
from iris.runtime.settler import Settler
from iris.runtime.stopping import unless_stopped
from iris.store.recovery import History, Recovered, Recovery
from iris.store.streams import Entry, Settle, Streams

log = logging.getLogger(__name__)


class Publisher:
    """One destination's deliveries. Entries come from its own reads of its outbound stream,
    from the worker's shared read (``OutboundReader``, which hands over what it took for this
    destination), from this consumer's history and from reclaims."""

    def __init__(
        self, dest: Destination, streams: Streams, sender: Sender, metrics: Metrics,
        health: Health, stream: StreamConfig, settler: Settler, shared: DestinationState,
    ) -> None:
        self.dest = dest
        self._streams = streams
        self._sender = sender
        self._metrics = metrics
        self.key = streams.outbound(dest.id)
        self._reads = health.retry(f"publish {dest.id}{streams.where}")
        self._settler = settler
        self._recovery = Recovery(streams, self.key, stream,
                                  health.retry(f"publish {dest.id}{streams.where}: heartbeat"))
        self._shared = shared  # with the other partitions' publishers of this destination
        self._breaker = shared.breaker
        self._tasks: dict[str, asyncio.Task[None]] = {}  # entry id → its delivery
        self._settling: set[str] = set()  # deliveries whose slot is free: waiting for a settle
        self._handed: list[Entry] = []  # taken by the shared read or read ahead: for a free slot
        self._crashed: dict[str, float] = {}  # delivery died of a bug → when to try again
        self._crash_wait = stream.claim_idle_ms / 1000  # as long as a dead worker's entries
        self._delivered_segments = metrics.delivered.labels(dest.id)
        self._batch_users = metrics.batch_users.labels(dest.id)
        self._last_success = metrics.last_success.labels(dest.id)
        self._history = History()
        self._maybe_more = True  # the stream may hold entries no one has read yet
        self._wake = asyncio.Event()  # a slot freed, entries were handed over, or stopping
        shared.waken_by_free_slots(self._wake)
        self.wants_changed = asyncio.Event()  # for the shared read: ``wants()`` may be true now
        self.stopping = asyncio.Event()  # set: read nothing more, abandon retry waits

    def wants(self) -> bool:
        """Whether the shared read should take a batch for this destination now."""
        return self._history.done and not self.stopping.is_set() and self.room() > 0

    def room(self) -> int:
        """How many more batches the shared read may take for this destination now."""
        return self._free() - len(self._handed)

    def hand(self, entries: list[Entry]) -> None:
        """Batches the shared read took for this destination (they are pending for us now)."""
        self._handed.extend(entries)
        self._maybe_more = True  # one came: more may follow
        self._wake.set()

    def _free(self) -> int:
        """How many more batches to take now: none while paused or the circuit is open."""
        if self._sender.auth.pause_remaining():
            return 0
        return self._shared.free()

    def held(self) -> list[str]:
        """Entries this publisher works on: pending for us, kept claimed by the heartbeat."""
        return [*self._tasks, *(entry_id for entry_id, _ in self._handed), *self._crashed]

    async def run(self) -> None:
        """Read and dispatch until ``stopping``; first this consumer's own pending history
        (which holds what was handed to an earlier run, restarted after a bug)."""
        self._history = History()
        self._handed.clear()
        while not self.stopping.is_set():
            self._wake.clear()
            try:
                busy = await self._round()
            except RedisUnavailable as exc:
                self._history.restart()  # re-read what we hold but may not have settled,
                self._handed.clear()  # handed entries included: else they would go out twice
                await self._recovery.heartbeat(self.held)  # batches in flight stay ours
                await self._reads.failed(exc)
                continue
            self._reads.ok()
            await self._recovery.heartbeat(self.held)
            if not busy:
                await self._idle()

    async def _round(self) -> bool:
        """Take what there is room for; True if there may be more to take at once."""
        free = self._free()
        if free <= 0:
            return False
        fresh: list[Entry] = []
        if due := self._crashes_due(free):  # a crash counts as a delivery: a poison batch
            recovered = await self._recovery.redeliver(due)  # ends dead-lettered
            for entry_id in due:
                del self._crashed[entry_id]
            await self._settle_recovered(recovered)
            fresh = recovered.entries
        elif not self._history.done:
            recovered = await self._recovery.history(self._history, free, self._tasks)
            await self._settle_recovered(recovered)
            fresh = recovered.entries
            if self._history.done:
                self.wants_changed.set()
        else:
            fresh = await self._reclaimed(free)  # abandoned batches first: they are the oldest
            take = free - len(fresh)
            fresh, self._handed = fresh + self._handed[:take], self._handed[take:]
            if len(fresh) < free and self._maybe_more:
                # read ahead as many as in flight: a freed slot then takes a batch without a
                # read of its own (one XREADGROUP per batch, at 10-user batches)
                take = free - len(fresh)
                wanted = take + self._shared.read_ahead()
                read = await self._streams.read(self.key, wanted, None)
                self._maybe_more = len(read) == wanted
                fresh += read[:take]
                self._handed += read[take:]
            self._dispatch_within_limit(fresh)
            return bool(fresh) and (self._maybe_more or bool(self._handed))
        room = free - len(fresh)  # reclaimed batches share the max_in_flight bound
        if room > 0:
            fresh += await self._reclaimed(room)
        self._dispatch_within_limit(fresh)
        return bool(fresh) and (not self._history.done or self._maybe_more or bool(self._handed))

    async def _reclaimed(self, room: int) -> list[Entry]:
        """Up to ``room`` batches other consumers abandoned (or handed back at their stop), when
        a claim is due: trimmed ones acknowledged, those delivered too often dead-lettered."""
        claimed = await self._recovery.reclaim(room, self.held)
        if claimed is None:
            return []
        await self._settle_recovered(claimed)
        return claimed.entries

    async def _idle(self) -> None:
        """Wait for a free slot, handed entries, the end of a pause or a cool-down, or a chore
        (a claim only when there is room for what it would take)."""
        waits = [self._recovery.seconds_to_chores(claim=self._free() > 0)]
        if pause := self._sender.auth.pause_remaining():
            waits.append(pause)
        if probe := self._breaker.seconds_to_probe():
            waits.append(probe)
        if self._crashed:
            waits.append(min(self._crashed.values()) - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.01, min(waits)))
        self._maybe_more = True  # a slot, a probe or the end of a pause: look again
        self.wants_changed.set()

    def _dispatch_within_limit(self, fresh: list[Entry]) -> None:
        """Deliver what the destination has room for now: another partition's publisher may
        have taken slots while this one read. The rest wait, handed, for a free slot."""
        waiting = []
        for entry_id, fields in fresh:
            if entry_id in self._tasks:
                continue
            if self._shared.free() > 0:
                self._dispatch(entry_id, fields)
            else:
                waiting.append((entry_id, fields))
        self._handed[:0] = waiting

    def _crashes_due(self, count: int) -> list[str]:
        now = time.monotonic()
        return [entry_id for entry_id, due in self._crashed.items() if due <= now][:count]

    def _dispatch(self, entry_id: str, fields: dict[str, str]) -> None:
        task = asyncio.create_task(self._handle(entry_id, fields),
                                   name=f"deliver-{self.dest.id}-{entry_id}")
        self._tasks[entry_id] = task
        self._shared.started()
        task.add_done_callback(lambda _task: self._finished(entry_id))

    async def _settle_recovered(self, recovered: Recovered) -> None:
        """Trimmed batches are acknowledged; batches re-delivered too often are dead-lettered;
        all in one transaction."""
        settles: list[Settle] = [(self.key, entry_id, []) for entry_id in recovered.trimmed]
        outcome = failure("max_deliveries",
                          f"delivered more than {self._recovery.max_deliveries} times")
        settles += [(self.key, entry_id,
                     self._dead(events_of(entry_id, fields), MAX_DELIVERIES, outcome))
                    for entry_id, fields in recovered.over_limit]
        if not settles:
            return
        await self._streams.settle_many(settles)
        if recovered.trimmed:
            self._metrics.skipped.labels("trimmed").inc(len(recovered.trimmed))
        report_written([d for _, _, dead in settles for d in dead], self._metrics.dead_lettered)

    def _finished(self, entry_id: str) -> None:
        task = self._tasks.pop(entry_id, None)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("delivery of %s to %s failed: %r", entry_id, self.dest.id, task.exception())
            self._crashed[entry_id] = time.monotonic() + self._crash_wait
        if task is None:
            return
        if entry_id in self._settling:
            self._settling.discard(entry_id)  # its slot was freed before its settle
            self._shared.settled()
        else:
            self._shared.ended()  # wakes every partition's publisher: a slot is free

    async def drain(self, timeout: float) -> None:
        """Let in-flight batches finish within ``timeout``; cancel the rest (they stay pending)."""
        self.stopping.set()
        self._wake.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=max(timeout, 0))
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _handle(self, entry_id: str, fields: dict[str, str]) -> None:
        """Deliver one batch entry. An entry that does not decode raises: it stays pending, is
        reclaimed, and after ``max_deliveries`` ends in the dead-letter stream. One whose events
        do not parse is sent all the same (its body may be fine); if it must be dead-lettered
        or split, it is dead-lettered as it is."""
        batch = OutboundBatch.decode(fields, f"{self.dest.id}-{entry_id}")
        dead: list[DeadLetter] = []
        if not await self._deliver(batch, dead, (entry_id, fields)):
            return
        if self._shared.settles():
            self._settling.add(entry_id)
            await self._settle(entry_id, dead)
            return
        with self._shared.keeping_slot() as crowded:  # this slot waits for the settle
            if crowded:
                self._settler.hurry()  # half the slots wait: no gathering
            await self._settle(entry_id, dead)

    async def _deliver(self, batch: OutboundBatch, dead: list[DeadLetter], entry: Entry,
                       ) -> bool:
        """Carry out the delivery policy for one batch (or its halves): the policy decides each
        step, this only does the I/O. False if stopped before an outcome was reached."""
        retry = self.dest.retry
        policy = DeliveryPolicy(retry.max_attempts, retry.base_delay, retry.max_delay)
        while True:
            probe = await self._turn()
            if probe is None:
                return False
            try:
                outcome = await self._sender.send(batch.body, batch.key)
            except BaseException:  # cancelled, or a bug: a probe's turn must not stay taken
                self._feed(Feed.RELEASE, probe)
                raise
            decision = policy.next(outcome, probe)
            self._feed(decision.feed, probe, outcome.error)
            finished = await self._step(decision.step, batch, outcome, policy.attempts, dead,
                                        entry)
            if finished is not None:
                return finished

    async def _step(self, step: Step, batch: OutboundBatch, outcome: Outcome, attempt: int,
                    dead: list[DeadLetter], entry: Entry) -> bool | None:
        """Do what the policy decided: True once the batch has an outcome, False if stopped,
        None to send it again."""
        match step:
            case Done():
                self._delivered(batch.users, batch.segments)
                return True
            case Dead(reason):
                if reason == REDIRECTED:
                    self._redirected(outcome)
                dead.extend(self._dead(_events(batch, entry), reason, outcome))
                return True
            case Split():
                return await self._split(batch, dead, outcome, entry)
            case Wait(seconds, retry):
                if retry:
                    self._retrying(batch, outcome, attempt, seconds)
                return False if await self._stopped_within(seconds) else None
            case Send():
                return None  # a new token: at once
            case _:
                assert_never(step)

    def _retrying(self, batch: OutboundBatch, outcome: Outcome, attempt: int,
                  delay: float) -> None:
        self._metrics.retries.labels(self.dest.id).inc()
        self._shared.retry_report.add(1, outcome.error or outcome.code)
        log.debug("batch failed (%s); retrying in %.2f s", outcome.error or outcome.code,
                  delay, extra={"destination": self.dest.id, "batch_id": batch.key,
                                "attempt": attempt, "status": outcome.code})

    async def _split(self, batch: OutboundBatch, dead: list[DeadLetter], outcome: Outcome,
                     entry: Entry) -> bool:
        """413: send each half with its own stable key; one user that cannot fit is dead (and
        so is a batch whose events do not parse: they cannot be shared between halves)."""
        try:
            halves = split_in_halves(batch, self.dest)
        except (ValueError, KeyError, TypeError):  # a body or events that do not parse
            halves = []
        if not halves:
            dead.extend(self._dead(_events(batch, entry), TOO_LARGE, outcome))
            return True
        for half in halves:
            if not await self._deliver(half, dead, entry):
                return False
        return True

    def _dead(self, events: Events, reason: str, outcome: Outcome) -> list[DeadLetter]:
        """The dead letters for ``events`` (counted and logged once they are written)."""
        return [DeadLetter(fields, reason, source_id, self.dest.id, outcome.status, outcome.error)
                for source_id, fields in events]

    def _redirected(self, outcome: Outcome) -> None:
        """One ERROR per destination and redirect target: its url needs changing."""
        if outcome.error != self._shared.last_redirect:
            self._shared.last_redirect = outcome.error
            log.error("%s: %s; its batches are dead-lettered as redirected (replay them with "
                      "`iris dlq replay --reason redirected` once the url is fixed)",
                      self.dest.id, outcome.error,
                      extra={"destination": self.dest.id, "status": outcome.code})

    def _delivered(self, users: int, segments: int) -> None:
        self._delivered_segments.inc(segments)
        self._batch_users.observe(users)
        self._last_success.set(time.time())

    async def _settle(self, entry_id: str, dead: list[DeadLetter]) -> None:
        """Acknowledge a finished batch, with the others that finished meanwhile; a batch not
        written before the worker stops stays pending (redelivered, same idempotency key)."""
        if await self._settler.settle(self.key, entry_id, dead) and dead:
            report_written(dead, self._metrics.dead_lettered)

    def _feed(self, feed: Feed, probe: bool, why: str = "") -> None:
        self._shared.feed(feed, probe, why)

    async def _turn(self) -> bool | None:
        """The circuit's leave to send (True: as its probe); None if stopped meanwhile."""
        while (probe := self._breaker.turn()) is None:
            self._shared.fed.clear()
            wait = self._breaker.seconds_to_probe()
            fed = asyncio.wait_for(self._shared.fed.wait(), wait if wait > 0 else None)
            with contextlib.suppress(TimeoutError):
                done, _ = await unless_stopped(fed, self.stopping)
                if not done:
                    return None
        return probe

    async def _stopped_within(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True


def _events(batch: OutboundBatch, entry: Entry) -> Events:
    """The batch's events; for an entry whose events do not parse, the entry as it is (each
    field cut to 1,000 characters), so that it is dead-lettered, not crashed on."""
    try:
        return batch.events()
    except (ValueError, TypeError):
        return events_of(*entry)
