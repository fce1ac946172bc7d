"""``iris_inflight_requests{destination}`` is read when Prometheus scrapes (the sender's own
count, no gauge call per request): it shows the requests a partner holds, and 0 once they are
answered."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from tests.conftest import destination_config, make_config, metric, running, wait_for
from tests.helpers import xadd_all


async def test_the_gauge_counts_the_requests_a_partner_holds(
    redis_server: Any, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    partner = await partners("423")
    release = asyncio.Event()
    held = 0

    async def hold(request: web.Request, body: bytes) -> None:
        nonlocal held
        held += 1
        await release.wait()  # then the partner's usual answer

    partner.server.responder = hold
    config = make_config(redis_server.url, stream_key, [
        destination_config(partner, batch={"max_users": 1, "max_wait": 0.05})])
    async with running(config) as worker:
        await xadd_all(redis, stream_key, [{"uuid": f"u{i}", "segment": "s1", "dpuuid": "d"}
                                           for i in range(3)])
        await wait_for(lambda: held == 3, 10, "three requests held by the partner")
        assert metric(worker, "iris_inflight_requests", destination="423") == 3
        release.set()
        await wait_for(lambda: len(partner.server.received) == 3, 10, "three batches answered")
        await wait_for(lambda: metric(worker, "iris_inflight_requests", destination="423") == 0,
                       5, "no request in flight")
