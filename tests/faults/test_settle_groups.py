"""Batches settled together (runtime/settler.py): a settle Redis refuses is kept and tried again.

A grouped acknowledgement that fails must not leave its entries unacknowledged until a restart
(apache/pulsar#7683: a batched ack lost to a network failure was never sent again), nor make
the batches go out twice: the partner already has them. Here Redis refuses every write
(``min-replicas-to-write``: NOREPLICAS, as when a primary's replicas lag) exactly while four
batches are in flight; their settle is refused, then written once Redis accepts writes again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from iris_demo.localredis import RedisProcess
from tests.conftest import wait_for
from tests.faults.harness import (
    WorkerProcess,
    check_promises,
    delivered,
    produce,
    raw_config,
    settled,
)
from tests.helpers import GROUP

FAULT_SECONDS = 3  # the refusal itself, not a wait for an outcome


class Hold:
    """A responder: each request waits until released, then gets the partner's normal answer."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request, body: bytes) -> web.Response | None:
        self.arrived += 1
        await self.release.wait()
        return None


async def test_a_refused_group_settle_is_written_later_and_nothing_is_sent_twice(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    partner = await partners("423")
    out_key = f"{stream_key}:out:{partner.dest_id}"
    data = raw_config(own_redis.url, stream_key, partner)
    with WorkerProcess(data, tmp_path).start() as worker:
        await wait_for(worker.ready, 20, "worker ready", worker.log)
        warm = await produce(direct, stream_key, "warm", 10)
        await wait_for(lambda: warm <= delivered(partner), 20, "warm-up delivered")
        await settled(direct, stream_key, partner.dest_id)

        hold = Hold()
        partner.server.responder = hold
        held = await produce(direct, stream_key, "held", 40)  # four batches of 10 users
        await wait_for(lambda: hold.arrived == 4, 20, "four batches at the partner", worker.log)
        await direct.config_set("min-replicas-to-write", 1)  # every write: NOREPLICAS
        try:
            hold.release.set()
            await wait_for(lambda: held <= delivered(partner), 10, "the partner has them all")
            await asyncio.sleep(FAULT_SECONDS)
            still = await direct.xpending(out_key, GROUP)
            assert still["pending"] == 4, still  # delivered, not acknowledged: kept pending
            errors = await worker.metric("iris_redis_errors_total", reply="NOREPLICAS")
        finally:
            await direct.config_set("min-replicas-to-write", 0)
        await settled(direct, stream_key, partner.dest_id)
        requests = partner.server.request_count

    assert errors >= 1
    assert await direct.xlen(out_key) == 0  # settled: acknowledged and deleted
    assert await direct.xlen(f"{stream_key}:dlq") == 0
    assert requests == 5  # the warm-up and the four held batches, each sent once
    keys = Counter(batch.idempotency_key for batch in partner.server.received)
    assert len(keys) == 5 and set(keys.values()) == {1}, keys
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: warm | held})
