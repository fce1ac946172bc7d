"""Redis faults (issue 4, acceptance 5–8, and Redis unreachable at start).

Every test here runs its own redis-server (``RedisProcess``), since it kills, freezes or restarts
it, or puts a ``FaultProxy`` in front of it. Outcomes are awaited with deadlines; the only timed
waits are the fault itself (how long Redis stays frozen) and the CPU measurement window.
Each test prints its measured recovery times (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from iris_demo.localredis import RedisProcess
from tests.conftest import metric, running, wait_for
from tests.faults.harness import (
    Pairs,
    WorkerProcess,
    as_config,
    check_promises,
    cpu_seconds,
    delivered,
    missing,
    produce,
    raw_config,
    ready_in_process,
    report,
    settled,
)
from tests.faults.proxy import UPSTREAM, FaultProxy
from tests.helpers import GROUP, at_least, closed_port

RESTARTED = "failed; restarting"  # what the worker logs when a supervised task died of a bug
COMMIT = b"created_ms"  # a field of the batch the consumer's commit XADDs: only that MULTI has it


# --------------------------------------------------------------------------- scenario 5


async def test_redis_killed_and_restarted_without_persistence(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """Redis SIGKILLed and restarted empty under a running ``iris run``: the process never exits,
    /readyz goes 503 then 200, the group is recreated, and events written after the restart are
    delivered (those delivered before stay delivered; nothing pending; no foreign duplicates)."""
    partner = await partners("423")
    data = raw_config(own_redis.url, stream_key, partner)
    with WorkerProcess(data, tmp_path, "worker").start() as worker:
        await wait_for(worker.ready, 20, "worker ready", worker.log)
        before = await produce(direct, stream_key, "before", 30)
        await wait_for(lambda: before <= delivered(partner), 20, "events before the kill",
                       lambda: missing(partner, before))
        doomed = await produce(direct, stream_key, "doomed", 10)  # may die with Redis's memory

        own_redis.kill()
        killed = time.monotonic()

        async def not_ready() -> bool:
            return (await worker.get("/readyz"))[0] == 503

        await wait_for(not_ready, 5, "/readyz 503 within 5 s of Redis stopping", worker.log)
        noticed = time.monotonic() - killed
        assert (await worker.get("/healthz"))[0] == 200
        assert worker.proc is not None and worker.proc.poll() is None, "worker exited"

        own_redis.restart()
        restarted = time.monotonic()
        await wait_for(worker.ready, 5, "/readyz 200 within 5 s of Redis's return", worker.log)
        ready_after = time.monotonic() - restarted

        async def group_back() -> bool:
            if not await direct.exists(stream_key):
                return False
            return any(g["name"] == GROUP for g in await direct.xinfo_groups(stream_key))

        await wait_for(group_back, 15, "consumer group recreated", worker.log)
        after = await produce(direct, stream_key, "after", 30)
        await wait_for(lambda: after <= delivered(partner), 20, "events after the restart",
                       lambda: missing(partner, after) + worker.log()[-2000:])
        delivered_after = time.monotonic() - restarted
        await settled(direct, stream_key, partner.dest_id)
        assert worker.proc.poll() is None, "worker exited"
        log = worker.log()

    assert RESTARTED not in log, log[-3000:]
    survivors = doomed & delivered(partner)  # lost with Redis's memory, or delivered: both fine
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: before | survivors | after})
    assert noticed < 5 and ready_after < 5 and delivered_after < 30  # issue 6: 5 s each way
    report("redis kill+restart", not_ready_after_kill=noticed, ready_after_restart=ready_after,
           delivered_after_restart=delivered_after)


# --------------------------------------------------------------------------- scenario 6


async def test_redis_frozen_twice_the_socket_timeout(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Redis SIGSTOPped for 2 × the client socket timeout while events flow, then continued:
    delivery resumes, every event is delivered, nothing stays pending, and a duplicate only ever
    comes under the same Idempotency-Key (no lost or doubled acks)."""
    partner = await partners("423")
    socket_timeout = 1.5
    config = as_config(raw_config(own_redis.url, stream_key, partner,
                                  socket_timeout=socket_timeout, block_ms=500,
                                  claim_idle_ms=4000))
    # The producer never times out: its XADDs wait out the freeze and then land exactly once
    # (a timed-out XADD would be ambiguous, and a retry could add the event twice).
    producer = aioredis.Redis.from_url(own_redis.url, decode_responses=True,
                                       socket_timeout=None)
    sent: Pairs = set()
    stop = asyncio.Event()

    async def trickle() -> None:
        """One event every 10 ms, before, during (blocked) and after the freeze."""
        i = 0
        while not stop.is_set():
            sent.update(await produce(producer, stream_key, f"trickle{i:04d}", 1))
            i += 1
            await asyncio.sleep(0.01)

    feeder: asyncio.Task[None] | None = None
    try:
        async with running(config) as worker:
            sent.update(await produce(direct, stream_key, "before", 40))
            feeder = asyncio.create_task(trickle())
            await wait_for(lambda: len(delivered(partner)) >= 40, 20, "some delivered before")

            own_redis.freeze()
            frozen = time.monotonic()
            try:
                burst = asyncio.create_task(produce(producer, stream_key, "during", 40))
                # Hold the freeze for twice the socket timeout: the fault itself, not a wait for
                # an outcome. Poll readiness meanwhile, only to report what the worker saw.
                saw_unready = False
                while time.monotonic() - frozen < 2 * socket_timeout:
                    saw_unready |= not worker.health.readiness()[0]
                    await asyncio.sleep(0.05)
            finally:
                own_redis.thaw()
            thawed = time.monotonic()

            sent.update(await asyncio.wait_for(burst, 15))
            await wait_for(lambda: len(sent) >= 200, 20, "the trickle goes on after the thaw")
            stop.set()
            await asyncio.wait_for(feeder, 15)
            await wait_for(lambda: sent <= delivered(partner), 30, "every event delivered",
                           lambda: missing(partner, sent))
            recovered = time.monotonic() - thawed
            await settled(direct, stream_key, partner.dest_id)
            await wait_for(lambda: worker.health.readiness()[0], 5, "ready again after the thaw")
    finally:
        stop.set()
        if feeder is not None and not feeder.done():
            feeder.cancel()
        await producer.aclose()

    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})
    assert recovered < 30
    counts = Counter(partner.server.segment_changes())
    report("redis frozen", all_delivered_after_thaw=recovered)
    print(f"  readiness dropped during the freeze: {saw_unready}; events delivered twice or "
          f"more: {sum(1 for n in counts.values() if n > 1)}")


