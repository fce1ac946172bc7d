"""Fault scenarios on the partner side (issue 4, acceptance 1, 2, 3 and 11).

Real parts only: the private redis-server, real aiohttp partners whose ``responder`` hook injects
the faults, the fault proxy for a partner that is down, ``iris run`` and ``iris dlq replay`` as
child processes where a process boundary matters. Outcomes are waited for with deadlines; the
only timed waits are the producer's pacing and the outage itself (the scenario says "down for
20 s").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import socket
import struct
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from iris.config.model import parse_config
from iris_demo.localredis import RedisProcess
from iris_demo.partner import ReceivedBatch
from iris_demo.payload import validate_payload
from tests.conftest import (
    Partner,
    config_data,
    destination_config,
    make_config,
    metric,
    pending_total,
    running,
    wait_for,
)
from tests.faults.harness import WorkerProcess, check_promises
from tests.faults.proxy import FaultProxy
from tests.helpers import GROUP, equals, run_cli, xadd_all
from tests.test_prometheus import ALERTS, tool

Responder = Callable[[web.Request, bytes], Awaitable[web.StreamResponse | None]]
Pairs = set[tuple[str, str]]


# --------------------------------------------------------------------------- partner-side faults

def reset(request: web.Request) -> web.Response:
    """Abort the connection with a TCP RST (SO_LINGER 0): the client sees ECONNRESET. The
    response returned afterwards is never written."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return web.Response(status=500)


def accept(partner: Partner, request: web.Request, body: bytes, status: int = 200) -> web.Response:
    """Validate and record the batch as the partner would, but answer ``status``."""
    payload = json.loads(body)
    validate_payload(payload, destination_id=partner.server.destination_id,
                     user_dpid=partner.server.user_dpid, client_id=partner.server.client_id)
    partner.server.received.append(ReceivedBatch(
        time=time.monotonic(), payload=payload, body=body,
        idempotency_key=request.headers.get("Idempotency-Key"), token=None,
    ))
    if status == 204:
        return web.Response(status=204)
    return web.json_response({"status": "ok"}, status=status)


MESSAGES = {
    400: "Segment_ID 42 is not mapped for this client",
    401: "the access token was not accepted",
    403: "User not authorized",
    404: "no such destination endpoint",
    408: "request took too long",
    409: "a conflicting update is in progress",
    413: "payload too large",
    422: "DataPartner_UUID has an unknown format",
    425: "too early, replay later",
    429: "rate limit exceeded",
    500: "internal error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


def error(status: int, retry_after: str | None = None) -> web.Response:
    """A JSON error body as partners send them (seed 004: status, message, details)."""
    headers = {"Retry-After": retry_after} if retry_after else None
    doc = {"status": str(status), "message": MESSAGES[status], "details": f"case-{status}"}
    return web.json_response(doc, status=status, headers=headers)


def users_of(body: bytes) -> list[str]:
    return [u["AAM_UUID"] for u in json.loads(body)["Users"]]


def pairs_received(partner: Partner) -> Counter[tuple[str, str]]:
    return Counter((u, s) for u, _dp, s, _st in partner.server.segment_changes())


def fast_retry(**overrides: Any) -> dict[str, Any]:
    return {"max_attempts": 10, "base_delay": 0.05, "max_delay": 1.0, **overrides}


# --------------------------------------------------------------------------- scenario 1

async def test_random_partner_faults_everything_arrives(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]],
) -> None:
    """20% of requests (seeded) fail with 500, 503, 429 + Retry-After: 1, a reset before the
    partner processed the batch, or a reset after it did (the answer is lost): every event
    arrives, nothing stays pending, duplicates only under the same Idempotency-Key, and every
    fault is counted exactly once as a request code and a retry."""
    a = await partners("423")
    rng = random.Random(4242)
    faults: Counter[str] = Counter()

    async def responder(request: web.Request, body: bytes) -> web.StreamResponse | None:
        if rng.random() >= 0.2:
            return None
        kind = rng.choice(["500", "503", "429", "reset", "reset_after"])
        faults[kind] += 1
        if kind == "reset":
            return reset(request)
        if kind == "reset_after":  # processed, then the connection dies: the answer is lost
            accept(a, request, body)
            return reset(request)
        return error(int(kind), retry_after="1" if kind == "429" else None)

    a.server.responder = responder
    config = make_config(redis_server.url, stream_key, [destination_config(
        a, batch={"max_users": 10, "max_wait": 0.2}, retry=fast_retry(),
        circuit={"failure_threshold": 5, "cooldown": 0.5}, timeout=5,
    )], claim_idle_ms=10000)
    events = [{"uuid": f"u{i}", "segment": f"s{j}", "dpuuid": f"d{i}"}
              for i in range(1500) for j in (1, 2)]
    expected = {(e["uuid"], e["segment"]) for e in events}

    async with running(config) as worker:
        started = time.monotonic()
        await xadd_all(redis, stream_key, events, chunk=100)
        await wait_for(lambda: expected <= set(pairs_received(a)), 60, "every event delivered",
                       lambda: f"{len(set(pairs_received(a)))}/{len(expected)} faults={faults}")
        await wait_for(lambda: equals(pending_total(redis, config), 0), 15, "nothing pending")
        elapsed = time.monotonic() - started
        print(f"\n[random faults] {dict(faults)}; all delivered in {elapsed:.1f} s")
        assert elapsed < 30, f"recovery took {elapsed:.1f} s"
        assert a.server.problems == []

        def requests(code: str) -> float:
            return metric(worker, "iris_requests_total", destination="423", code=code)

        assert set(faults) == {"500", "503", "429", "reset", "reset_after"}, faults
        assert requests("500") == faults["500"]
        assert requests("503") == faults["503"]
        assert requests("429") == faults["429"]
        assert requests("connection_error") == faults["reset"] + faults["reset_after"]
        assert metric(worker, "iris_retries_total", destination="423") == sum(faults.values())
    counts = await check_promises(redis, stream_key, GROUP, {"423": a.server}, {"423": expected})
    assert await redis.xlen(f"{stream_key}:dlq") == 0
    # a batch whose answer was lost came again, under the same key (checked by check_promises)
    assert sum(1 for n in counts["423"].values() if n > 1) >= faults["reset_after"]


