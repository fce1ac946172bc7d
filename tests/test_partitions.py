"""Partitions of the inbound stream (``core.partitions``): the partition function any producer
can compute, the key names and their hash slots, the config, and a partitioned worker on one
Redis (the cluster runs are in ``tests/faults/test_cluster.py``)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import yaml
from redis.crc import key_slot

from iris.config.model import RedisSettings, parse_config
from iris.core.partitions import inbound_keys, partition_key, partition_of
from iris.errors import ConfigError
from iris.store.keys import Keys, TokenKeys
from tests.conftest import config_data, destination_config, make_config, metric, running, wait_for
from tests.helpers import GROUP, equals, event, group_pending, run_cli


def test_the_worked_example_and_the_standard_crc32_check_value() -> None:
    assert zlib.crc32(b"user-1") == 2_116_437_524
    assert partition_of("user-1", 8) == 4  # the example of the module's docstring and README
    # CRC-32/ISO-HDLC's published check value: crc32("123456789") = 0xCBF43926 = 3,421,780,262
    assert partition_of("123456789", 1000) == 262
    assert partition_of("ünïcode", 7) == zlib.crc32("ünïcode".encode()) % 7  # UTF-8 bytes
    assert {partition_of(f"u{i}", 1) for i in range(100)} == {0}


def test_partitions_spread_users_and_refuse_nonsense() -> None:
    counts = [0] * 8
    for i in range(8000):
        counts[partition_of(f"user-{i}", 8)] += 1
    assert min(counts) > 850 and max(counts) < 1150, counts
    with pytest.raises(ValueError, match="at least 1"):
        partition_of("u", 0)


def test_key_names_without_and_with_partitions() -> None:
    assert inbound_keys("iris:events", 1, cluster=False) == ["iris:events"]  # today's name
    assert inbound_keys("iris:events", 1, cluster=True) == ["iris:events:{0}"]
    assert inbound_keys("iris:events", 3, cluster=False) == [
        "iris:events:{0}", "iris:events:{1}", "iris:events:{2}"]
    assert partition_key("a", 12) == "a:{12}"


def test_one_partition_keeps_every_key_name() -> None:
    [keys] = Keys.partitions(RedisSettings())
    assert (keys.inbound, keys.dead_letters, keys.written, keys.outbound("423"),
            keys.rate("423"), keys.consumer_lease("w1"), keys.permission_probe) == (
        "iris:events", "iris:events:dlq", "iris:events:written", "iris:events:out:423",
        "iris:events:rate:423", "iris:events:consumer:w1", "iris:events:permission-check")


def test_a_partition_keys_share_one_hash_slot() -> None:
    settings = RedisSettings.model_validate({"stream": {"partitions": 8},
                                             "redis": {"cluster": True}})
    parts = Keys.partitions(settings)
    assert [k.inbound for k in parts] == [f"iris:events:{{{p}}}" for p in range(8)]
    for keys in parts:
        together = {keys.inbound, keys.dead_letters, keys.written, keys.outbound("423"),
                    keys.outbound("a.b-c")}
        assert len({key_slot(k.encode()) for k in together}) == 1, together
        # shared by every partition, each used alone: named after stream.key
        assert keys.rate("423") == "iris:events:rate:423"
        assert keys.consumer_lease("w") == "iris:events:consumer:w"
    assert len({key_slot(k.inbound.encode()) for k in parts}) == 8


def test_token_keys_carry_a_per_destination_hash_tag_on_a_cluster() -> None:
    plain = TokenKeys.of("iris:events:auth", "423", "abc")
    assert (plain.token, plain.refresh) == ("iris:events:auth:423:abc:token",
                                            "iris:events:auth:423:refresh")
    tagged = TokenKeys.of("iris:events:auth", "423", "abc", cluster=True)
    assert tagged.token == "iris:events:auth:{423}:abc:token"  # ACL patterns ~iris:* match
    slots = {key_slot(k.encode()) for k in (tagged.token, tagged.lock, tagged.fence,
                                            tagged.pause, tagged.refresh)}
    assert len(slots) == 1


@pytest.mark.parametrize(("stream", "message"), [
    ({"partitions": 0}, "stream.partitions"),
    ({"partitions": 1025}, "stream.partitions"),
    ({"partitions": "many"}, "stream.partitions"),
])
def test_bad_partition_counts_are_refused_by_name(stream: dict[str, Any], message: str) -> None:
    data = config_data("redis://127.0.0.1:1/0", "k", [{"id": "d", "url": "https://p.example/x",
                                                        "user_dpid": "1", "client_id": "2"}],
                       **stream)
    with pytest.raises(ConfigError, match=message):
        parse_config(data, env={})


def test_cluster_seeds_are_each_checked_and_masked() -> None:
    dest = [{"id": "d", "url": "https://p.example/x", "user_dpid": "1", "client_id": "2"}]
    data = config_data("redis://:pw1@10.0.0.1:7000, rediss://:pw2@10.0.0.2:7001", "k", dest)
    data["redis"]["cluster"] = True
    config = parse_config(data, env={})
    assert config.redis.urls == ["redis://:pw1@10.0.0.1:7000", "rediss://:pw2@10.0.0.2:7001"]
    data["redis"]["url"] = "redis://10.0.0.1:7000,http://10.0.0.2:7001"
    with pytest.raises(ConfigError, match=r"redis\.url"):
        parse_config(data, env={})
    from iris.config.redaction import mask_redis_url, url_passwords
    assert mask_redis_url(config) == "redis://:****@10.0.0.1:7000, rediss://:****@10.0.0.2:7001"
    assert set(url_passwords(config)) == {"pw1", "pw2"}
    # without a cluster a comma is no separator: a password may hold one
    single = parse_config(config_data("redis://:pa,ss@10.0.0.1:6380/0", "k", dest), env={})
    assert mask_redis_url(single) == "redis://:****@10.0.0.1:6380/0"
    assert "pa,ss" in url_passwords(single)


async def test_a_partitioned_stream_on_one_redis(redis_server, redis, stream_key, partners):
    """Four partitions without a cluster: each event is read from its partition and delivered
    once; every partition's streams get gauges, and the lag total covers them all."""
    partner = await partners("423", client_secret=None)
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_users": 10, "max_wait": 0.1})], partitions=4)
    keys = inbound_keys(stream_key, 4, cluster=False)
    users = [f"user-{i}" for i in range(200)]
    async with running(config) as worker:
        for uuid in users:
            await redis.xadd(keys[partition_of(uuid, 4)], event(uuid))
        await wait_for(lambda: len(partner.server.segment_changes()) >= len(users), 20,
                       "every event delivered")
        assert sorted(u for u, *_ in partner.server.segment_changes()) == sorted(users)
        every = [*keys, *(f"{k}:out:423" for k in keys)]
        await wait_for(lambda: equals(group_pending(redis, every), 0), 10, "nothing pending")
        assert not await redis.exists(stream_key)  # the unpartitioned name is not used
        await worker._refresh_stream_stats()
        for key in keys:
            assert metric(worker, "iris_stream_lag", stream=key, group=GROUP) == 0
        assert worker.metrics.registry.get_sample_value(
            "iris_stream_lag_total", {"group": GROUP}) == 0