class OnCommand(FaultProxy):
    """A FaultProxy that acts once, when a chunk holding the armed ``pattern`` goes upstream:

    - ``freeze``: SIGSTOP Redis just before forwarding the chunk, so that command sits in Redis's
      socket buffer for the whole freeze (scenario 6 at its worst moment, deterministically);
    - ``reset_reply``: forward the chunk, and reset the connection when the reply comes back:
      Redis has run the command, the client never learns it.

    It hooks the proxy's per-chunk check (``_hit``), the one place that sees every chunk.
    """

    def __init__(self, server: RedisProcess, action: str) -> None:
        super().__init__("127.0.0.1", server.port)
        self._redis = server
        self._pattern: bytes | None = None
        self._action = action
        self._reply_of: Any = None  # the connection whose next reply is to be reset
        self.fired_at: float | None = None

    def arm(self, pattern: bytes) -> None:
        self._pattern, self.fired_at = pattern, None

    def _hit(self, conn: Any, direction: str, data: bytes) -> bool:
        if direction == UPSTREAM and self._pattern is not None and self._pattern in data:
            self._pattern = None
            self.fired_at = time.monotonic()
            if self._action == "freeze":
                self._redis.freeze()
            else:
                self._reply_of = conn
            return False
        if direction != UPSTREAM and conn is self._reply_of:
            self._reply_of = None
            self.resets_triggered += 1
            return True
        return bool(super()._hit(conn, direction, data))


async def hold_freeze(server: RedisProcess, proxy: OnCommand, seconds: float) -> None:
    """Keep Redis frozen until ``seconds`` after the proxy froze it (the fault itself, not a wait
    for an outcome), then continue it, whatever happens."""
    assert proxy.fired_at is not None
    try:
        await asyncio.sleep(max(0.0, proxy.fired_at + seconds - time.monotonic()))
    finally:
        server.thaw()