async def test_retry_after_is_honoured(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]],
) -> None:
    """A 429 with ``Retry-After: 2``: the retry of that batch (same Idempotency-Key) reaches the
    partner no sooner than 2 s after the first attempt did (partner-side arrival times)."""
    a = await partners("423")
    arrivals: dict[str, list[float]] = defaultdict(list)

    async def responder(request: web.Request, body: bytes) -> web.StreamResponse | None:
        key = request.headers.get("Idempotency-Key", "")
        arrivals[key].append(time.monotonic())
        return error(429, retry_after="2") if len(arrivals[key]) == 1 else None

    a.server.responder = responder
    config = make_config(redis_server.url, stream_key, [destination_config(
        a, batch={"max_users": 10, "max_wait": 0.2}, retry=fast_retry(max_delay=5.0), timeout=2,
    )], claim_idle_ms=10000)
    events = [{"uuid": f"u{i}", "segment": "s1", "dpuuid": f"d{i}"} for i in range(5)]
    await xadd_all(redis, stream_key, events)
    async with running(config) as worker:
        await wait_for(lambda: len(a.server.received) == 1, 15, "the batch delivered")
        await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "nothing pending")
        assert len(arrivals) == 1, "one batch, one key"
        (key, times), = arrivals.items()
        assert len(times) == 2
        gap = times[1] - times[0]
        print(f"\n[Retry-After: 2] retry came {gap:.3f} s after the 429")
        assert gap >= 2.0, f"retry after {gap:.3f} s, before Retry-After: 2"
        assert gap < 4.0, f"retry after {gap:.3f} s: Retry-After should set the delay"
        assert a.server.received[0].idempotency_key == key
        assert metric(worker, "iris_requests_total", destination="423", code="429") == 1
        assert metric(worker, "iris_retries_total", destination="423") == 1
    await check_promises(redis, stream_key, GROUP, {"423": a.server},
                         {"423": {(e["uuid"], e["segment"]) for e in events}})


# --------------------------------------------------------------------------- scenario 2

