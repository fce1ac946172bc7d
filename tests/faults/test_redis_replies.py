"""Redis answers that are not connection faults: OOM, NOPERM, READONLY, and dropped connections
while a batch is in its retries (issue 12, acceptance 1 and 2).

In every case nothing healthy is dead-lettered: iris's own re-reads of its pending list are not
deliveries, the worker backs off without a traceback or a loop restart, ``/readyz`` is 503 and
names the reply, and the fault costs at most two log lines (one WARNING when it starts, one
INFO when it ends). A process-killing poison entry still reaches the dead-letter stream after
``max_deliveries`` crashes. The fault durations are the faults themselves, not waits for an
outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from iris.core.partitions import inbound_keys
from iris_demo.localredis import RedisProcess
from tests.conftest import metric, running, wait_for
from tests.faults.harness import (
    WorkerProcess,
    as_config,
    check_promises,
    delivered,
    missing,
    produce,
    raw_config,
    settled,
)
from tests.faults.proxy import FaultProxy
from tests.helpers import GROUP

FAULT_SECONDS = 25
NOTABLE = ("info", "warning", "error", "critical")


def notable(records: list[dict[str, Any]]) -> list[str]:
    """INFO and above about Redis: what an operator sees of the fault (the partner's own
    trouble, in the scenarios that add some, has lines of its own)."""
    return [f"{r['level']}: {r['message'][:160]}" for r in records
            if r["level"] in NOTABLE and r["logger"] != "iris.runtime.publisher"]


async def not_ready_naming(worker: WorkerProcess, reply: str) -> bool:
    status, body = await worker.get("/readyz")
    return status == 503 and reply in body


class Gate:
    """A partner responder: 503 until opened, then the partner's normal answer."""

    def __init__(self) -> None:
        self.open = False
        self.refused = 0

    async def __call__(self, request: web.Request, body: bytes) -> web.Response | None:
        if self.open:
            return None
        self.refused += 1
        return web.json_response({"status": "503", "message": "down"}, status=503)


def patient(**overrides: Any) -> dict[str, Any]:
    """Retries that outlast the fault, and a circuit that stays closed (its own log lines are
    not the Redis fault's)."""
    return {"retry": {"max_attempts": 1000, "base_delay": 0.05, "max_delay": 0.5},
            "circuit": {"failure_threshold": 100000}, **overrides}


async def test_25_s_of_oom_dead_letters_nothing(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """The case `oom-max-deliveries`: iris frozen, 30 events added, Redis at maxmemory
    (noeviction) for 25 s. With max_deliveries 2, any counting of iris's own re-reads would
    dead-letter them within seconds; none is, and all 30 arrive once Redis accepts writes."""
    partner = await partners("423")
    data = raw_config(own_redis.url, stream_key, partner, max_deliveries=2)
    with WorkerProcess(data, tmp_path).start() as worker:
        await wait_for(worker.ready, 20, "worker ready", worker.log)
        warm = await produce(direct, stream_key, "warm", 10)  # the token is fetched and stored
        await wait_for(lambda: warm <= delivered(partner), 20, "warm-up delivered")
        await settled(direct, stream_key, partner.dest_id)

        worker.signal(signal.SIGSTOP)
        held = await produce(direct, stream_key, "held", 30)
        used = int((await direct.info("memory"))["used_memory"])
        await direct.config_set("maxmemory", used // 2)
        mark = len(worker.log().splitlines())
        worker.signal(signal.SIGCONT)
        started = time.monotonic()
        try:
            await wait_for(lambda: not_ready_naming(worker, "OOM"), 10,
                           "/readyz 503 naming OOM", worker.log)
            while time.monotonic() - started < FAULT_SECONDS:  # the fault itself
                assert not await worker.ready(), "ready while Redis refuses every write"
                await asyncio.sleep(1)
        finally:
            await direct.config_set("maxmemory", 0)
        await wait_for(lambda: held <= delivered(partner), 30, "every held event delivered",
                       lambda: missing(partner, held))
        await settled(direct, stream_key, partner.dest_id)
        await wait_for(worker.ready, 10, "ready again")
        await wait_for(lambda: "redis is usable again" in worker.log(), 10, "the recovery line")
        dead = await worker.metric("iris_events_dead_lettered_total", destination="",
                                   reason="max_deliveries")
        errors = await worker.metric("iris_redis_errors_total", reply="OOM")
        lines = worker.records(mark)

    assert await direct.xlen(f"{stream_key}:dlq") == 0
    assert dead == 0
    assert errors >= 1
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: warm | held})
    seen = notable(lines)
    assert len(seen) <= 2, seen
    assert "OOM" in seen[0] and seen[-1].startswith("info: redis is usable again"), seen
    assert not [r for r in lines if "Traceback" in json.dumps(r)]


