"""Acknowledge finished outbound batches together: one write for all that finished meanwhile.

A delivered batch must be acknowledged (XACK) and deleted (XDEL) from its outbound stream, and a
rejected one also written to the dead-letter stream, atomically. Done one batch at a time this
was four Redis commands per batch: at AAM's 10-user batches, most of iris's Redis work. The
settler queues what finished and writes it in one atomic write per flush (``store.atomic``),
across every destination: each flush waits ``GATHER_SECONDS`` for the batches finishing at the
same time (and while one is in flight, the next ones gather: group commit), so that under load
a worker's settler (one per partition) writes about fifty times a second whatever its request
rate. When settles hold half a destination's delivery slots (see
``DestinationState.settles``), the flush is written at once, with every settle queued beside
it. Only the acknowledgement waits: the partner has the batch already, and a crash meanwhile
redelivers it with its idempotency key.

A flush that Redis refuses is tried again, with the ``write`` loop's backoff, until it is
written or the worker stops; a batch not written by then stays pending in Redis, and is
delivered again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from iris.core.records import DeadLetter
from iris.errors import RedisUnavailable
from iris.runtime.health import RedisRetry
from iris.store.errors import REDIS_WIDE
from iris.store.streams import Settle, Streams

log = logging.getLogger(__name__)

GATHER_SECONDS = 0.02  # a settle waits this long for others (only its ack is later)


@dataclass(slots=True)
class _Waiting:
    settle: Settle
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def resolve(self, written: bool) -> None:
        if not self.done.done():
            self.done.set_result(written)


class Settler:
    def __init__(self, streams: Streams, writes: RedisRetry) -> None:
        self._streams = streams
        self._writes = writes
        self._queue: list[_Waiting] = []
        self._flushing: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # queued settles hold delivery slots: do not gather
        self.stopping = asyncio.Event()  # set: give up on flushes Redis refuses

    def hurry(self) -> None:
        """Settles hold half a destination's delivery slots (too many delivered batches wait
        for their settle already): flush without waiting for others to gather."""
        self._hurry.set()

    async def settle(self, key: str, entry_id: str, dead: list[DeadLetter]) -> bool:
        """Acknowledge and delete ``entry_id`` of ``key``, writing its dead letters; True once
        written, False if the worker stopped first (the batch stays pending). Raises what a
        settle of this batch alone raised that was not a Redis fault (a bug: the delivery
        crashes, and the batch takes the crash path)."""
        waiting = _Waiting((key, entry_id, dead))
        self._queue.append(waiting)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="settle")
        return await asyncio.shield(waiting.done)

    async def close(self, timeout: float) -> None:
        """At a stop (after ``stopping`` was set): let the flush under way finish within
        ``timeout`` seconds, then cancel it; what it did not write stays pending."""
        if self._flushing is None:
            return
        await asyncio.wait({self._flushing}, timeout=max(timeout, 0))
        self._flushing.cancel()
        await asyncio.gather(self._flushing, return_exceptions=True)

    async def _flush(self) -> None:
        taken: list[_Waiting] = []
        try:
            while self._queue:
                with contextlib.suppress(TimeoutError):  # let the batches finishing now join
                    async with asyncio.timeout(GATHER_SECONDS):
                        await self._hurry.wait()
                self._hurry.clear()
                taken, self._queue = self._queue, []
                failed, error = await self._write(taken)
                if not failed or error is None:
                    continue
                if self.stopping.is_set():
                    for waiting in failed:
                        waiting.resolve(False)
                    continue
                self._queue[:0] = failed  # tried again first, with the newer ones
                await self._writes.failed(error)
        finally:  # cancelled at a stop's deadline, or a bug: no settle waits for ever
            for waiting in (*taken, *self._queue):
                waiting.resolve(False)
            self._queue.clear()

    async def _write(self, group: list[_Waiting]) -> tuple[list[_Waiting], RedisUnavailable | None]:
        """Settle ``group`` in one transaction: (those not written, the Redis fault). A fault of
        Redis as a whole is the group's; any other is one settle's (a key of another type, a
        key the ACL denies, a bug), so the group is written one by one and only that one
        waits."""
        try:
            await self._streams.settle_many([w.settle for w in group])
        except RedisUnavailable as exc:
            if exc.reply in REDIS_WIDE or len(group) == 1:
                return group, exc
            return await self._one_by_one(group)
        except Exception as exc:
            if len(group) > 1:
                return await self._one_by_one(group)
            log.error("settling %s of %s failed: %r", group[0].settle[1], group[0].settle[0],
                      exc)
            group[0].done.set_exception(exc)
            return [], None
        self._writes.ok()
        for waiting in group:
            waiting.resolve(True)
        return [], None

    async def _one_by_one(
        self, group: list[_Waiting]
    ) -> tuple[list[_Waiting], RedisUnavailable | None]:
        failed: list[_Waiting] = []
        error: RedisUnavailable | None = None
        for waiting in group:
            not_written, fault = await self._write([waiting])
            failed += not_written
            error = fault or error
        return failed, error