@dataclass(frozen=True)
class Case:
    fault: str
    status: int | None  # what the partner answers; None: no HTTP answer (timeout, reset)
    action: str  # delivered | refreshed | retried | split | rejected
    code: str  # the iris_requests_total code label of the faulty answer

    def __str__(self) -> str:
        return self.fault


CASES = [
    Case("200", 200, "delivered", "200"),
    Case("201", 201, "delivered", "201"),
    Case("204", 204, "delivered", "204"),
    Case("400", 400, "rejected", "400"),
    Case("401", 401, "refreshed", "401"),
    Case("401-twice", 401, "paused", "401"),  # issue 13: a fresh token refused too
    Case("403", 403, "rejected", "403"),
    Case("404", 404, "rejected", "404"),
    Case("408", 408, "retried", "408"),
    Case("409", 409, "rejected", "409"),
    Case("413", 413, "split", "413"),
    Case("422", 422, "rejected", "422"),
    Case("425", 425, "retried", "425"),
    Case("429", 429, "retried", "429"),
    Case("500", 500, "retried", "500"),
    Case("502", 502, "retried", "502"),
    Case("503", 503, "retried", "503"),
    Case("504", 504, "retried", "504"),
    Case("timeout", None, "retried", "timeout"),
    Case("reset", None, "retried", "connection_error"),
]
TIMEOUT = 1.0  # the destination's request timeout in the table


@dataclass
class Attempt:
    key: str
    users: list[str]


