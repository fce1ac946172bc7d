"""Fault scenarios 4, 9 and 10 of issue 4, and a quiet SIGTERM: a worker SIGKILLed mid-run and
taken over by another consumer, poison entries (a corrupt outbound batch, an inbound entry that is
not UTF-8), SIGTERM while a partner call is slow, and SIGTERM with no traffic.

Real parts only: ``iris run`` child processes (or an in-process Worker where no signal is
involved), the private redis-server, real aiohttp partner and token servers. Outcomes are waited
for with deadlines; each scenario measures and bounds its time to recover.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from iris.config.model import parse_config
from iris_demo.localredis import RedisProcess
from tests.conftest import (
    Partner,
    config_data,
    destination_config,
    metric,
    running,
    wait_for,
)
from tests.faults.harness import WorkerProcess, check_promises, delivered, started, worker_config
from tests.helpers import (
    GROUP,
    Pair,
    all_delivered,
    at_least,
    equals,
    group_pending,
    outbound_pairs,
)
from tests.helpers import produce_pairs as produce

TEARDOWN_GRACE = 0.5  # s: closing sessions and the interpreter, after a drain that used it all
RACE = 0.2  # s after SIGTERM during which /readyz may not know yet (signal vs. request race)


# --------------------------------------------------------------------------- helpers


class SlowPartner:
    """A partner responder that holds every request ``delay`` s, then lets the partner handle
    (and record) it. It knows which idempotency keys are in flight at any moment. The partner
    keeps handling a request whose client has gone (aiohttp does not cancel handlers), as a real
    partner would."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.active: Counter[str] = Counter()  # idempotency key → requests being held
        self.pairs_of: dict[str, set[Pair]] = {}  # idempotency key → (uuid, segment) it carries

    @property
    def in_flight(self) -> int:
        return sum(self.active.values())

    def keys_in_flight(self) -> set[str]:
        return {key for key, n in self.active.items() if n > 0}

    async def __call__(self, request: web.Request, body: bytes) -> web.StreamResponse | None:
        key = request.headers.get("Idempotency-Key", "")
        self.pairs_of[key] = {(u["AAM_UUID"], seg["Segment_ID"])
                              for u in orjson.loads(body)["Users"] for seg in u["Segments"]}
        self.active[key] += 1
        try:
            await asyncio.sleep(self.delay)  # the partner's own latency
        finally:
            self.active[key] -= 1
        return None


def duplicates(partner: Partner) -> Counter[str]:
    """Idempotency keys the partner received more than once, with how often."""
    keys = Counter(b.idempotency_key or "" for b in partner.server.received)
    return Counter({k: n for k, n in keys.items() if n > 1})


async def pending_of(client: aioredis.Redis, key: str) -> dict[str, int]:
    """Pending entries of the group on ``key``, per consumer."""
    if not await client.exists(key):
        return {}
    info = await client.xpending(key, GROUP)
    return {c["name"]: int(c["pending"]) for c in info["consumers"]}


async def exit_code(proc: WorkerProcess, timeout: float) -> int:
    """Wait for the child without blocking the event loop (the partner lives in this loop)."""
    return await asyncio.to_thread(proc.wait, timeout)


def assert_log_clean(proc: WorkerProcess, *partners: Partner) -> None:
    """The child's log (DEBUG) holds no secret, no token and no Authorization value."""
    text = proc.log()
    secrets = [s for p in partners for s in
               ([p.client_secret] + (p.tokens.all_tokens() if p.tokens else [])) if s]
    leaked = [s[:4] + "…" for s in secrets if s in text]
    assert not leaked, f"secrets in {proc.log_path.name}: {leaked}"
    assert "Bearer " not in text and "Basic " not in text, f"credentials in {proc.log_path}"