async def test_redis_frozen_while_the_consumer_commits(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Scenario 6 at its worst moment: Redis is SIGSTOPped just as the consumer's commit (MULTI:
    XADD batch to the outbound stream, XACK inbound, EXEC) is on its way, for 2 × the socket
    timeout. The client times out and retries; after SIGCONT Redis may run the first copy too.
    Every event must still be delivered, nothing left pending, and a duplicate may only come
    under the same Idempotency-Key (the batch must not be written twice)."""
    partner = await partners("423")
    socket_timeout = 1.5
    async with OnCommand(own_redis, "freeze") as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        config = as_config(raw_config(url, stream_key, partner, socket_timeout=socket_timeout,
                                      block_ms=500, claim_idle_ms=4000))
        async with running(config) as worker:
            proxy.arm(COMMIT)
            sent = await produce(direct, stream_key, "commit", 10)
            await wait_for(lambda: proxy.fired_at is not None, 10, "a commit in flight")
            await hold_freeze(own_redis, proxy, 2 * socket_timeout)
            thawed = time.monotonic()
            await wait_for(lambda: sent <= delivered(partner), 30, "every event delivered",
                           lambda: missing(partner, sent))
            recovered = time.monotonic() - thawed
            await settled(direct, stream_key, partner.dest_id)
            await wait_for(lambda: ready_in_process(worker), 5, "ready again after the fault")

    keys = [b.idempotency_key for b in partner.server.received]
    report("redis frozen mid-commit", all_delivered_after_thaw=recovered)
    print(f"  batches received: {len(keys)}, idempotency keys: {keys}")
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})
    assert recovered < 30


async def test_redis_frozen_while_a_read_is_in_flight(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Scenario 6 with the consumer's XREADGROUP in flight when Redis stops: after SIGCONT Redis
    may hand entries to the abandoned connection (pending, but never seen by the worker). They
    are reclaimed after ``claim_idle_ms`` and delivered; nothing stays pending."""
    partner = await partners("423")
    socket_timeout = 1.5
    async with OnCommand(own_redis, "freeze") as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        config = as_config(raw_config(url, stream_key, partner, socket_timeout=socket_timeout,
                                      block_ms=500, claim_idle_ms=4000))
        async with running(config) as worker:
            sent = await produce(direct, stream_key, "warmup", 10)
            await wait_for(lambda: sent <= delivered(partner), 20, "warm-up delivered")
            proxy.arm(f"{stream_key}\r\n$1\r\n>".encode())  # XREADGROUP … STREAMS <key> >
            await wait_for(lambda: proxy.fired_at is not None, 10, "an inbound read in flight")
            # produced during the freeze: this XADD waits in Redis's buffer like the read
            during = asyncio.create_task(produce(direct, stream_key, "during", 20))
            await hold_freeze(own_redis, proxy, 2 * socket_timeout)
            thawed = time.monotonic()
            batch = await asyncio.wait_for(during, 10)
            sent |= batch
            await wait_for(lambda: sent <= delivered(partner), 30, "every event delivered",
                           lambda: missing(partner, sent))
            recovered = time.monotonic() - thawed
            await settled(direct, stream_key, partner.dest_id)
            await wait_for(lambda: ready_in_process(worker), 5, "ready again after the fault")

    report("redis frozen mid-read", all_delivered_after_thaw=recovered)
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})
    assert recovered < 30