async def test_events_no_worker_reads_are_named_and_repartitioned(
        redis_server, redis, stream_key, partners, caplog, tmp_path):
    """Events a producer put in ``stream.key`` while partitions are on, and events left in a
    partition that a smaller ``stream.partitions`` no longer reads: a WARNING names each
    stream and its count, a gauge shows it, and ``iris repartition`` moves the events where
    they belong, once; then they are delivered."""
    partner = await partners("423", client_secret=None)
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_users": 10, "max_wait": 0.1})], partitions=2)
    await redis.xadd(stream_key, event("unpartitioned"))
    for uuid in ("left-1", "left-2", "left-3"):
        await redis.xadd(partition_key(stream_key, 3), event(uuid))  # from partitions: 4
    async with running(config) as worker:
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        [warning] = [w for w in warnings if w.startswith("events that no worker reads")]
        assert f"{stream_key} (1)" in warning and f"{stream_key}:{{3}} (3)" in warning
        assert f"belong in {stream_key}:{{0}} … {stream_key}:{{1}}" in warning
        assert "iris repartition" in warning
        assert metric(worker, "iris_stream_unread", stream=partition_key(stream_key, 3)) == 3
        assert metric(worker, "iris_stream_unread", stream=stream_key) == 1
        path = tmp_path / "iris.yaml"
        path.write_text(yaml.safe_dump(config_data(redis_server.url, stream_key, [
            {"id": "423", "url": "https://p.example/x", "user_dpid": "1", "client_id": "2"}],
            partitions=2)))
        code, out, err = await run_cli("status", "-c", str(path))
        assert code == 0, err
        assert (f"{stream_key}:{{3}}: 3 entries that no worker reads (`iris repartition` moves "
                "them into their partitions)") in out
        code, out, err = await run_cli("repartition", "-c", str(path), "--dry-run")
        assert code == 0, err
        assert out.endswith("would move 4 event(s) in all\n"), out
        assert await redis.xlen(stream_key) == 1  # a dry run changes nothing
        code, out, err = await run_cli("repartition", "-c", str(path))
        assert code == 0, err
        into = {1: f"1 to {stream_key}:{{{partition_of('unpartitioned', 2)}}}"}
        assert f"moved 1 event(s) from {stream_key}: {into[1]}\n" in out, out
        assert f"moved 3 event(s) from {stream_key}:{{3}}: " in out, out
        await wait_for(lambda: len(partner.server.segment_changes()) >= 4, 20, "moved delivered")
    assert sorted(u for u, *_ in partner.server.segment_changes()) == [
        "left-1", "left-2", "left-3", "unpartitioned"]
    # emptied and deleted (a group left on an emptied stream would report a false lag)
    assert not await redis.exists(stream_key, partition_key(stream_key, 3))


