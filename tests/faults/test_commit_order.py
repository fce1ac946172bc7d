"""The consumer's commit acknowledges inbound entries only after every batch they complete is
written (``store.atomic``): a write that Redis refuses for one key does not leave the
acknowledgement queued beside it to happen anyway, as a ``MULTI`` would (its EXEC runs every
command that can run), which acknowledged events whose batch was never written: lost.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from iris_demo.localredis import RedisProcess
from tests.conftest import metric, running, wait_for
from tests.faults.harness import (
    as_config,
    check_promises,
    config_data,
    delivered,
    dest_config,
    missing,
    produce,
    raw_config,
    settled,
)
from tests.helpers import GROUP


async def inbound_pending(direct: aioredis.Redis, stream_key: str) -> int:
    return int((await direct.xpending(stream_key, GROUP))["pending"])


async def test_an_outbound_key_of_another_type_acknowledges_nothing(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Someone replaces the destination's outbound stream with a string: the commit's XADD is
    refused (WRONGTYPE). The events stay pending inbound, every commit fails the same way
    (counted as a Redis error), and once the key is gone all of them are delivered."""
    partner = await partners("423")
    outbound = f"{stream_key}:out:{partner.dest_id}"
    config = as_config(raw_config(own_redis.url, stream_key, partner, block_ms=200,
                                  dest={"batch": {"max_users": 5, "max_wait": 0.05}}))
    async with running(config) as worker:
        warm = await produce(direct, stream_key, "warm", 5)
        await wait_for(lambda: warm <= delivered(partner), 20, "warm-up delivered")
        await settled(direct, stream_key, partner.dest_id)

        await direct.delete(outbound)
        await direct.set(outbound, "not a stream")
        refused = metric(worker, "iris_redis_errors_total", reply="other")
        held = await produce(direct, stream_key, "held", 10)
        await wait_for(lambda: metric(worker, "iris_redis_errors_total", reply="other")
                       >= refused + 3, 20, "three refused commits")
        assert await inbound_pending(direct, stream_key) == len(held)
        assert not held & delivered(partner)

        await direct.delete(outbound)
        await wait_for(lambda: held <= delivered(partner), 30, "every held event delivered",
                       lambda: missing(partner, held))
        await settled(direct, stream_key, partner.dest_id)

    assert await direct.xlen(f"{stream_key}:dlq") == 0
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: warm | held})


async def test_a_round_of_12000_entries_is_one_commit(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """``stream.read_count: 12000``: one round's commit acknowledges 12,000 inbound entries. Lua's
    ``unpack`` stops at about 8,000 values ("too many results to unpack": taskforcesh/bullmq#422,
    HDT3213/delayqueue#3, redis/rueidis#595), so the XACK is written in chunks; every event is
    delivered and acknowledged, and Redis refused nothing."""
    partner = await partners("423")
    config = as_config(raw_config(own_redis.url, stream_key, partner, read_count=12000,
                                  dest={"batch": {"max_users": 1000, "max_wait": 0.05}}))
    sent = await produce(direct, stream_key, "round", 12000)
    async with running(config) as worker:
        await wait_for(lambda: sent <= delivered(partner), 60, "every event delivered",
                       lambda: missing(partner, sent))
        await settled(direct, stream_key, partner.dest_id)
        refused = sum(metric(worker, "iris_redis_errors_total", reply=reply)
                      for reply in ("other", "NOPERM", "OOM"))

    assert refused == 0
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})


async def test_a_refused_write_writes_nothing_for_the_other_destination(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Events for two destinations, the outbound stream of the second replaced by a string:
    each commit is refused whole, before any write, so the first partner does not get its
    batches again at every retry (nor does a dead letter pile up), and after the fix each
    batch reaches each partner once."""
    first, second = await partners("423"), await partners("777")
    data = config_data(own_redis.url, stream_key,
                       [dest_config(p, batch={"max_users": 5, "max_wait": 0.05})
                        for p in (first, second)], block_ms=200)
    data["shutdown_timeout"] = 3
    async with running(as_config(data)) as worker:
        await direct.set(f"{stream_key}:out:{second.dest_id}", "not a stream")
        refused = metric(worker, "iris_redis_errors_total", reply="other")
        held = await produce(direct, stream_key, "held", 10)
        await wait_for(lambda: metric(worker, "iris_redis_errors_total", reply="other")
                       >= refused + 3, 20, "three refused commits")
        assert await direct.xlen(f"{stream_key}:out:{first.dest_id}") == 0
        assert not first.server.received

        await direct.delete(f"{stream_key}:out:{second.dest_id}")
        for partner in (first, second):
            await wait_for(lambda p=partner: held <= delivered(p), 30, "every event delivered",
                           lambda p=partner: missing(p, held))
            await settled(direct, stream_key, partner.dest_id)

    keys = [b.idempotency_key for b in first.server.received]
    assert len(keys) == len(set(keys)) == 2, keys
    await check_promises(direct, stream_key, GROUP,
                         {p.dest_id: p.server for p in (first, second)},
                         {first.dest_id: held, second.dest_id: held})


async def test_an_event_of_4000_fields_is_dead_lettered_whole(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """An invalid event with 4,000 fields: its dead letter is one XADD of 8,000 words and more,
    which a Lua script cannot pass on (``unpack`` stops near 8,000 values), so that write is a
    MULTI. The dead letter keeps every field, and the events behind it are delivered."""
    partner = await partners("423")
    config = as_config(raw_config(own_redis.url, stream_key, partner,
                                  dest={"batch": {"max_users": 5, "max_wait": 0.05}}))
    wide = {f"f{i:04d}": "v" for i in range(4000)}  # and no uuid: invalid
    await direct.xadd(stream_key, wide)
    sent = await produce(direct, stream_key, "after", 10)
    async with running(config) as worker:
        await wait_for(lambda: sent <= delivered(partner), 30, "the events behind it",
                       lambda: missing(partner, sent))
        await settled(direct, stream_key, partner.dest_id)
        refused = metric(worker, "iris_redis_errors_total", reply="other")

    assert refused == 0
    [(_, dead)] = await direct.xrange(f"{stream_key}:dlq")
    assert dead["dlq_reason"] == "invalid_event"
    assert {k: v for k, v in dead.items() if not k.startswith("dlq_")} == wide
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent}, dead_reasons={"": "invalid_event"})
