"""A stream deleted while iris is blocked reading it: Redis cuts the read short with
``UNBLOCKED the stream key no longer exists``. That is a vanished consumer group (recreated at
once), not a failover: it was counted and logged as "redis is a read-only replica" (READONLY),
which sent an operator looking for a replica that did not exist (the wake-up on DEL:
redis/redis#6887 and #10306)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from iris_demo.localredis import RedisProcess
from tests.conftest import metric, running, wait_for
from tests.faults.harness import (
    as_config,
    check_promises,
    delivered,
    missing,
    produce,
    raw_config,
    settled,
)
from tests.helpers import GROUP


async def test_an_outbound_stream_deleted_under_a_blocked_read_is_a_vanished_group(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    partner = await partners("423")
    outbound = f"{stream_key}:out:{partner.dest_id}"
    config = as_config(raw_config(own_redis.url, stream_key, partner, block_ms=1000))
    async with running(config) as worker:
        warm = await produce(direct, stream_key, "warm", 5)
        await wait_for(lambda: warm <= delivered(partner), 20, "warm-up delivered")
        await settled(direct, stream_key, partner.dest_id)

        async def blocked_reads() -> int:
            clients = await direct.client_list()
            return sum(1 for c in clients if c.get("cmd") == "xreadgroup"
                       and "b" in c.get("flags", ""))

        await wait_for(lambda: blocked_reads(), 10, "the blocked outbound read")
        await direct.delete(outbound)
        await wait_for(lambda: "vanished" in caplog.text, 10, "the group named as vanished",
                       lambda: caplog.text[-2000:])
        after = await produce(direct, stream_key, "after", 10)
        await wait_for(lambda: after <= delivered(partner), 20, "events after the delete",
                       lambda: missing(partner, after))
        await settled(direct, stream_key, partner.dest_id)
        readonly = metric(worker, "iris_redis_errors_total", reply="READONLY")

    assert readonly == 0
    assert "read-only replica" not in caplog.text
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: warm | after})
