"""Redis connections do not grow with destinations (issue 12, acceptance 3).

A worker opens at most ``redis.max_connections`` connections: the outbound streams are read by
one shared blocking read, and a task that finds every connection busy waits for one instead of
failing ("Too many connections" used to read as "Redis unavailable" and stop all delivery past
about a hundred destinations).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from iris_demo.localredis import RedisProcess
from iris_demo.payload import validate_payload
from iris_demo.servers import LocalServer
from tests.conftest import config_data, wait_for
from tests.faults.harness import WorkerProcess, cpu_seconds, settled

BOUND = 20  # redis.max_connections, the default


class ManyPartners:
    """One HTTP server standing in for every destination's partner: ``/d/<id>`` validates the
    payload for destination ``<id>`` and counts the users it received."""

    def __init__(self) -> None:
        self.users: Counter[str] = Counter()
        self.problems: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        dest = request.match_info["dest"]
        payload = json.loads(await request.read())
        try:
            validate_payload(payload, destination_id=dest, user_dpid="1", client_id="2")
        except ValueError as exc:
            self.problems.append(str(exc))
            return web.json_response({"error": str(exc)}, status=400)
        self.users[dest] += len(payload["Users"])
        return web.json_response({"status": "ok"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/d/{dest}", self.handle)
        return app


def destinations(base: str, count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "url": f"{base}/d/d{i}", "user_dpid": "1", "client_id": "2",
             "allow_http": True, "segments": [f"s{i}"], **extra} for i in range(count)]


async def worker_connections(client: aioredis.Redis) -> int:
    """Clients connected to Redis, other than ``client`` itself."""
    me = await client.client_id()
    return sum(1 for c in await client.client_list() if int(c["id"]) != me)


async def run_load(own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str,
                   tmp_path: Path, dests: list[dict[str, Any]], events: int,
                   partner: ManyPartners) -> tuple[WorkerProcess, int, str]:
    """One ``iris run`` delivering ``events`` spread over ``dests``; (worker, peak Redis
    connections seen while it worked, its log)."""
    data = config_data(own_redis.url, stream_key, dests, claim_idle_ms=60000)
    worker = WorkerProcess(data, tmp_path).start()
    await wait_for(worker.ready, 60, "worker ready", worker.log)
    async with direct.pipeline(transaction=False) as pipe:
        for n in range(events):
            i = n % len(dests)
            pipe.xadd(stream_key, {"uuid": f"u{n}", "segment": f"s{i}", "dpuuid": f"dp{n}"})
        await pipe.execute()
    peak = 0
    deadline = time.monotonic() + 120
    while sum(partner.users.values()) < events:
        assert time.monotonic() < deadline, f"{sum(partner.users.values())}/{events} delivered"
        peak = max(peak, await worker_connections(direct))
        await asyncio.sleep(0.05)
    for dest in dests:
        await settled(direct, stream_key, dest["id"], timeout=30)
    return worker, peak, worker.log()


async def test_500_destinations_on_one_worker(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, tmp_path: Path,
) -> None:
    """500 destinations, ``max_in_flight: 16``: every event delivered, no connection error in
    the log, at most ``redis.max_connections`` connections, and, once idle, under 5 % of a
    core."""
    partner = ManyPartners()
    server = LocalServer()
    base = await server.start(partner.app())
    try:
        dests = destinations(base, 500, limits={"max_in_flight": 16},
                             batch={"max_users": 10, "max_wait": 0.2})
        worker, peak, log = await run_load(own_redis, direct, stream_key, tmp_path, dests, 2000,
                                           partner)
        with worker:
            window = 5.0
            cpu, started = cpu_seconds(worker.pid), time.monotonic()
            while time.monotonic() - started < window:  # a measurement window, not a wait
                await asyncio.sleep(0.5)
            idle_cpu = (cpu_seconds(worker.pid) - cpu) / (time.monotonic() - started)
            idle_connections = await worker_connections(direct)
    finally:
        await server.stop()
    print(f"\n[500 destinations] peak connections {peak}, idle {idle_connections}, "
          f"idle CPU {idle_cpu:.1%}")
    assert not partner.problems, partner.problems[:3]
    assert all(partner.users[f"d{i}"] == 4 for i in range(500)), partner.users.most_common(3)
    assert peak <= BOUND and idle_connections <= BOUND, (peak, idle_connections)
    assert "Too many connections" not in log and "redis unreachable" not in log
    assert idle_cpu < 0.05


async def test_in_flight_load_never_runs_out_of_connections(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, tmp_path: Path,
) -> None:
    """8 destinations, ``max_in_flight: 16``, 10-user batches (up to 128 batches settling at
    once): no connection error, and the worker never holds more connections than the bound."""
    partner = ManyPartners()
    server = LocalServer()
    base = await server.start(partner.app())
    try:
        dests = destinations(base, 8, limits={"max_in_flight": 16,
                                              "requests_per_second": 10000},
                             batch={"max_users": 10, "max_wait": 0.2})
        worker, peak, log = await run_load(own_redis, direct, stream_key, tmp_path, dests,
                                           16000, partner)
        worker.kill()
    finally:
        await server.stop()
    warnings = [line for line in log.splitlines() if '"warning"' in line or '"error"' in line]
    assert not warnings, warnings[:3]
    assert peak <= BOUND, peak
    assert sum(partner.users.values()) == 16000
