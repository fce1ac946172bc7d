"""Consumers in the group: one live worker per consumer name, and none left behind
(issue 12, acceptance 4 and 5).

Two workers configured with one consumer name must never process the same entries: the second
takes a unique name and says so in one line. A worker that lost its name while frozen stops
without writing what it held. Clean stops remove their consumers; consumers of gone workers
that hold nothing are removed after ``idle_consumer_ms``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from iris_demo.localredis import RedisProcess
from tests.conftest import running, wait_for
from tests.faults.harness import (
    Pairs,
    WorkerProcess,
    as_config,
    check_promises,
    delivered,
    missing,
    produce,
    raw_config,
    settled,
)
from tests.helpers import GROUP


async def consumers(client: aioredis.Redis, key: str) -> dict[str, int]:
    """The group's consumers on ``key`` and what each holds."""
    if not await client.exists(key):
        return {}
    return {c["name"]: c["pending"] for c in await client.xinfo_consumers(key, GROUP)}


async def test_two_workers_with_one_consumer_name(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """Both configured with ``consumer: same`` (one ConfigMap for every replica): the second
    reads as ``same-<suffix>`` and says so in one WARNING; 1,500 events reach the partner, and
    an event that arrives twice always carries the same Idempotency-Key."""
    partner = await partners("423")
    data = raw_config(own_redis.url, stream_key, partner, consumer="same")
    sent: Pairs = set()
    with WorkerProcess(data, tmp_path, "a").start() as a:
        await wait_for(a.ready, 20, "first worker ready", a.log)
        sent |= await produce(direct, stream_key, "before", 500)
        with WorkerProcess(data, tmp_path, "b").start() as b:
            await wait_for(b.ready, 30, "second worker ready", b.log)
            sent |= await produce(direct, stream_key, "during", 1000)
            await wait_for(lambda: sent <= delivered(partner), 30, "every event delivered",
                           lambda: missing(partner, sent))
            await settled(direct, stream_key, partner.dest_id)
            names = await consumers(direct, stream_key)
            clash = [json.loads(line) for line in b.log().splitlines() if "in use" in line]
    assert "same" in names and any(n.startswith("same-") for n in names), names
    assert len(clash) == 1 and clash[0]["level"] == "warning", clash
    assert "'same'" in clash[0]["message"]
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})


async def test_a_worker_that_lost_its_name_stops_without_writing(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """Worker A, frozen (SIGSTOP) with events in an open batch, loses its name's lease; worker
    B starts with the same name, takes the name and A's pending entries. When A wakes it sees
    the lease is B's, logs one ERROR and exits 1 without writing its open batch: every event
    arrives, never under two Idempotency-Keys."""
    partner = await partners("423")
    data = raw_config(own_redis.url, stream_key, partner, consumer="same",
                      dest={"batch": {"max_users": 1000, "max_wait": 3}})
    with WorkerProcess(data, tmp_path, "a").start() as a:
        await wait_for(a.ready, 20, "worker A ready", a.log)
        sent = await produce(direct, stream_key, "held", 20)

        async def held_by_a() -> bool:
            return (await consumers(direct, stream_key)).get("same") == 20

        await wait_for(held_by_a, 10, "A holds the events in an open batch")
        a.signal(signal.SIGSTOP)
        try:
            lease = f"{stream_key}:consumer:same"

            async def lapsed() -> bool:
                return not await direct.exists(lease)

            await wait_for(lapsed, 20, "A's lease lapsed")
            with WorkerProcess(data, tmp_path, "b").start() as b:
                await wait_for(b.ready, 30, "worker B ready with the name", b.log)
                a.signal(signal.SIGCONT)
                assert a.wait(20) == 1
                await wait_for(lambda: sent <= delivered(partner), 30, "delivered by B",
                               lambda: missing(partner, sent))
                await settled(direct, stream_key, partner.dest_id)
                assert "in use" not in b.log()
        finally:
            a.signal(signal.SIGCONT)
        lost = [json.loads(line) for line in a.log().splitlines() if "took over" in line]
    assert len(lost) == 1 and lost[0]["level"] == "error", lost
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})