async def unsafe_acks(client: aioredis.Redis, stream_key: str, dest: str,
                      sent: dict[str, Pair], partner: Partner) -> list[str]:
    """Inbound entries that are no longer anywhere in Redis's care (not unread, not pending
    inbound, not inside a batch still in the outbound stream) yet were neither received by the
    partner nor dead-lettered: events acknowledged without delivery."""
    groups = {g["name"]: g for g in await client.xinfo_groups(stream_key)}
    last = groups[GROUP]["last-delivered-id"]
    pending = {r["message_id"] for r in await client.xpending_range(
        stream_key, GROUP, min="-", max="+", count=100_000)}
    held: set[str] = set()
    out_key = f"{stream_key}:out:{dest}"
    if await client.exists(out_key):
        for _id, fields in await client.xrange(out_key):
            held.update(source for source, _fields in orjson.loads(fields["events"]))
    got = delivered(partner)
    dead = {f.get("dlq_source_id") for _, f in await client.xrange(f"{stream_key}:dlq")}

    def unread(entry_id: str) -> bool:
        ms, seq = (int(x) for x in entry_id.split("-"))
        lms, lseq = (int(x) for x in last.split("-"))
        return (ms, seq) > (lms, lseq)

    return [entry_id for entry_id, pair in sent.items()
            if not (unread(entry_id) or entry_id in pending or entry_id in held
                    or pair in got or entry_id in dead)]


def logged_at(proc: WorkerProcess, logger: str, message: str) -> float:
    """The time.time() of the child's first JSON log record from ``logger`` with ``message``
    (stamped ``%Y-%m-%dT%H:%M:%S.mmmZ`` in UTC)."""
    for line in proc.log().splitlines():
        record = json.loads(line)
        if record["logger"] == logger and record["message"] == message:
            stamp = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            return stamp.replace(tzinfo=UTC).timestamp()
    raise AssertionError(f"{logger}: {message!r} not in {proc.log_path}")


async def everything_settled(client: aioredis.Redis, partner: Partner, expected: set[Pair],
                             keys: list[str], worker: WorkerProcess) -> None:
    """Wait until every expected event reached the partner and nothing is pending on ``keys``
    (what ``worker`` logged explains a timeout)."""
    await wait_for(lambda: all_delivered(client, delivered(partner), expected, keys), 30,
                   "everything delivered and nothing pending",
                   lambda: f"missing {len(expected - delivered(partner))}; "
                           f"{worker.log()[-3000:]}")


async def dlq_summary(client: aioredis.Redis, stream_key: str, missing: set[Pair]) -> str:
    """What the dead-letter stream says about the events that were not delivered."""
    dead = [(f.get("uuid"), f.get("dlq_reason"), f.get("dlq_error", "")[:60])
            for _, f in await client.xrange(f"{stream_key}:dlq")]
    return f"missing {sorted(missing)}; dead letters (uuid, reason, error): {dead}"


