"""Acknowledge finished outbound batches together: one MULTI for all that finished meanwhile.

A delivered batch must be acknowledged (XACK) and deleted (XDEL) from its outbound stream, and a
rejected one also written to the dead-letter stream, atomically. Done one batch at a time this
was four Redis commands per batch: at AAM's 10-user batches, most of iris's Redis work. The
settler queues what finished and writes it in one transaction per flush, across every
destination: a flush waits ``GATHER_SECONDS`` for the batches finishing at the same time, and
while it is in flight the next ones gather (group commit). Only the acknowledgement waits: the
partner has the batch already, and a crash meanwhile redelivers it with its idempotency key.

A flush that Redis refuses is tried again, with the ``write`` loop's backoff, until it is
written or the worker stops; a batch not written by then stays pending in Redis, and is
delivered again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from iris.core.records import DeadLetter
from iris.errors import RedisUnavailable
from iris.runtime.health import RedisRetry
from iris.store.streams import Settle, Streams

GATHER_SECONDS = 0.005  # a settle waits this long for others (only its ack is later)


@dataclass(slots=True)
class _Waiting:
    settle: Settle
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Settler:
    def __init__(self, streams: Streams, writes: RedisRetry) -> None:
        self._streams = streams
        self._writes = writes
        self._queue: list[_Waiting] = []
        self._flushing: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()  # set: give up on flushes Redis refuses

    async def settle(self, key: str, entry_id: str, dead: list[DeadLetter]) -> bool:
        """Acknowledge and delete ``entry_id`` of ``key``, writing its dead letters; True once
        written, False if the worker stopped first (the batch stays pending)."""
        waiting = _Waiting((key, entry_id, dead))
        self._queue.append(waiting)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="settle")
        return await asyncio.shield(waiting.done)

    async def idle(self) -> None:
        """Wait for the flush under way (at a stop: ``stopping`` ends its retries)."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)

    async def _flush(self) -> None:
        await asyncio.sleep(GATHER_SECONDS)  # let the batches finishing now join this flush
        while self._queue:
            taken, self._queue = self._queue, []
            written = await self._write([w.settle for w in taken])
            for waiting in taken:
                if not waiting.done.done():
                    waiting.done.set_result(written)

    async def _write(self, settles: list[Settle]) -> bool:
        while True:
            try:
                await self._streams.settle_many(settles)
            except RedisUnavailable as exc:
                await self._writes.failed(exc)
                if self.stopping.is_set():
                    return False
                continue
            self._writes.ok()
            return True