async def test_clean_restarts_leave_no_consumer_behind(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Twelve workers, each with a new name, start, deliver and stop cleanly: none of them is
    left in the group of the inbound stream or of the outbound stream."""
    partner = await partners("423")
    outbound = f"{stream_key}:out:{partner.dest_id}"
    sent: Pairs = set()
    for i in range(12):
        config = as_config(raw_config(redis_server.url, stream_key, partner, consumer=f"r{i}"))
        async with running(config):
            batch = await produce(redis, stream_key, f"restart{i}", 5)
            sent |= batch
            await wait_for(lambda b=batch: b <= delivered(partner), 20, "delivered")
            await settled(redis, stream_key, partner.dest_id)
    assert await consumers(redis, stream_key) == {}
    assert await consumers(redis, outbound) == {}
    await check_promises(redis, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})


async def test_idle_consumers_of_gone_workers_are_removed(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """A consumer left by a worker that died holding nothing, and one that died holding an
    entry: once the entry is taken over and both have been idle ``idle_consumer_ms``, the
    running worker removes them; its own consumer stays."""
    partner = await partners("423")
    await redis.xgroup_create(stream_key, GROUP, id="0", mkstream=True)
    await redis.xgroup_createconsumer(stream_key, GROUP, "ghost-empty")
    await produce(redis, stream_key, "orphan", 1)
    await redis.xreadgroup(GROUP, "ghost-holding", {stream_key: ">"}, count=1)
    assert await consumers(redis, stream_key) == {"ghost-empty": 0, "ghost-holding": 1}
    config = as_config(raw_config(redis_server.url, stream_key, partner, consumer="live",
                                  claim_idle_ms=1500, idle_consumer_ms=2000,
                                  dest={"timeout": 1}))
    async with running(config):
        started = time.monotonic()

        async def only_live() -> bool:
            return set(await consumers(redis, stream_key)) == {"live"}

        await wait_for(only_live, 20, "ghosts removed",
                       lambda: consumers(redis, stream_key))
        took = time.monotonic() - started
        await wait_for(lambda: {("orphan-0000", "s1")} <= delivered(partner), 10, "orphan")
    assert took < 10


async def test_the_idle_consumer_reaper_spares_a_consumer_holding_a_batch(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """A quiet stream, one batch held by a slow partner for longer than ``idle_consumer_ms``:
    the consumer holding it is idle on the outbound stream but not removed (removing it would
    orphan the batch), and the batch is delivered once."""
    partner = await partners("423")
    release = asyncio.Event()
    seen = [0]

    async def slow(request: web.Request, body: bytes) -> web.Response | None:
        seen[0] += 1
        await release.wait()
        return None

    partner.server.responder = slow
    config = as_config(raw_config(redis_server.url, stream_key, partner, consumer="holder",
                                  idle_consumer_ms=1000, claim_idle_ms=40000,
                                  dest={"timeout": 20}))
    outbound = f"{stream_key}:out:{partner.dest_id}"
    async with running(config):
        sent = await produce(redis, stream_key, "slow", 3)
        await wait_for(lambda: seen[0] == 1, 10, "the batch at the partner")

        async def idle_while_holding() -> bool:
            rows = await redis.xinfo_consumers(outbound, GROUP)
            return any(c["name"] == "holder" and c["pending"] == 1 and c["idle"] > 3000
                       for c in rows)

        await wait_for(idle_while_holding, 10, "the holder idle past idle_consumer_ms")
        assert (await consumers(redis, outbound)).get("holder") == 1
        release.set()
        await wait_for(lambda: sent <= delivered(partner), 10, "delivered")
        await settled(redis, stream_key, partner.dest_id)
    assert seen[0] == 1 and len(partner.server.received) == 1