async def test_batches_of_two_partitions_never_share_an_idempotency_key(
        redis_server, redis, stream_key, partners):
    """Entry ids are unique within one stream only: two partitions may both hold ``1000-0``.
    Their batches must still carry different keys, or a partner that deduplicates by key
    would drop one of them."""
    partner = await partners("423", client_secret=None)
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_users": 1, "max_wait": 0.1})], partitions=2)
    keys = inbound_keys(stream_key, 2, cluster=False)
    for key, uuid in zip(keys, ("left", "right"), strict=True):
        await redis.xadd(key, event(uuid), id="1000-0")  # the same id in both partitions
    async with running(config):
        await wait_for(lambda: len(partner.server.received) >= 2, 20, "both delivered")
    sent = {b.payload["Users"][0]["AAM_UUID"]: b.idempotency_key for b in partner.server.received}
    assert set(sent) == {"left", "right"}
    assert sent["left"] != sent["right"], sent


async def test_the_lag_total_sums_every_partition(redis_server, redis, stream_key, partners):
    """``iris_stream_lag_total`` is the sum of the inbound partitions' lag (what one KEDA
    trigger or alert can use), and each partition keeps its own ``iris_stream_lag``."""
    from iris.runtime.worker import Worker
    from iris.store.streams import connect, partitions

    partner = await partners("423", client_secret=None)
    config = make_config(redis_server.url, stream_key, [destination_config(partner)],
                         partitions=2)
    keys = inbound_keys(stream_key, 2, cluster=False)
    worker = Worker(config)  # never started: only its scrape-time stream gauges are used
    worker.redis = connect(config)
    worker.all_streams = partitions(worker.redis, config)
    worker.streams = worker.all_streams[0]
    try:
        for streams in worker.all_streams:
            for key in streams.all_keys(["423"]):
                await streams.ensure_group(key)
        for key, count in zip(keys, (5, 3), strict=True):
            for i in range(count):
                await redis.xadd(key, event(f"{key}-{i}"))
        await worker._refresh_stream_stats()
    finally:
        await worker.redis.aclose()
    assert [metric(worker, "iris_stream_lag", stream=k, group=GROUP) for k in keys] == [5, 3]
    assert worker.metrics.registry.get_sample_value(
        "iris_stream_lag_total", {"group": GROUP}) == 8


async def test_a_lag_is_never_more_than_the_stream_holds(redis_server, redis, stream_key):
    """Entries deleted after the group's position and never read (what `iris repartition`
    does to a partition it empties): Redis 7.0 goes on reporting them as lag (its entries-read
    stays behind), here 5 on an empty stream. Nothing unread is left, so the lag iris reports
    (metrics, ``iris status``, what KEDA's alerts and scaling read through iris) is 0."""
    from iris.store.stats import StreamStats

    await redis.xgroup_create(stream_key, GROUP, id="0", mkstream=True)
    read = [await redis.xadd(stream_key, event(f"r{i}")) for i in range(3)]
    await redis.xreadgroup(GROUP, "c", {stream_key: ">"})
    await redis.xack(stream_key, GROUP, *read)
    gone = [await redis.xadd(stream_key, event(f"g{i}")) for i in range(5)]
    await redis.xdel(stream_key, *read, *gone)  # trimmed after reading, deleted unread
    assert await redis.xreadgroup(GROUP, "c", {stream_key: ">"}) == []
    [info] = await redis.xinfo_groups(stream_key)
    assert info["lag"] == 5  # what Redis 7.0 says
    assert await StreamStats(redis, GROUP).group_stats(stream_key) == (0, 0, 0)
    described = await StreamStats(redis, GROUP).describe(stream_key)
    assert described["groups"][0]["lag"] == 0