async def test_reply_to_the_consumer_commit_lost_to_a_reset(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Scenario 7, the other half of "reset during XACK": the consumer's commit (XADD batch +
    XACK inbound) reaches Redis and runs, and the connection is reset before the reply comes
    back. The worker must recover within 10 s without a restart, and the batch must not be
    written (and so delivered) twice under different idempotency keys."""
    caplog.set_level(logging.DEBUG)
    partner = await partners("423")
    async with OnCommand(own_redis, "reset_reply") as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        config = as_config(raw_config(url, stream_key, partner))
        async with running(config) as worker:
            proxy.arm(COMMIT)
            sent = await produce(direct, stream_key, "commit", 10)
            await wait_for(lambda: proxy.resets_triggered > 0, 10, "the commit's reply reset")
            fault = time.monotonic()
            await wait_for(lambda: sent <= delivered(partner), 10, "every event delivered",
                           lambda: missing(partner, sent))
            recovered = time.monotonic() - fault
            await settled(direct, stream_key, partner.dest_id, timeout=10)
            await wait_for(lambda: ready_in_process(worker), 5, "ready again after the fault")

    report("commit reply reset", all_delivered_after_reset=recovered)
    print(f"  batches received: {len(partner.server.received)}, idempotency keys: "
          f"{[b.idempotency_key for b in partner.server.received]}")
    assert not [r for r in caplog.records if RESTARTED in r.getMessage()]
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})
    assert recovered < 10


# --------------------------------------------------------------------------- scenario 7


async def test_connection_reset_during_blocking_read_and_during_xack(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A FaultProxy between the worker and Redis resets the connection (a) while the worker
    idles in a blocking XREADGROUP, (b) on the consumer's XACK (inbound commit) and (c) on the
    publisher's XACK+XDEL (settle): each time, events produced after the fault are delivered
    within 10 s, without any supervised task being restarted."""
    caplog.set_level(logging.DEBUG)
    partner = await partners("423")
    async with FaultProxy("127.0.0.1", own_redis.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        config = as_config(raw_config(url, stream_key, partner, block_ms=1000))
        sent: Pairs = set()
        times: dict[str, float] = {}
        async with running(config) as worker:
            sent |= await produce(direct, stream_key, "warmup", 20)
            await wait_for(lambda: sent <= delivered(partner), 20, "warm-up delivered")

            async def blocked_reads() -> int:
                return sum(1 for c in await direct.client_list()
                           if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))

            async def recovered_from(case: str, fault: float, batch: Pairs) -> None:
                """Events produced after the fault delivered, and all settled, within 10 s."""
                batch = batch | await produce(direct, stream_key, f"{case}-after", 20)
                sent.update(batch)
                await wait_for(lambda: batch <= delivered(partner), 10,
                               f"delivered after {case}", lambda: missing(partner, batch))
                await settled(direct, stream_key, partner.dest_id,
                              timeout=max(0.1, fault + 10 - time.monotonic()))
                times[case] = time.monotonic() - fault

            # (a) both loops (consumer and publisher) blocked in XREADGROUP, then a reset
            await wait_for(lambda: at_least(blocked_reads(), 2), 10, "two blocked XREADGROUPs")
            accepted = proxy.accepted
            proxy.reset_all()
            await recovered_from("blocking_read_reset", time.monotonic(), set())
            assert proxy.accepted > accepted, "the worker never reconnected"

            # (b) the consumer's commit (MULTI … XACK inbound … EXEC) and (c) the publisher's
            # settle (MULTI XACK XDEL EXEC): the chunk with the pattern never reaches Redis
            for case, pattern in (("consumer_xack_reset", b"XACK"),
                                  ("publisher_settle_reset", b"XDEL")):
                triggered = proxy.resets_triggered
                proxy.reset_when(pattern)
                batch = await produce(direct, stream_key, case, 20)  # sets the fault off
                await wait_for(lambda t=triggered: proxy.resets_triggered > t, 10,
                               f"a reset on {pattern!r}")
                await recovered_from(case, time.monotonic(), batch)

            await wait_for(lambda: ready_in_process(worker), 5, "ready again after the fault")
            assert metric(worker, "iris_events_delivered_total",
                          destination=partner.dest_id) >= len(sent)

    assert not [r for r in caplog.records if RESTARTED in r.getMessage()]
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: sent})
    assert all(t < 10 for t in times.values()), times
    report("proxy resets", **times)


# --------------------------------------------------------------------------- scenario 8