async def test_25_s_without_scripting_dead_letters_nothing(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """The Redis user loses ``@scripting`` for 25 s while batches are in their retries (the
    partner answers 503): every heartbeat (EVALSHA) is refused with NOPERM. Nothing is
    dead-lettered, /readyz names NOPERM and the command, and everything arrives afterwards."""
    partner = await partners("423")
    gate = Gate()
    partner.server.responder = gate
    data = raw_config(own_redis.url, stream_key, partner, max_deliveries=2, claim_idle_ms=6000,
                      dest=patient())
    with WorkerProcess(data, tmp_path).start() as worker:
        await wait_for(worker.ready, 20, "worker ready", worker.log)
        sent = await produce(direct, stream_key, "acl", 20)
        await wait_for(lambda: gate.refused >= 2, 20, "batches in their retries")
        mark = len(worker.log().splitlines())
        await direct.acl_setuser("default", enabled=True, nopass=True, commands=["-@scripting"])
        started = time.monotonic()
        try:
            await wait_for(lambda: not_ready_naming(worker, "evalsha"), 10,
                           "/readyz 503 naming the refused command", worker.log)
            while time.monotonic() - started < FAULT_SECONDS:
                await asyncio.sleep(1)
        finally:
            await direct.acl_setuser("default", enabled=True, nopass=True, commands=["+@all"])
        gate.open = True
        await wait_for(lambda: sent <= delivered(partner), 30, "every event delivered",
                       lambda: missing(partner, sent))
        await settled(direct, stream_key, partner.dest_id)
        await wait_for(worker.ready, 10, "ready again")
        lines = worker.records(mark)

    assert await direct.xlen(f"{stream_key}:dlq") == 0
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})
    seen = notable(lines)
    assert len(seen) <= 2, seen
    assert "NOPERM" in seen[0], seen
    assert not [r for r in lines if "Traceback" in json.dumps(r)]