async def blocked_readers(client: aioredis.Redis) -> int:
    """Clients of the test's redis-server blocked in XREADGROUP (only our worker reads)."""
    return sum(1 for c in await client.client_list()
               if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


# --------------------------------------------------------------------------- scenario 4


async def test_sigkill_mid_run_another_consumer_takes_over(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """Scenario 4: worker 1 is SIGKILLed while batches are in flight (the partner is slow) and
    an open batch holds inbound entries; worker 2, another consumer, reclaims both with
    XAUTOCLAIM. Everything is delivered, nothing stays pending, every duplicate came under one
    idempotency key (the batches in flight at the kill arrive twice, under their own keys), and
    the time from kill to all-delivered is bounded."""
    partner = await partners("423")
    slow = SlowPartner(0.3)
    partner.server.responder = slow
    dest = destination_config(
        partner, timeout=1.5, limits={"max_in_flight": 4},
        batch={"max_users": 10, "max_wait": 3.0},
        retry={"base_delay": 0.05, "max_delay": 0.5},
    )
    out_key = f"{stream_key}:out:423"

    def config(consumer: str) -> dict[str, Any]:
        return worker_config(redis_server.url, stream_key, [dest], consumer=consumer,
                             claim_idle_ms=2000)

    # 297 events: 29 full batches and an open one of 7, which waits for max_wait (3 s)
    before = [(f"k{i:04d}", "s1") for i in range(297)]
    after = [(f"k{i:04d}", "s1") for i in range(297, 400)]
    with WorkerProcess(config("w1"), tmp_path, "w1") as w1, \
            WorkerProcess(config("w2"), tmp_path, "w2") as w2:
        await started(w1)
        await produce(redis, stream_key, before)
        await wait_for(lambda: len(partner.server.received) >= 2 and slow.in_flight >= 1, 20,
                       "some batches delivered and some in flight", lambda: w1.log()[-3000:])
        in_flight_at_kill = slow.keys_in_flight()
        w1.proc.kill()  # type: ignore[union-attr]  # SIGKILL
        killed_at = time.monotonic()
        w1.wait(10)
        held_out = (await pending_of(redis, out_key)).get("w1", 0)
        held_in = (await pending_of(redis, stream_key)).get("w1", 0)
        assert in_flight_at_kill and held_out >= len(in_flight_at_kill), (in_flight_at_kill,
                                                                          held_out)
        assert held_in == 7, f"the open batch's 7 entries should be pending with w1: {held_in}"

        await started(w2)
        await produce(redis, stream_key, after)
        expected = set(before) | set(after)
        await everything_settled(redis, partner, expected, [stream_key, out_key], w2)
        recovered_in = time.monotonic() - killed_at
        await check_promises(redis, stream_key, GROUP, {"423": partner.server},
                             {"423": expected})
        dups = duplicates(partner)
        # the batches in flight at the kill were received from w1 (the partner finished them)
        # and again from w2, each under its one key
        assert in_flight_at_kill <= set(dups), (in_flight_at_kill, dups)
        assert partner.server.problems == []
        assert (await pending_of(redis, stream_key)).get("w1", 0) == 0
        assert_log_clean(w1, partner)
        assert_log_clean(w2, partner)
        assert await w2.metric("iris_events_dead_lettered_total", destination="423",
                               reason="max_deliveries") == 0
    print(f"\nscenario 4: kill → all delivered and settled in {recovered_in:.2f} s; in flight "
          f"at kill {len(in_flight_at_kill)}, w1 held {held_out} outbound + {held_in} inbound; "
          f"duplicate keys {dict(dups)}")
    assert recovered_in < 20, f"kill → all delivered took {recovered_in:.1f} s"


# --------------------------------------------------------------------------- scenario 9


async def test_poison_batch_is_dead_lettered_after_max_deliveries(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Scenario 9: a corrupt batch entry in a destination's outbound stream crashes its delivery
    every time. It is reclaimed and re-tried until its delivery count passes ``max_deliveries``
    (3), then lands in the dead-letter stream with reason ``max_deliveries`` and its destination;
    the inbound events written before, beside and after it are delivered meanwhile."""
    partner = await partners("423")
    dest = destination_config(partner, timeout=0.9, batch={"max_users": 5, "max_wait": 0.2},
                              retry={"base_delay": 0.05, "max_delay": 0.5})
    data = config_data(redis_server.url, stream_key, [dest], claim_idle_ms=1000,
                       max_deliveries=3)
    config = parse_config(data, env={})
    out_key = f"{stream_key}:out:423"
    first = [(f"p{i:03d}", "s1") for i in range(20)]
    second = [(f"p{i:03d}", "s1") for i in range(20, 40)]
    async with running(config) as worker:
        await produce(redis, stream_key, first[:10])
        poison_id = await redis.xadd(out_key, {"body": "{not json", "events": "garbage",
                                               "users": "1", "segments": "1"})
        started_at = time.monotonic()
        await produce(redis, stream_key, first[10:])
        await wait_for(lambda: delivered(partner) >= set(first), 10, "neighbours delivered",
                       lambda: f"missing {set(first) - delivered(partner)}")
        neighbours_in = time.monotonic() - started_at
        # the poison is still being retried (pending) while new events flow past it
        assert await redis.xpending_range(out_key, GROUP, min=poison_id, max=poison_id, count=1)
        await produce(redis, stream_key, second)
        await wait_for(lambda: delivered(partner) >= set(first + second), 10,
                       "events after the poison delivered")

        async def dead_lettered() -> list[dict[str, str]]:
            return [f for _, f in await redis.xrange(f"{stream_key}:dlq")
                    if f.get("dlq_source_id") == poison_id]

        await wait_for(dead_lettered, 20, "poison dead-lettered",
                       lambda: redis.xpending_range(out_key, GROUP, min="-", max="+", count=5))
        dead_in = time.monotonic() - started_at
        [dead] = await dead_lettered()
        assert dead["dlq_reason"] == "max_deliveries" and dead["dlq_destination"] == "423", dead
        assert dead["events"] == "garbage" and dead["body"] == "{not json"  # kept as it was
        assert metric(worker, "iris_events_dead_lettered_total", destination="423",
                      reason="max_deliveries") == 1
        await wait_for(lambda: equals(group_pending(redis, [stream_key, out_key]), 0), 10,
                       "nothing pending")
        await check_promises(redis, stream_key, GROUP, {"423": partner.server},
                             {"423": set(first + second)})
        assert not await redis.xrange(out_key)  # settled: acknowledged and deleted
        assert partner.server.problems == []
    print(f"\nscenario 9 (poison batch): neighbours delivered in {neighbours_in:.2f} s, "
          f"poison dead-lettered in {dead_in:.2f} s")
    assert neighbours_in < 10 and dead_in < 20


@pytest.mark.parametrize("fields", [
    pytest.param({b"uuid": b"bad-\xff\xfe", b"segment": b"s1", b"dpuuid": b"dp-bad"},
                 id="value"),
    pytest.param({b"uuid": b"bad-r", b"segment": b"s1", b"dpuuid": b"dp-bad",
                  b"regions": b"7,\xc3\x28"}, id="optional-value"),
    pytest.param({b"uuid": b"bad-n", b"segment": b"s1", b"dpuuid": b"dp-bad",
                  b"note\xff": b"x"}, id="field-name"),
])
async def test_inbound_entry_not_utf8_is_dead_lettered_as_invalid(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    fields: dict[bytes, bytes],
) -> None:
    """Scenario 9, second kind: an inbound entry whose bytes are not valid UTF-8 (in a value, an
    optional value, or a field name) is dead-lettered as ``invalid_event`` with its original
    bytes, without crashing anything; the entries around it are delivered."""
    partner = await partners("423")
    dest = destination_config(partner, timeout=0.9, batch={"max_users": 5, "max_wait": 0.2})
    data = config_data(redis_server.url, stream_key, [dest], claim_idle_ms=1000,
                       max_deliveries=3)
    config = parse_config(data, env={})
    raw = aioredis.Redis.from_url(redis_server.url)  # bytes in, bytes out
    lenient = aioredis.Redis.from_url(redis_server.url, decode_responses=True,
                                      encoding_errors="replace")
    pairs = [(f"n{i:03d}", "s1") for i in range(12)]
    try:
        async with running(config) as worker:
            started_at = time.monotonic()
            await produce(redis, stream_key, pairs[:6])
            bad_id = (await raw.xadd(stream_key, fields)).decode()  # type: ignore[arg-type]
            await produce(redis, stream_key, pairs[6:])
            await wait_for(
                lambda: delivered(partner) >= set(pairs), 10, "neighbours delivered",
                lambda: dlq_summary(lenient, stream_key, set(pairs) - delivered(partner)))

            async def dead_lettered() -> list[dict[bytes, bytes]]:
                return [f for _, f in await raw.xrange(f"{stream_key}:dlq")
                        if f.get(b"dlq_source_id") == bad_id.encode()]

            await wait_for(dead_lettered, 10, "bad entry dead-lettered")
            recovered_in = time.monotonic() - started_at
            [dead] = await dead_lettered()
            assert dead[b"dlq_reason"] == b"invalid_event", dead
            assert b"UTF-8" in dead[b"dlq_error"], dead
            assert all(dead.get(k) == v for k, v in fields.items()), dead  # original bytes
            assert metric(worker, "iris_events_dead_lettered_total", destination="",
                          reason="invalid_event") == 1
            keys = [stream_key, f"{stream_key}:out:423"]
            await wait_for(lambda: equals(group_pending(redis, keys), 0), 10, "nothing pending")
            await check_promises(lenient, stream_key, GROUP, {"423": partner.server},
                                 {"423": set(pairs)})
            assert partner.server.problems == []
            assert worker.health.readiness()[0], worker.health.readiness()
    finally:
        await raw.aclose()
        await lenient.aclose()
    print(f"\nscenario 9 (not UTF-8, {fields!r}): handled in {recovered_in:.2f} s")
    assert recovered_in < 10


# --------------------------------------------------------------------------- scenario 10


@pytest.mark.parametrize("shutdown_timeout", [
    pytest.param(5.0, id="finishes-in-time"),
    pytest.param(1.0, id="hands-back"),
])
async def test_sigterm_during_slow_partner_call(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path, shutdown_timeout: float,
) -> None:
    """Scenario 10: SIGTERM while every batch sits in a 2 s partner call. The process exits 0
    within ``shutdown_timeout``. With 5 s the calls finish and their batches are acknowledged
    after the 2xx; with 1 s they are handed back (left pending). Either way nothing is
    acknowledged without delivery: every inbound event that is no longer unread, pending inbound
    or inside an outbound batch was received by the partner. A second worker (another consumer)
    then delivers everything."""
    partner = await partners("423")
    slow = SlowPartner(2.0)
    partner.server.responder = slow
    dest = destination_config(
        partner, timeout=3, limits={"max_in_flight": 8}, batch={"max_users": 10, "max_wait": 0.2},
        retry={"base_delay": 0.05, "max_delay": 0.5},
    )
    out_key = f"{stream_key}:out:423"

    def config(consumer: str) -> dict[str, Any]:
        return worker_config(redis_server.url, stream_key, [dest], consumer=consumer,
                             claim_idle_ms=3500, shutdown_timeout=shutdown_timeout)

    first = [(f"t{i:03d}", "s1") for i in range(25)]  # three batches: 10, 10, 5
    late = [(f"t{i:03d}", "s1") for i in range(25, 35)]
    with WorkerProcess(config("t1"), tmp_path, "t1") as t1, \
            WorkerProcess(config("t2"), tmp_path, "t2") as t2:
        await started(t1)
        sent = await produce(redis, stream_key, first)
        await wait_for(lambda: slow.in_flight >= 3, 10, "three batches in the partner's hands",
                       lambda: t1.log()[-3000:])
        keys_at_term = slow.keys_in_flight()
        t1.signal(signal.SIGTERM)
        termed_at, termed_wall = time.monotonic(), time.time()
        sent |= await produce(redis, stream_key, late)  # while it drains: must not be lost
        code = await exit_code(t1, shutdown_timeout + 10)
        exited_in = time.monotonic() - termed_at
        assert code == 0, t1.log()[-3000:]
        assert "Traceback" not in t1.log(), t1.log()[-3000:]
        drained_in = logged_at(t1, "iris.runtime.worker", "stopped") - termed_wall

        # nothing acknowledged without delivery, per event ...
        assert await unsafe_acks(redis, stream_key, "423", sent, partner) == []
        # ... and per batch: a batch in flight at the signal is either still in the outbound
        # stream (handed back) or was received (acknowledged after its 2xx)
        waiting = await outbound_pairs(redis, out_key)
        received_keys = {b.idempotency_key for b in partner.server.received}
        left = {key for key in keys_at_term if slow.pairs_of[key] <= waiting}
        assert all(key in left or key in received_keys for key in keys_at_term)
        out_pending = (await pending_of(redis, out_key)).get("t1", 0)
        if shutdown_timeout > 2.5:  # time enough: the calls finished and were acknowledged
            assert not left, f"in-flight batches not acked: {left}"
        else:  # no time: handed back, pending for the next consumer
            assert left == keys_at_term, f"batches acked before their 2xx: {keys_at_term - left}"
            assert out_pending >= len(keys_at_term)  # (plus any batch read while draining)

        await started(t2)
        expected = set(first) | set(late)
        await everything_settled(redis, partner, expected, [stream_key, out_key], t2)
        recovered_in = time.monotonic() - termed_at
        if left:  # handed back: redelivered by t2 under the same keys
            assert keys_at_term <= set(duplicates(partner)), duplicates(partner)
        await check_promises(redis, stream_key, GROUP, {"423": partner.server},
                             {"423": expected})
        assert partner.server.problems == []
        assert_log_clean(t1, partner)
        assert_log_clean(t2, partner)
    print(f"\nscenario 10 (shutdown_timeout {shutdown_timeout:g}): drained in {drained_in:.2f} s, "
          f"exit 0 in {exited_in:.2f} s; {len(keys_at_term)} batches in flight, "
          f"{len(left)} handed back; SIGTERM → all delivered and settled by the "
          f"next worker in {recovered_in:.2f} s")
    assert drained_in <= shutdown_timeout + 0.05, f"drain took {drained_in:.2f} s"
    if shutdown_timeout > 2.5:
        assert exited_in < shutdown_timeout, f"exit took {exited_in:.2f} s > {shutdown_timeout} s"
    else:  # the whole budget went to the drain; interpreter teardown comes on top
        assert exited_in < shutdown_timeout + TEARDOWN_GRACE, f"exit took {exited_in:.2f} s"
    assert recovered_in < 30


async def test_batches_handed_back_at_a_stop_go_before_the_backlog(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """Two workers share a backlog of 120 one-user batches for a slow partner (0.1 s a
    request, 2 in flight each). The first is stopped (SIGTERM, 0.3 s to drain): what it held
    and had not delivered (read ahead, or in flight past the drain) is handed back, pending
    under its name. The second takes those over at its next claim, before the rest of the
    backlog: all are settled while most of the backlog still waits. (A worker with a backlog
    took them over only once its own reads ran dry: minutes, in an operator's trial.)"""
    partner = await partners("423")
    partner.server.responder = SlowPartner(0.1)
    dest = destination_config(partner, timeout=0.9, limits={"max_in_flight": 2},
                              batch={"max_users": 1, "max_wait": 0.05},
                              retry={"base_delay": 0.05, "max_delay": 0.5})
    out_key = f"{stream_key}:out:423"

    def config(consumer: str) -> dict[str, Any]:
        return worker_config(redis_server.url, stream_key, [dest], consumer=consumer,
                             claim_idle_ms=1000, shutdown_timeout=0.3)

    backlog = [(f"h{i:03d}", "s1") for i in range(120)]
    with WorkerProcess(config("h1"), tmp_path, "h1") as h1, \
            WorkerProcess(config("h2"), tmp_path, "h2") as h2:
        await started(h1)
        await started(h2)
        await produce(redis, stream_key, backlog)
        await wait_for(lambda: len(delivered(partner)) >= 10, 20, "deliveries under way")
        h1.signal(signal.SIGTERM)
        assert await exit_code(h1, 10) == 0, h1.log()[-3000:]
        rows = await redis.xpending_range(out_key, GROUP, min="-", max="+", count=1000,
                                          consumername="h1")
        handed = [row["message_id"] for row in rows]
        assert handed, "the stopped worker handed nothing back: nothing to take over"

        async def taken_over() -> bool:
            left = [i for i in handed if await redis.xrange(out_key, i, i)]
            return not left  # each one delivered and settled (deleted)

        await wait_for(taken_over, 30, "the handed-back batches settled",
                       lambda: h2.log()[-2000:])
        waiting = await redis.xlen(out_key)
        assert waiting >= 20, (f"{len(handed)} handed-back batches taken over only with "
                               f"{waiting} of the backlog left")
        await everything_settled(redis, partner, set(backlog), [stream_key, out_key], h2)
        await check_promises(redis, stream_key, GROUP, {"423": partner.server},
                             {"423": set(backlog)})
        assert_log_clean(h2, partner)
    print(f"\nhand-back: {len(handed)} batches handed back, taken over with {waiting} of the "
          f"backlog still waiting")


async def test_each_stop_signal_says_what_happens_now(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """The first SIGTERM logs that deliveries in flight get up to ``shutdown_timeout``; a
    second one, while a 2 s partner call is under way, logs that the worker stops at once and
    what becomes of the batch in flight (pending, delivered again under its key), and the
    process ends before the call would have. (An operator's trial saw nothing until "stopped",
    and nothing at all after a second signal.)"""
    partner = await partners("423")
    slow = SlowPartner(2.0)
    partner.server.responder = slow
    dest = destination_config(partner, timeout=3, batch={"max_users": 10, "max_wait": 0.1})
    data = worker_config(redis_server.url, stream_key, [dest], consumer="signals",
                         claim_idle_ms=3500, shutdown_timeout=10)
    with WorkerProcess(data, tmp_path, "signals") as proc:
        await started(proc)
        await produce(redis, stream_key, [("sig-1", "s1")])
        await wait_for(lambda: slow.in_flight >= 1, 10, "a batch in the partner's hands")
        proc.signal(signal.SIGTERM)
        await wait_for(lambda: "stopping: deliveries in flight get up to 10 s" in proc.log(), 5,
                       "the first signal's line", proc.log)
        proc.signal(signal.SIGTERM)
        assert await exit_code(proc, 5) is not None
        records = [json.loads(line) for line in proc.log().splitlines()]
    said = [(r["level"], r["message"]) for r in records if r["message"].startswith("stopping")]
    assert said == [
        ("info", "stopping: deliveries in flight get up to 10 s (shutdown_timeout); a second "
                 "signal stops at once"),
        ("warning", "stopping at once (second signal): batches in flight stay pending, to be "
                    "delivered again with the same idempotency keys")], said
    assert await pending_of(redis, f"{stream_key}:out:423") == {"signals": 1}


# --------------------------------------------------------------------------- quiet SIGTERM


async def test_sigterm_with_no_traffic_exits_promptly(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """SIGTERM to an idle worker (blocked in XREADGROUP with block_ms 1000): it exits 0 promptly
    (within two block_ms and a second), and once /readyz has answered 503 "draining" it never
    answers 200 again: "draining" until the process is gone, then nothing."""
    partner = await partners("423")
    data = worker_config(redis_server.url, stream_key, [destination_config(partner)],
                         block_ms=1000)
    with WorkerProcess(data, tmp_path, "idle") as proc:
        await started(proc)
        await wait_for(lambda: at_least(blocked_readers(redis), 2), 10,
                       "the consumer and the publisher blocked in XREADGROUP")
        proc.signal(signal.SIGTERM)
        termed_at = time.monotonic()
        seen: list[tuple[float, int, str]] = []  # (sent after the signal, status, body)
        while proc.proc is not None and proc.proc.poll() is None:
            assert time.monotonic() - termed_at < 10, f"still running: {seen[-3:]}"
            sent_at = time.monotonic() - termed_at
            seen.append((sent_at, *await proc.get("/readyz")))
            await asyncio.sleep(0.01)  # poll interval
        exited_in = time.monotonic() - termed_at
        assert proc.wait(1) == 0, proc.log()[-3000:]
        after = await proc.get("/readyz")
        log = proc.log()
    statuses = [status for _, status, _ in seen]
    first_503 = statuses.index(503) if 503 in statuses else len(statuses)
    # a request that races the signal into the same loop iteration may still see 200; after
    # that, only "draining" until the listener closes, then no answer at all
    assert all(status == 200 and at < RACE for at, status, _ in seen[:first_503]), seen[:5]
    assert all(status == 0 or (status == 503 and "draining" in text)
               for _, status, text in seen[first_503:]), seen
    assert 0 not in statuses or 503 not in statuses[statuses.index(0):], seen
    assert statuses.count(503) >= 1, f"never saw 503 draining: {seen}"
    assert after[0] == 0, after
    assert "stopped" in log and "Traceback" not in log, log[-3000:]
    print(f"\nquiet SIGTERM: exit 0 in {exited_in:.2f} s; /readyz after the signal: "
          f"{statuses.count(200)} × 200 (raced the signal), {statuses.count(503)} × 503 "
          f"draining, {statuses.count(0)} × no answer")
    # The consumer's blocked read must return (≤ block_ms) before it writes its open batches;
    # the publishers' reads are cancelled (again, until they really end: Python 3.11's wait_for
    # can swallow a cancel) rather than waited for.
    assert exited_in < 1.0 + 1.0
