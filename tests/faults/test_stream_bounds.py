"""The inbound stream stays bounded, safely, and its numbers are true (issue 12, acceptance 6
and 8).

iris trims what every consumer group of the inbound stream has acknowledged (XTRIM MINID below
the oldest entry some group still holds or has not read), so the stream holds only what is not
yet acknowledged; a second, lagging group keeps everything it has not acknowledged. A group
destroyed and recreated then re-sends nothing already delivered. ``iris_stream_lag`` is the
true backlog even when Redis reports it as unknown.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from iris.config.model import parse_config
from iris.store.streams import Streams, connect
from iris_demo.localredis import RedisProcess
from tests.conftest import metric, running, wait_for
from tests.faults.harness import as_config, delivered, missing, raw_config, settled
from tests.helpers import GROUP, xadd_all

TRIM_MS = 1000


async def xadd_many(client: aioredis.Redis, key: str, count: int, tag: str) -> set[tuple[str, str]]:
    await xadd_all(client, key, [{"uuid": f"{tag}{n}", "segment": "s1", "dpuuid": f"d{n}"}
                                 for n in range(count)])
    return {(f"{tag}{n}", "s1") for n in range(count)}


def fast(partner: Any, url: str, stream_key: str, **stream: Any) -> Any:
    return as_config(raw_config(url, stream_key, partner, trim_interval_ms=TRIM_MS,
                                dest={"batch": {"max_users": 1000, "max_wait": 0.2}}, **stream))


async def test_inbound_stream_holds_only_what_is_not_acknowledged(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """50,000 delivered events: within a trim interval the stream is empty, and the metric
    counts every trimmed entry. Then the group is destroyed: the worker recreates it, and new
    events arrive without any old one being sent again."""
    partner = await partners("423")
    config = fast(partner, redis_server.url, stream_key)
    async with running(config) as worker:
        sent = await xadd_many(redis, stream_key, 50_000, "u")
        await wait_for(lambda: sent <= delivered(partner), 60, "all delivered",
                       lambda: missing(partner, sent))
        await settled(redis, stream_key, partner.dest_id)

        async def emptied() -> bool:
            return await redis.xlen(stream_key) == 0

        await wait_for(emptied, 2 * TRIM_MS / 1000 + 1, "the stream trimmed",
                       lambda: redis.xlen(stream_key))
        assert metric(worker, "iris_stream_trimmed_total", stream=stream_key) == 50_000

        received = len(partner.server.segment_changes())
        await redis.xgroup_destroy(stream_key, GROUP)
        later = await xadd_many(redis, stream_key, 5, "later")
        await wait_for(lambda: later <= delivered(partner), 20, "events after the group vanished")
        await settled(redis, stream_key, partner.dest_id)
    assert len(partner.server.segment_changes()) == received + 5
    assert not [r for r in caplog.records if "deleted before" in r.getMessage()]  # its own trim


async def test_a_lagging_group_keeps_what_it_has_not_acknowledged(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """A second group on the inbound stream has read 100 entries and acknowledged 50: after
    iris delivered all 5,000, the stream still holds every entry from the 51st on."""
    partner = await partners("423")
    await redis.xgroup_create(stream_key, "audit", id="0", mkstream=True)
    sent = await xadd_many(redis, stream_key, 5_000, "u")
    [(_, read)] = await redis.xreadgroup("audit", "auditor", {stream_key: ">"}, count=100)
    await redis.xack(stream_key, "audit", *[entry_id for entry_id, _ in read[:50]])
    config = fast(partner, redis_server.url, stream_key)
    async with running(config) as worker:
        await wait_for(lambda: sent <= delivered(partner), 60, "all delivered")
        await settled(redis, stream_key, partner.dest_id)

        async def trimmed_to_audit() -> bool:
            return await redis.xlen(stream_key) == 5_000 - 50

        await wait_for(trimmed_to_audit, 2 * TRIM_MS / 1000 + 1, "trimmed up to the audit group",
                       lambda: redis.xlen(stream_key))
        await asyncio.sleep(2 * TRIM_MS / 1000)  # two more trim passes: nothing more may go
        assert await redis.xlen(stream_key) == 5_000 - 50
        first = (await redis.xrange(stream_key, count=1))[0][0]
        assert first == read[50][0]
        assert metric(worker, "iris_stream_trimmed_total", stream=stream_key) == 50


async def test_lag_after_an_entry_deleted_ahead_of_the_group(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
) -> None:
    """Ten entries, three read by the group, one unread entry deleted (XDEL): Redis reports the
    lag as nil; iris counts the true backlog, 6."""
    await redis.xgroup_create(stream_key, GROUP, id="0", mkstream=True)
    ids = [await redis.xadd(stream_key, {"n": str(n)}) for n in range(10)]
    await redis.xreadgroup(GROUP, "c", {stream_key: ">"}, count=3)
    await redis.xdel(stream_key, ids[5])
    [info] = await redis.xinfo_groups(stream_key)
    assert info["lag"] is None  # what Redis says
    config = parse_config({"redis": {"url": redis_server.url}, "stream": {"key": stream_key},
                           "destinations": [{"id": "1", "url": "https://x.example/", "user_dpid":
                                             "1", "client_id": "1"}]}, env={})
    client = connect(config)
    try:
        assert await Streams(client, config).stats.group_stats(stream_key) == (9, 3, 6)
    finally:
        await client.aclose()


async def test_a_producer_maxlen_that_drops_unread_events_is_reported(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer caps the stream with MAXLEN while iris lags: events iris never read are
    gone. iris cannot deliver them, but it says so, once, naming the stream."""
    partner = await partners("423")
    await redis.xgroup_create(stream_key, GROUP, id="0", mkstream=True)
    for n in range(50):
        await redis.xadd(stream_key, {"uuid": f"u{n}", "segment": "s1", "dpuuid": "d"},
                         maxlen=10, approximate=False)
    config = fast(partner, redis_server.url, stream_key)
    async with running(config):
        def warned() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if "deleted before group" in r.getMessage()]

        await wait_for(warned, 2 * TRIM_MS / 1000 + 2, "a warning about the lost events")
        await wait_for(lambda: len(delivered(partner)) == 10, 10, "the 10 left delivered")
    [line] = warned()
    assert line.startswith(f"40 events of {stream_key} were deleted") and "MAXLEN" in line