@dataclass
class TablePartner:
    """The fault of one table row, applied by the partner's responder."""

    case: Case
    partner: Partner
    attempts: list[Attempt] = field(default_factory=list)
    late_done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: web.Request, body: bytes) -> web.StreamResponse | None:
        case = self.case
        key = request.headers.get("Idempotency-Key", "")
        users = users_of(body)
        first = all(a.key != key for a in self.attempts)
        self.attempts.append(Attempt(key, users))
        if case.action == "delivered":
            return accept(self.partner, request, body, case.status or 200)
        if case.action in ("rejected", "paused"):
            assert case.status is not None
            return error(case.status)  # every time, after a fresh token too (401 twice)
        if case.action == "split":
            if len(users) > 1:
                return error(413)
            if users == ["u0"] and first:  # a half is retried under its own stable key
                return error(503)
            return None
        if not first:  # refreshed / retried: the partner has recovered
            return None
        if case.fault == "timeout":
            await asyncio.sleep(TIMEOUT + 0.5)  # then processes it: a late duplicate, same key
            self.late_done.set()
            return None
        if case.fault == "reset":
            return reset(request)
        assert case.status is not None
        return error(case.status, retry_after="1" if case.status == 429 else None)


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_partner_answer_table(
    case: Case, redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]],
) -> None:
    """One batch of 4 users (2 segments each) meets one partner answer; the action iris takes
    is asserted: delivered, token refreshed then delivered, retried under the same key then
    delivered, split in halves with their own stable keys, or dead-lettered as ``rejected`` with
    the status and an excerpt of the partner's JSON error body."""
    dest = "423"
    a = await partners(dest)
    table = TablePartner(case, a)
    a.server.responder = table
    config = make_config(redis_server.url, stream_key, [destination_config(
        a, batch={"max_users": 10, "max_wait": 0.3}, retry=fast_retry(max_attempts=5),
        timeout=TIMEOUT,
    )], claim_idle_ms=5000)
    events = [{"uuid": f"u{i}", "segment": f"s{j}", "dpuuid": f"d{i}"}
              for i in range(4) for j in (1, 2)]
    pairs = {(e["uuid"], e["segment"]) for e in events}
    await xadd_all(redis, stream_key, events)  # before the worker starts: one batch
    dlq = f"{stream_key}:dlq"

    async def settled() -> bool:
        done = (metric(worker, "iris_events_delivered_total", destination=dest)
                + await redis.xlen(dlq))
        return done >= len(events) and await pending_total(redis, config) == 0

    def paused() -> bool:
        return metric(worker, "iris_auth_paused", destination=dest) == 1

    async with running(config) as worker:
        started = time.monotonic()
        await wait_for(paused if case.action == "paused" else settled, 20,
                       f"an outcome for {case}", lambda: f"attempts={table.attempts}")
        if case.action == "paused":  # the partner refuses iris's tokens: wait, spend nothing
            assert worker.health.readiness()[0]  # the pod itself can work
            assert any(f"destination {dest} paused" in r
                       for r in worker.health.paused_destinations())
            assert await pending_total(redis, config) == 1  # the batch waits in Redis
        elapsed = time.monotonic() - started
        if case.fault == "timeout":
            await wait_for(table.late_done.is_set, 5, "the slow first attempt to finish")

        def requests(code: str) -> float:
            return metric(worker, "iris_requests_total", destination=dest, code=code)

        retries = metric(worker, "iris_retries_total", destination=dest)
        token_requests = a.tokens.ok_requests if a.tokens else 0
    assert elapsed < 15, f"{case}: outcome after {elapsed:.1f} s"
    assert a.server.problems == []
    keys = [t.key for t in table.attempts]
    dead = [f for _, f in await redis.xrange(dlq)]

    if case.action == "paused":
        assert dead == [] and a.server.received == []
        assert token_requests == 2 and requests("401") == 2 and len(set(keys)) == 1
        assert retries == 0
        return

    if case.action == "rejected":
        assert a.server.received == []
        assert len(dead) == len(events)
        assert {(f["uuid"], f["segment"]) for f in dead} == pairs
        for f in dead:
            assert f["dlq_reason"] == "rejected"
            assert f["dlq_destination"] == dest
            assert f["dlq_status"] == str(case.status)
            assert MESSAGES[case.status or 0] in f["dlq_error"], f["dlq_error"]
        assert retries == 0
        assert requests(case.code) == 1 and len(keys) == 1
        await check_promises(redis, stream_key, GROUP, {dest: a.server}, {dest: pairs},
                             {u: "rejected" for u, _ in pairs})
        return

    assert dead == []
    counts = await check_promises(redis, stream_key, GROUP, {dest: a.server}, {dest: pairs})
    if case.action == "delivered":
        assert requests(case.code) == 1 and retries == 0
        assert len(a.server.received) == 1 and counts[dest] == Counter(pairs)
    elif case.action == "refreshed":  # 401 once: new token, same batch, same key
        assert token_requests == 2
        assert requests("401") == 1 and requests("200") == 1
        assert len(keys) == 2 and len(set(keys)) == 1
    elif case.action == "retried":
        assert requests(case.code) == 1 and requests("200") == 1
        assert retries == 1
        assert len(set(keys)) == 1, f"the retry changed the Idempotency-Key: {keys}"
        assert {b.idempotency_key for b in a.server.received} == set(keys)
    else:  # split: 4 users → 2 + 2 → 1 + 1 + 1 + 1, each with its own stable key
        assert requests("413") == 3 and requests("200") == 4
        assert retries == 1 and requests("503") == 1
        received = a.server.received
        assert sorted(len(b.payload["Users"]) for b in received) == [1, 1, 1, 1]
        assert all(len(b.payload["Users"][0]["Segments"]) == 2 for b in received)
        halves = [b.idempotency_key or "" for b in received]
        assert len(set(halves)) == 4
        assert all(k.startswith(keys[0] + ".") for k in halves), (keys[0], halves)
        u0_keys = {t.key for t in table.attempts if t.users == ["u0"]}
        assert len(u0_keys) == 1, f"the retried half changed its key: {u0_keys}"
        assert counts[dest] == Counter(pairs)


# --------------------------------------------------------------------------- scenario 3

@dataclass
class Producer:
    """Adds events at a steady rate (catching up if the loop was busy) until stopped."""

    client: aioredis.Redis
    key: str
    rates: dict[str, float]  # segment → events per second
    sent: dict[str, Pairs] = field(default_factory=lambda: defaultdict(set))
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        started = time.monotonic()
        counts = dict.fromkeys(self.rates, 0)
        while not self.stop.is_set():
            elapsed = time.monotonic() - started
            events = []
            for segment, rate in self.rates.items():
                due = int(elapsed * rate)
                for i in range(counts[segment], due):
                    uuid = f"{segment}-live{i}"
                    events.append({"uuid": uuid, "segment": segment, "dpuuid": f"d{i}"})
                    self.sent[segment].add((uuid, segment))
                counts[segment] = max(counts[segment], due)
            if events:
                await xadd_all(self.client, self.key, events)
            await asyncio.sleep(0.05)  # pacing, not waiting for an outcome