async def test_dropped_connections_while_a_batch_is_retried(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twelve resets of every Redis connection while a batch waits in its retries (each one
    made the publisher re-read its pending list): with max_deliveries 10 the batch is not
    dead-lettered (it used to be, and then delivered as well); it is delivered once, under one
    Idempotency-Key, and each drop costs at most two log lines."""
    caplog.set_level(logging.DEBUG)
    partner = await partners("423")
    gate = Gate()
    partner.server.responder = gate
    async with FaultProxy("127.0.0.1", own_redis.port) as proxy:
        config = as_config(raw_config(f"redis://127.0.0.1:{proxy.port}/0", stream_key, partner,
                                      dest=patient()))
        async with running(config) as worker:
            sent = await produce(direct, stream_key, "drop", 10)
            await wait_for(lambda: gate.refused >= 1, 10, "a batch in its retries")
            mark = len(caplog.records)
            saw_unready = 0
            for _ in range(12):
                accepted = proxy.accepted
                proxy.reset_all()
                await wait_for(lambda a=accepted: proxy.accepted > a, 10, "a reconnect")
                saw_unready += "redis unreachable" in " ".join(worker.health.readiness()[1])
                await wait_for(lambda: worker.health.readiness()[0], 10, "ready after a drop")
            gate.open = True
            await wait_for(lambda: sent <= delivered(partner), 20, "every event delivered",
                           lambda: missing(partner, sent))
            await settled(direct, stream_key, partner.dest_id)
            assert metric(worker, "iris_events_dead_lettered_total", destination="423",
                          reason="max_deliveries") == 0
            records = caplog.records[mark:]

    assert await direct.xlen(f"{stream_key}:dlq") == 0
    counts = await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                                  {partner.dest_id: sent})
    keys = {b.idempotency_key for b in partner.server.received}
    assert len(keys) == 1 and max(counts["423"].values()) == 1, (keys, counts)
    assert saw_unready >= 1
    seen = [r.getMessage() for r in records  # the Redis fault's lines (not the partner's)
            if r.levelno >= logging.INFO and r.name.startswith("iris")
            and r.name != "iris.runtime.publisher"]
    assert len(seen) <= 2 * 12, "\n".join(seen)
    assert not [r for r in records if r.exc_info or "restarting" in r.getMessage()]


async def test_a_process_killing_entry_is_still_dead_lettered_after_max_deliveries(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """An entry whose worker dies every time it holds it (SIGKILL while it sits in an open
    batch): twice under one consumer name (the restart re-reads it as a delivery) and once
    taken over by another name (XAUTOCLAIM). With max_deliveries 2 the next holder
    dead-letters it as ``max_deliveries``; nothing stays pending."""
    partner = await partners("423")
    await direct.xgroup_create(stream_key, GROUP, id="0", mkstream=True)
    poison_id = await direct.xadd(stream_key, {"uuid": "poison", "segment": "s1",
                                                "dpuuid": "dp-poison"})

    async def held_by(name: str, times: int) -> bool:
        rows = await direct.xpending_range(stream_key, GROUP, "-", "+", 10)
        return any(r["consumer"] == name and r["times_delivered"] == times for r in rows)

    def config(name: str) -> dict[str, Any]:
        return raw_config(own_redis.url, stream_key, partner, consumer=name, max_deliveries=2,
                          claim_idle_ms=1500, dest={"timeout": 1, "batch": {
                              "max_users": 1000, "max_wait": 60}})

    for cycle, (name, times) in enumerate((("crash-a", 1), ("crash-a", 2)), 1):
        with WorkerProcess(config(name), tmp_path, f"w{cycle}").start() as worker:
            await wait_for(lambda n=name, t=times: held_by(n, t), 30,
                           f"the poison held by {name} (delivery {times})", worker.log)
            worker.kill()
    assert await direct.xlen(f"{stream_key}:dlq") == 0

    with WorkerProcess(config("crash-b"), tmp_path, "w3").start() as worker:
        async def dead_lettered() -> bool:
            return await direct.xlen(f"{stream_key}:dlq") == 1

        await wait_for(dead_lettered, 20, "poison dead-lettered", worker.log)
        await settled(direct, stream_key, partner.dest_id)
    [(_, dead)] = await direct.xrange(f"{stream_key}:dlq")
    assert dead["dlq_reason"] == "max_deliveries" and dead["dlq_source_id"] == poison_id
    assert dead["uuid"] == "poison"
    assert (await direct.xpending(stream_key, GROUP))["pending"] == 0


async def test_start_against_a_read_only_replica_waits_until_it_is_promoted(
    stream_key: str, partners: Any, tmp_path: Path,
) -> None:
    """``iris run`` pointed at a replica (a failover left the address on it): it does not exit,
    /readyz is 503 naming READONLY, and once the replica is promoted it starts and delivers."""
    partner = await partners("423")
    with RedisProcess() as primary, RedisProcess() as replica:
        client = aioredis.Redis.from_url(replica.url, decode_responses=True)
        try:
            await client.replicaof("127.0.0.1", primary.port)

            async def linked() -> bool:
                info = await client.info("replication")
                return info.get("master_link_status") == "up"

            await wait_for(linked, 20, "replication link up")
            data = raw_config(replica.url, stream_key, partner)
            with WorkerProcess(data, tmp_path).start() as worker:
                await wait_for(lambda: not_ready_naming(worker, "READONLY"), 20,
                               "/readyz 503 naming READONLY", worker.log)
                assert (await worker.get("/healthz"))[0] == 200
                assert worker.proc is not None and worker.proc.poll() is None
                await client.replicaof("NO", "ONE")
                await wait_for(worker.ready, 20, "ready once promoted", worker.log)
                sent = await produce(client, stream_key, "promoted", 20)
                await wait_for(lambda: sent <= delivered(partner), 20, "delivered",
                               lambda: missing(partner, sent))
                await settled(client, stream_key, partner.dest_id)
                log = worker.log()
            await check_promises(client, stream_key, GROUP, {partner.dest_id: partner.server},
                                 {partner.dest_id: sent})
        finally:
            await client.aclose()
    assert "Traceback" not in log and "restarting" not in log
    levels = [json.loads(line)["level"] for line in log.splitlines() if "READONLY" in line]
    assert levels.count("warning") == 1, levels


async def test_a_missing_permission_is_named_at_start(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """A Redis user without XAUTOCLAIM: the worker checks what it needs at start, waits with
    /readyz 503 naming the command, and starts as soon as the permission is granted."""
    partner = await partners("423")
    await direct.acl_setuser("iris", enabled=True, passwords=["+pw-iris"], keys=["*"],
                             commands=["+@all", "-xautoclaim"])
    url = f"redis://iris:pw-iris@127.0.0.1:{own_redis.port}/0"
    with WorkerProcess(raw_config(url, stream_key, partner), tmp_path).start() as worker:
        await wait_for(lambda: not_ready_naming(worker, "xautoclaim"), 20,
                       "/readyz 503 naming xautoclaim", worker.log)
        await direct.acl_setuser("iris", enabled=True, commands=["+xautoclaim"])
        await wait_for(worker.ready, 20, "ready once granted", worker.log)
        sent = await produce(direct, stream_key, "granted", 10)
        await wait_for(lambda: sent <= delivered(partner), 20, "delivered")
        await settled(direct, stream_key, partner.dest_id)
        log = worker.log()
    assert "pw-iris" not in log
    warnings = [json.loads(line) for line in log.splitlines() if '"warning"' in line]
    assert len(warnings) == 1 and "NOPERM for xautoclaim" in warnings[0]["message"], warnings



async def test_a_failover_leaves_the_worker_on_a_replica(
    stream_key: str, partners: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """While iris runs, its Redis is demoted to a replica (a failover that left the address on
    the old primary): writes answer READONLY. iris waits (503 naming READONLY), dead-letters
    nothing, and delivers everything once the node is primary again."""
    caplog.set_level(logging.DEBUG)
    partner = await partners("423")
    with RedisProcess() as node, RedisProcess() as other:
        client = aioredis.Redis.from_url(node.url, decode_responses=True)
        peer = aioredis.Redis.from_url(other.url, decode_responses=True)
        try:
            config = as_config(raw_config(node.url, stream_key, partner))
            async with running(config) as worker:
                before = await produce(client, stream_key, "before", 20)
                await wait_for(lambda: before <= delivered(partner), 20, "delivered before")
                await settled(client, stream_key, partner.dest_id)
                await peer.replicaof("127.0.0.1", node.port)  # the peer takes a copy ...

                async def synced() -> bool:
                    return (await peer.info("replication")).get("master_link_status") == "up"

                await wait_for(synced, 20, "the peer in sync")
                await peer.replicaof("NO", "ONE")  # ... becomes the primary ...
                await client.replicaof("127.0.0.1", other.port)  # ... and ours its replica
                during = await produce(peer, stream_key, "during", 20)  # written to the primary

                def readonly() -> bool:
                    return any("READONLY" in r for r in worker.health.readiness()[1])

                async def replicated() -> bool:  # ours holds what was written meanwhile
                    link = (await client.info("replication")).get("master_link_status")
                    uuids = {f["uuid"] for _, f in await client.xrange(stream_key)}
                    return link == "up" and {u for u, _ in during} <= uuids

                await wait_for(readonly, 20, "/readyz naming READONLY")
                await wait_for(replicated, 20, "ours in sync with the primary")
                await client.replicaof("NO", "ONE")  # promoted back
                await wait_for(lambda: during <= delivered(partner), 30, "delivered after",
                               lambda: missing(partner, during))
                await settled(client, stream_key, partner.dest_id)
                await wait_for(lambda: worker.health.readiness()[0], 10, "ready again")
            assert await client.xlen(f"{stream_key}:dlq") == 0
            await check_promises(client, stream_key, GROUP, {partner.dest_id: partner.server},
                                 {partner.dest_id: before | during})
        finally:
            await client.aclose()
            await peer.aclose()
    assert not [r for r in caplog.records if r.exc_info or "restarting" in r.getMessage()]


async def test_a_busy_script_and_a_script_flush(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another client runs a Lua script for 3 s (every command of iris's meanwhile answers
    BUSY), then flushes the script cache (iris's scripts must load again). Nothing is
    dead-lettered, /readyz named BUSY, and everything arrives."""
    caplog.set_level(logging.DEBUG)
    partner = await partners("423")
    await direct.config_set("busy-reply-threshold", 100)
    config = as_config(raw_config(own_redis.url, stream_key, partner, claim_idle_ms=3000))
    async with running(config) as worker:
        sent = await produce(direct, stream_key, "warm", 10)
        await wait_for(lambda: sent <= delivered(partner), 20, "warm-up delivered")
        spin = asyncio.create_task(direct.eval(
            "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
            "if (n[1] - t[1]) * 1000000 + n[2] - t[2] >= 3000000 then return 1 end end", 0))
        saw_busy = False
        while not spin.done():  # the fault lasts as long as the script
            saw_busy |= any("BUSY" in r for r in worker.health.readiness()[1])
            await asyncio.sleep(0.05)
        await spin
        await direct.script_flush()
        later = await produce(direct, stream_key, "later", 20)
        sent |= later
        await wait_for(lambda: sent <= delivered(partner), 20, "delivered after the script",
                       lambda: missing(partner, sent))
        await settled(direct, stream_key, partner.dest_id)
        await wait_for(lambda: worker.health.readiness()[0], 10, "ready again")
    assert saw_busy
    assert await direct.xlen(f"{stream_key}:dlq") == 0
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})
    assert not [r for r in caplog.records if r.exc_info or "restarting" in r.getMessage()]