async def test_trimmed_pending_entries_are_acknowledged_and_counted(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An entry that a dead consumer ("ghost") left pending and that was then trimmed away, in
    the inbound stream and in the destination's outbound stream: the worker reclaims both, gets
    them back empty, acknowledges them and counts them as trimmed; it does not crash, nothing
    stays pending, and the other events are delivered."""
    caplog.set_level(logging.DEBUG)
    partner = await partners("423")
    outbound = f"{stream_key}:out:{partner.dest_id}"
    for key in (stream_key, outbound):
        await direct.xgroup_create(key, GROUP, id="0", mkstream=True)

    # inbound: the ghost reads the entry (pending), then the producer trims it away
    ghost_in = await direct.xadd(stream_key, {"uuid": "ghost", "segment": "s1",
                                              "dpuuid": "dp-ghost"})
    await direct.xreadgroup(GROUP, "ghost", {stream_key: ">"}, count=1)
    assert await direct.xtrim(stream_key, maxlen=0, approximate=False) == 1
    # outbound: a batch entry the ghost read and that then vanished (XDEL)
    ghost_out = await direct.xadd(outbound, {"body": "{}", "events": "[]", "users": "1",
                                             "segments": "1", "created_ms": "0"})
    await direct.xreadgroup(GROUP, "ghost", {outbound: ">"}, count=1)
    assert await direct.xdel(outbound, ghost_out) == 1
    for key, entry in ((stream_key, ghost_in), (outbound, ghost_out)):
        assert (await direct.xpending(key, GROUP))["pending"] == 1, f"{entry} not pending"

    claim_idle_ms = 1500
    config = as_config(raw_config(own_redis.url, stream_key, partner, dest={"timeout": 1},
                                  claim_idle_ms=claim_idle_ms))
    others = await produce(direct, stream_key, "other", 30)
    async with running(config) as worker:
        started = time.monotonic()
        await wait_for(lambda: metric(worker, "iris_events_skipped_total", reason="trimmed") >= 2,
                       15, "both trimmed entries counted",
                       lambda: metric(worker, "iris_events_skipped_total", reason="trimmed"))
        counted = time.monotonic() - started
        await wait_for(lambda: others <= delivered(partner), 15, "other events delivered",
                       lambda: missing(partner, others))
        await settled(direct, stream_key, partner.dest_id)
        assert metric(worker, "iris_events_skipped_total", reason="trimmed") == 2
        assert await ready_in_process(worker)

    assert not [r for r in caplog.records if RESTARTED in r.getMessage()]
    for key in (stream_key, outbound):
        ghost = [c for c in await direct.xinfo_consumers(key, GROUP) if c["name"] == "ghost"]
        assert not ghost or ghost[0]["pending"] == 0
    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: others})
    assert counted < 15  # claim_idle_ms 1.5 s; a claim runs every claim_idle_ms / 2
    report("trimmed entries", counted_after_start=counted)


# --------------------------------------------------------------------------- Redis away at start


async def test_redis_unreachable_at_start(
    stream_key: str, partners: Any, tmp_path: Path,
) -> None:
    """``iris run`` started while nothing listens on its Redis port: it does not exit or spin
    (little CPU over ~3 s), /healthz is 200 and /readyz 503; once Redis starts on that port it
    becomes ready and delivers."""
    partner = await partners("423")
    with closed_port() as port:  # nothing listens there yet, and nothing else may
        server = RedisProcess(port=port)  # redis-server binds it while it is held
        try:
            data = raw_config(server.url, stream_key, partner)
            with WorkerProcess(data, tmp_path, "worker").start() as worker:
                async def alive() -> bool:
                    return (await worker.get("/healthz"))[0] == 200

                await wait_for(alive, 20, "/healthz answers", worker.log)
                assert (await worker.get("/readyz"))[0] == 503

                window = 3.0
                cpu_before, t_before = cpu_seconds(worker.pid), time.monotonic()
                while time.monotonic() - t_before < window:  # a measurement window, not a wait
                    assert worker.proc is not None and worker.proc.poll() is None, worker.log()
                    assert (await worker.get("/healthz"))[0] == 200
                    status, body = await worker.get("/readyz")
                    assert status == 503, body
                    await asyncio.sleep(0.25)
                cpu = cpu_seconds(worker.pid) - cpu_before
                elapsed = time.monotonic() - t_before
                assert cpu < 0.2 * elapsed, f"{cpu:.2f} s CPU in {elapsed:.1f} s: busy spinning?"

                server.start()
                started = time.monotonic()
                await wait_for(worker.ready, 20, "/readyz 200 once Redis is up", worker.log)
                ready_after = time.monotonic() - started
                client = aioredis.Redis.from_url(server.url, decode_responses=True)
                try:
                    sent = await produce(client, stream_key, "late", 20)
                    await wait_for(lambda: sent <= delivered(partner), 20, "delivered",
                                   lambda: missing(partner, sent) + worker.log()[-2000:])
                    await settled(client, stream_key, partner.dest_id)
                    await check_promises(client, stream_key, GROUP,
                                         {partner.dest_id: partner.server}, {partner.dest_id: sent})
                finally:
                    await client.aclose()
                assert worker.proc.poll() is None
                assert RESTARTED not in worker.log()
        finally:
            server.stop()
    assert ready_after < 20
    report("redis away at start", cpu_seconds=cpu, window=elapsed,
           ready_after_redis_start=ready_after)