def rate_in(partner: Partner, start: float, end: float) -> float:
    """Segment changes per second that reached ``partner`` in [start, end) (its own clock)."""
    n = sum(sum(len(u["Segments"]) for u in b.payload["Users"])
            for b in partner.server.received if start <= b.time < end)
    return n / (end - start)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def test_one_destination_down_does_not_slow_the_other(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]], tmp_path: Path,
) -> None:
    """A's partner refuses connections for 20 s while B's keeps answering: B's events/s during
    the outage stay ≥ 80% of B's rate before it (same producer rate, same test); 200,000
    events for A wait in Redis while the worker's RSS stays within 50 MB of its start; A's
    circuit opens (and closes after), no retries run out, and all of A's events arrive after
    A recovers."""
    outage_s, bulk, b_rate, a_rate = 20.0, 200_000, 200.0, 20.0
    a = await partners("A")
    b = await partners("B")
    seen_a: Pairs = set()
    a.server.on_batch = lambda batch: seen_a.update(
        (u["AAM_UUID"], s["Segment_ID"]) for u in batch.payload["Users"] for s in u["Segments"])
    proxy = FaultProxy("127.0.0.1", int(a.base_url.rsplit(":", 1)[1]))
    await proxy.start()
    via_proxy = f"http://127.0.0.1:{proxy.port}"
    data = config_data(redis_server.url, stream_key, [
        destination_config(
            a, url=via_proxy + a.server.path, segments=["sa"],
            auth={"token_url": via_proxy + a.tokens.path} if a.tokens else {},
            batch={"max_users": 1000, "max_wait": 0.5},
            retry={"max_attempts": 100, "base_delay": 0.1, "max_delay": 2.0},
            circuit={"failure_threshold": 5, "cooldown": 2.0},
            limits={"max_in_flight": 4}, timeout=5,
        ),
        destination_config(b, segments=["sb"], batch={"max_users": 10, "max_wait": 0.2},
                           timeout=5),
    ], claim_idle_ms=10000)
    worker = WorkerProcess(data, tmp_path, "isolation")
    producer = Producer(redis, stream_key, {"sa": a_rate, "sb": b_rate})
    produce = asyncio.create_task(producer.run(), name="producer")
    try:
        worker.start()
        await wait_for(worker.ready, 20, "worker ready", worker.log)
        await wait_for(lambda: len(seen_a) > 0 and len(b.server.received) > 20, 20,
                       "both destinations receiving", worker.log)
        base_start = time.monotonic()
        await asyncio.sleep(5.0)  # the baseline window: B's rate without the outage
        base_end = time.monotonic()
        rss_start = worker.rss_mb()

        # ---- A goes down: new connects refused, live ones reset
        out_start = time.monotonic()
        await proxy.close_listener()
        proxy.reset_all()
        rss: list[float] = [rss_start]
        sampling = asyncio.Event()

        async def sample() -> None:
            while not sampling.is_set():
                rss.append(worker.rss_mb())
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample(), name="rss-sampler")
        bulk_events = [{"uuid": f"a{i}", "segment": "sa", "dpuuid": f"da{i}"}
                       for i in range(bulk)]
        ids = await xadd_all(redis, stream_key, bulk_events, chunk=5000)
        last_a = ids[-1]
        loaded = time.monotonic() - out_start

        async def all_a_in_outbound() -> bool:
            groups = {g["name"]: g for g in await redis.xinfo_groups(stream_key)}
            if _id(groups[GROUP]["last-delivered-id"]) < _id(last_a):
                return False  # not read yet
            pending = await redis.xpending(stream_key, GROUP)
            return not pending["pending"] or _id(pending["min"]) > _id(last_a)

        await wait_for(all_a_in_outbound, outage_s, "A's 200,000 events in its outbound stream",
                       worker.log)
        consumed = time.monotonic() - out_start
        rss_consumed = worker.rss_mb()
        outbound_a = await redis.xlen(f"{stream_key}:out:A")
        await wait_for(lambda: equals(worker.metric("iris_circuit_open", destination="A"), 1),
                       max(1.0, out_start + outage_s - time.monotonic()), "A's circuit open")
        status, body = await worker.get("/readyz")  # the pod works; the paused one is named
        assert status == 200 and "destination A paused" in body, body
        assert len(seen_a & {(e["uuid"], "sa") for e in bulk_events[:10]}) == 0
        await asyncio.sleep(max(0.0, out_start + outage_s - time.monotonic()))  # the outage
        out_end = time.monotonic()
        sampling.set()
        await sampler
        rss_max = max(rss)

        # ---- A comes back
        await proxy.reopen_listener()
        expected_a = {(e["uuid"], "sa") for e in bulk_events}
        await wait_for(lambda: expected_a <= seen_a, 90, "A's backlog delivered",
                       lambda: f"{len(expected_a & seen_a)}/{bulk} {worker.log()[-3000:]}")
        recovered = time.monotonic() - out_end
        await wait_for(lambda: equals(worker.metric("iris_circuit_open", destination="A"), 0),
                       10, "A's circuit closed")
        await wait_for(worker.ready, 10, "ready again once A is back")
        producer.stop.set()
        await produce
        expected = {"A": expected_a | producer.sent["sa"], "B": producer.sent["sb"]}
        got = {"A": a, "B": b}
        await wait_for(lambda: all(expected[d] <= set(pairs_received(got[d])) for d in got), 30,
                       "every live event delivered")
        config = parse_config(data, env={})
        await wait_for(lambda: equals(pending_total(redis, config), 0), 20, "nothing pending")
        base_rate = rate_in(b, base_start, base_end)
        out_rate = rate_in(b, out_start, out_end)
        exhausted = await worker.metric("iris_events_dead_lettered_total", destination="A",
                                        reason="retries_exhausted")
        refused = await worker.metric("iris_requests_total", destination="A",
                                      code="connection_error")
        print(f"\n[isolation] B {base_rate:.0f}/s before, {out_rate:.0f}/s during the outage "
              f"({out_rate / base_rate:.0%}); bulk XADD {loaded:.1f} s, in A's outbound after "
              f"{consumed:.1f} s ({outbound_a} batches); RSS {rss_start:.1f} MB at start, "
              f"max {rss_max:.1f} MB, {rss_consumed:.1f} MB once consumed; A recovered in "
              f"{recovered:.1f} s; A connection errors {refused:.0f}")
        assert out_rate >= 0.8 * base_rate, f"B slowed: {out_rate:.0f}/s vs {base_rate:.0f}/s"
        assert rss_max - rss_start <= 50, f"RSS grew {rss_max - rss_start:.1f} MB"
        assert rss_consumed - rss_start <= 50
        assert outbound_a >= bulk // 1000
        assert recovered < 30, f"A's backlog took {recovered:.1f} s after recovery"
        assert exhausted == 0 and refused > 0
        assert a.server.problems == [] and b.server.problems == []
        await check_promises(redis, stream_key, GROUP, {"A": a.server, "B": b.server}, expected)
        assert await redis.xlen(f"{stream_key}:dlq") == 0
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 15) == 0
    finally:
        producer.stop.set()
        await asyncio.gather(produce, return_exceptions=True)
        worker.kill()
        await proxy.stop()
        await redis.delete(stream_key, f"{stream_key}:dlq", f"{stream_key}:out:A",
                           f"{stream_key}:out:B")  # 200,000 entries: free the shared Redis