async def test_clean_restarts_during_an_outage_count_no_delivery(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """A partner down (503) while the worker is restarted cleanly (SIGTERM) four times, twice
    under its own name and twice under new ones, with max_deliveries 3: the batch it held is
    handed back each time (its count is not raised by a clean stop), so nothing is
    dead-lettered, and it is delivered once the partner is back."""
    partner = await partners("423")
    gate = Gate()
    partner.server.responder = gate
    sent = await produce(direct, stream_key, "outage", 5)
    for cycle, name in enumerate(("same", "same", "other-1", "other-2")):
        data = raw_config(own_redis.url, stream_key, partner, consumer=name, max_deliveries=3,
                          dest=patient())
        with WorkerProcess(data, tmp_path, f"c{cycle}").start() as worker:
            await wait_for(worker.ready, 20, "worker ready", worker.log)
            before = gate.refused
            await wait_for(lambda b=before: gate.refused > b, 20, "a refused attempt",
                           worker.log)
            worker.signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 20) == 0
    rows = await direct.xpending_range(f"{stream_key}:out:423", GROUP, "-", "+", 10)
    # each holder handed it back: the count is the number of holders that died with it, 0
    assert [r["times_delivered"] for r in rows] == [0], rows
    gate.open = True
    data = raw_config(own_redis.url, stream_key, partner, consumer="last", max_deliveries=3)
    with WorkerProcess(data, tmp_path, "last").start() as worker:
        await wait_for(lambda: sent <= delivered(partner), 20, "delivered", worker.log)
        await settled(direct, stream_key, partner.dest_id)
    assert await direct.xlen(f"{stream_key}:dlq") == 0
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})