# --------------------------------------------------------------------------- scenario 11

async def test_dlq_replay_rejected_after_partner_fixed(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]], tmp_path: Path,
) -> None:
    """A partner rejects every batch (400), so its events are dead-lettered as ``rejected``;
    next to them sit invalid events. Once the partner is fixed, ``iris dlq replay --reason
    rejected`` (the real CLI, another process) delivers exactly the rejected events, once each,
    and removes their dead letters; the invalid_event dead letters stay."""
    dest = "423"
    a = await partners(dest)
    broken = True

    async def responder(request: web.Request, body: bytes) -> web.StreamResponse | None:
        return error(400) if broken else None

    a.server.responder = responder
    data = config_data(redis_server.url, stream_key, [destination_config(
        a, batch={"max_users": 10, "max_wait": 0.2}, retry=fast_retry(), timeout=2,
    )], claim_idle_ms=5000)
    config = parse_config(data, env={})
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(data))
    events = [{"uuid": f"u{i}", "segment": f"s{i % 3}", "dpuuid": f"d{i}"} for i in range(30)]
    pairs = {(e["uuid"], e["segment"]) for e in events}
    invalid = [{"uuid": "bad1", "dpuuid": "x"}, {"uuid": "bad2", "segment": "s1", "status": "7",
                                                 "dpuuid": "x"}]
    dlq = f"{stream_key}:dlq"

    async with running(config):
        await xadd_all(redis, stream_key, events[:15] + invalid + events[15:])
        await wait_for(lambda: equals(redis.xlen(dlq), len(events) + len(invalid)), 20,
                       "every event dead-lettered")
        await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "nothing pending")
        before = await redis.xrange(dlq)
        reasons = Counter(f["dlq_reason"] for _, f in before)
        assert reasons == {"rejected": len(events), "invalid_event": len(invalid)}
        rejected = {(f["uuid"], f["segment"]) for _, f in before if f["dlq_reason"] == "rejected"}
        assert rejected == pairs
        assert all(f["dlq_status"] == "400" and MESSAGES[400] in f["dlq_error"]
                   for _, f in before if f["dlq_reason"] == "rejected")
        invalid_ids = [i for i, f in before if f["dlq_reason"] == "invalid_event"]
        assert a.server.received == []

        broken = False  # the partner is fixed
        started = time.monotonic()
        code, out, err = await run_cli("dlq", "replay", "-c", str(path), "--reason", "rejected")
        assert code == 0, err
        assert f"replayed {len(events)} event(s)" in out
        await wait_for(lambda: pairs <= set(pairs_received(a)), 20, "replayed events delivered")
        await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "nothing pending")
        recovered = time.monotonic() - started
        print(f"\n[dlq replay] {len(events)} events delivered {recovered:.1f} s after replay")
        assert recovered < 20
    assert pairs_received(a) == Counter(pairs), "exactly the dead-lettered events, once each"
    after = await redis.xrange(dlq)
    assert [i for i, _ in after] == invalid_ids, "only the invalid_event dead letters remain"
    await check_promises(redis, stream_key, GROUP, {dest: a.server}, {dest: pairs})


async def test_an_outage_longer_than_the_retries_dead_letters_nothing(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]],
) -> None:
    """The partner answers 503 for longer than ``max_attempts`` retries would last: once the
    circuit opens, the batches in flight wait and only probes go out (one at a time, spending
    no attempt), so nothing reaches ``retries_exhausted``; all arrive when it is back."""
    a = await partners("423")
    down = [True]
    probes: list[float] = []

    async def outage(request: web.Request, body: bytes) -> web.Response | None:
        if not down[0]:
            return None
        probes.append(time.monotonic())
        return error(503)

    a.server.responder = outage
    config = make_config(redis_server.url, stream_key, [destination_config(
        a, batch={"max_users": 2, "max_wait": 0.1}, retry=fast_retry(max_attempts=3),
        circuit={"failure_threshold": 3, "cooldown": 1.0}, limits={"max_in_flight": 4})])
    events = [{"uuid": f"u{i}", "segment": "s1", "dpuuid": f"d{i}"} for i in range(8)]
    async with running(config) as worker:
        await xadd_all(redis, stream_key, events)
        await wait_for(lambda: metric(worker, "iris_circuit_open", destination="423") == 1, 10,
                       "the circuit open")
        opened = len(probes)
        await wait_for(lambda: len(probes) >= opened + 6, 20, "six probes")
        assert await redis.xlen(f"{stream_key}:dlq") == 0
        gaps = [b - a for a, b in itertools.pairwise(probes[opened:])]
        down[0] = False
        await wait_for(lambda: len(pairs_received(a)) == 8, 20, "all delivered")
    assert await redis.xlen(f"{stream_key}:dlq") == 0
    assert min(gaps) >= 0.9, gaps  # one probe per cool-down, not a burst