@pytest.mark.parametrize("partitions", [1, 4])
async def test_oom_with_a_backlog_stops_deliveries_it_cannot_settle(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path, partitions: int,
) -> None:
    """A delivered batch frees its in-flight slot before its settle is written, but only up to
    2 × ``max_in_flight`` such batches per destination, all partitions together: when Redis
    refuses writes (OOM, while XREADGROUP still works) with 40 batches waiting in the outbound
    streams, the worker delivers at most 3 × ``max_in_flight`` of them and then waits, instead of
    sending the whole backlog with none of it acknowledged. Once Redis accepts writes, every
    batch arrives and is settled."""
    partner = await partners("423")
    gate = Gate()
    partner.server.responder = gate
    data = raw_config(own_redis.url, stream_key, partner, max_deliveries=100,
                      partitions=partitions,
                      dest=patient(batch={"max_users": 1, "max_wait": 0.05},
                                   limits={"max_in_flight": 2}))
    inbound = inbound_keys(stream_key, partitions, cluster=False)
    with WorkerProcess(data, tmp_path).start() as worker:
        await wait_for(worker.ready, 20, "worker ready", worker.log)
        backlog: set[tuple[str, str]] = set()
        for index, key in enumerate(inbound):
            backlog |= await produce(direct, key, f"backlog{index}", 40 // partitions)
        async def written(out_key: str) -> bool:
            return int(await direct.xlen(out_key)) == 40 // partitions

        for key in inbound:
            out_key = f"{key}:out:{partner.dest_id}"
            await wait_for(partial(written, out_key), 20, f"batches written to {out_key}")
        await wait_for(lambda: gate.refused >= 2, 10, "the first batches refused")
        used = int((await direct.info("memory"))["used_memory"])
        await direct.config_set("maxmemory", used // 2)
        try:
            gate.open = True
            await wait_for(lambda: not_ready_naming(worker, "OOM"), 10,
                           "/readyz 503 naming OOM", worker.log)
            await asyncio.sleep(3)  # the fault itself: deliveries it could make meanwhile
            during = len(delivered(partner))
            assert 1 <= during <= 6, f"{during} batches delivered that could not be settled"
        finally:
            await direct.config_set("maxmemory", 0)
        await wait_for(lambda: backlog <= delivered(partner), 30, "the whole backlog delivered",
                       lambda: missing(partner, backlog))
        for key in inbound:
            await settled(direct, key, partner.dest_id)
            assert await direct.xlen(f"{key}:dlq") == 0
    if partitions == 1:  # every promise: each event once, under one idempotency key
        await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                             {partner.dest_id: backlog})
    assert len(partner.server.segment_changes()) == 40  # each once