async def test_the_request_rate_holds_across_replicas(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]], tmp_path: Path,
) -> None:
    """``requests_per_second: 4`` with three replicas and a backlog for all of them: the
    partner sees at most 4 requests a second in all (plus one burst), not 4 per replica."""
    a = await partners("423")
    arrivals: list[float] = []
    a.server.on_batch = lambda batch: arrivals.append(time.monotonic())
    dest = destination_config(a, batch={"max_users": 1, "max_wait": 0.05},
                              limits={"requests_per_second": 4, "max_in_flight": 4})
    events = [{"uuid": f"r{i}", "segment": "s1", "dpuuid": f"d{i}"} for i in range(200)]
    await xadd_all(redis, stream_key, events)
    workers = [WorkerProcess(config_data(redis_server.url, stream_key, [dest],
                                         consumer=f"rate{i}"), tmp_path, f"rate{i}").start()
               for i in range(3)]
    try:
        for worker in workers:
            await wait_for(worker.ready, 20, "replica ready", worker.log)
        await wait_for(lambda: len(arrivals) >= 40, 30, "ten seconds of requests")
    finally:
        for worker in workers:
            worker.kill()
    window = arrivals[-1] - arrivals[0]
    per_second = (len(arrivals) - 1) / window
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1) for start in arrivals)
    print(f"\n[rate] {len(arrivals)} requests in {window:.1f} s: {per_second:.2f}/s, "
          f"at most {busiest} in any second")
    assert per_second <= 4.2 and busiest <= 4 + 1, (per_second, busiest)


async def test_a_partner_outage_keeps_every_replica_ready(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Callable[..., Awaitable[Partner]], tmp_path: Path,
) -> None:
    """One destination's partner down, two replicas: /readyz stays 200 on both throughout and
    names the paused destination in its body (a rollout or a drain does not stall), the other
    destination keeps delivering, and IrisDestinationPaused fires when Prometheus is fed what
    the replicas report for five minutes."""
    down, up = await partners("423"), await partners("424")
    down.server.responder = lambda request, body: _answer(error(503))
    dests = [destination_config(down, batch={"max_wait": 0.1, "max_users": 2},
                                retry=fast_retry(),
                                circuit={"failure_threshold": 2, "cooldown": 30}),
             destination_config(up, batch={"max_wait": 0.1})]
    workers = [WorkerProcess(config_data(redis_server.url, stream_key, dests,
                                         consumer=f"ready{i}"), tmp_path, f"ready{i}").start()
               for i in range(2)]
    samples: list[tuple[int, str]] = []
    try:
        for worker in workers:
            await wait_for(worker.ready, 20, "replica ready", worker.log)
        for n in range(6):
            await xadd_all(redis, stream_key, [  # batches of 2 for 423: both replicas get some
                {"uuid": f"o{n}-{i}", "segment": "s1", "dpuuid": "d"} for i in range(10)])

            async def both_paused() -> bool:
                return all([await w.metric("iris_circuit_open", destination="423") == 1
                            for w in workers])

            if n == 0:
                await wait_for(both_paused, 20, "the circuit open on both replicas")
            for worker in workers:
                samples.append(await worker.get("/readyz"))
            await asyncio.sleep(0.5)  # a few seconds of outage, sampled
        await wait_for(lambda: len(pairs_received(up)) == 60, 20, "the other one delivers")
        circuit = [await w.metric("iris_circuit_open", destination="423") for w in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert all(status == 200 and "destination 423 paused (circuit open)" in body
               for status, body in samples), samples
    assert circuit == [1, 1]
    assert_destination_paused_fires(tmp_path, len(workers))


async def _answer(response: web.Response) -> web.Response:
    return response


def assert_destination_paused_fires(tmp_path: Path, replicas: int) -> None:
    """promtool: the replicas report iris_circuit_open 1 for ten minutes."""
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    series = [{"series": f'iris_circuit_open{{destination="423",instance="iris-{i}"}}',
               "values": "1x10"} for i in range(replicas)]
    (tmp_path / "outage.test.yml").write_text(yaml.safe_dump({
        "rule_files": ["alerts.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": 'ALERTS{alertname="IrisDestinationPaused",alertstate="firing"}',
             "eval_time": "7m", "exp_samples": [{"labels": (
                 'ALERTS{alertname="IrisDestinationPaused",alertstate="firing",'
                 'destination="423",severity="warning"}'), "value": 1}]}]}],
    }))
    result = subprocess.run([tool("promtool"), "test", "rules",
                             str(tmp_path / "outage.test.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
