"""XREADGROUP's replies as iris parses them (``store.replies``), on a real redis-server, in both
protocols: RESP3 (redis-py's default, a map of streams) and RESP2 (``?protocol=2``, a list)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP3Parser

from iris.config.model import Config, parse_config
from iris.core.records import Trimmed
from iris.store.client import connect
from iris.store.replies import parse_xreadgroup
from iris.store.streams import Streams
from iris_demo.localredis import RedisProcess

GROUP = "iris"


def _config_data(url: str, stream_key: str) -> dict[str, Any]:
    return {
        "redis": {"url": url},
        "stream": {"key": stream_key, "group": GROUP, "consumer": "me"},
        "destinations": [{"id": "a", "url": "https://p.example/x", "user_dpid": "1",
                          "client_id": "2", "segments": ["*"], "auth": {"type": "none"}}],
    }


def _config(url: str, stream_key: str) -> Config:
    return parse_config(_config_data(url, stream_key), env={})


@pytest.fixture(params=["", "?protocol=2"], ids=["resp3", "resp2"])
async def streams(request: pytest.FixtureRequest, redis_server: RedisProcess,
                  stream_key: str) -> AsyncIterator[Streams]:
    config = _config(redis_server.url + request.param, stream_key)
    opened = Streams(connect(config), config)
    info = await opened.redis.execute_command("CLIENT", "INFO")
    assert re.search(rf"\bresp={2 if request.param else 3}\b", info)  # the server's word
    yield opened
    await opened.redis.delete(stream_key, opened.outbound("a"))
    await opened.redis.aclose()


async def test_a_read_gives_each_stream_its_entries_with_their_fields_in_order(
        streams: Streams) -> None:
    redis, inbound, outbound = streams.redis, streams.inbound, streams.outbound("a")
    for key in (inbound, outbound):
        await streams.ensure_group(key)
    first = await redis.xadd(inbound, {"uuid": "u1", "segment": "s1", "dpuuid": "dp-1"})
    second = await redis.xadd(inbound, {"uuid": "ü2", "segment": "s2", "status": "0",
                                        "dpuuid": "dp-2"})
    batch = await redis.xadd(outbound, {"body": "{}", "events": "[]", "users": "1"})
    third = await redis.xadd(inbound, {"uuid": "u3", "segment": "s1", "dpuuid": "dp-3"})

    taken = await streams.read_many([inbound, outbound], 2, None)

    assert taken == {
        inbound: [(first, {"uuid": "u1", "segment": "s1", "dpuuid": "dp-1"}),
                  (second, {"uuid": "ü2", "segment": "s2", "status": "0", "dpuuid": "dp-2"})],
        outbound: [(batch, {"body": "{}", "events": "[]", "users": "1"})],
    }
    assert list(taken[inbound][1][1]) == ["uuid", "segment", "status", "dpuuid"]  # as written
    assert await streams.read(inbound, 10, None) == [
        (third, {"uuid": "u3", "segment": "s1", "dpuuid": "dp-3"})]
    # only the streams that had new entries are in a reply; none at all when the read times out
    assert await streams.read_many([inbound, outbound], 10, 50) == {}
    pending = await redis.xpending(inbound, GROUP)
    assert pending["pending"] == 3  # every entry was delivered once, to "me"


async def test_history_gives_an_entry_deleted_while_pending_as_trimmed(streams: Streams) -> None:
    redis, inbound = streams.redis, streams.inbound
    await streams.ensure_group(inbound)
    ids = [await redis.xadd(inbound, {"uuid": f"u{i}", "segment": "s1", "dpuuid": f"d{i}"})
           for i in range(3)]
    assert len(await streams.read(inbound, 10, None)) == 3
    await redis.xdel(inbound, ids[1])

    history = await streams.read_history(inbound, "0", 10)

    assert history == [(ids[0], {"uuid": "u0", "segment": "s1", "dpuuid": "d0"}),
                       Trimmed(ids[1]),
                       (ids[2], {"uuid": "u2", "segment": "s1", "dpuuid": "d2"})]
    assert await streams.read_history(inbound, ids[2], 10) == []


@pytest.mark.parametrize("parser", [_AsyncHiredisParser, _AsyncRESP3Parser],
                         ids=["hiredis", "python"])
async def test_streams_parse_their_reads_on_any_client_they_are_given(
        redis_server: RedisProcess, stream_key: str, parser: type[Any]) -> None:
    """Not only on ``store.client``'s: a plain redis-py client reads the same entries, with
    hiredis's reader or redis-py's own; bytes that are not UTF-8 arrive as surrogates with
    either (their decoding differed once: redis/redis-py#1161, #1006)."""
    config = _config(redis_server.url, stream_key)
    plain = aioredis.Redis.from_url(redis_server.url, decode_responses=True,
                                    encoding_errors="surrogateescape", parser_class=parser)
    try:
        streams = Streams(plain, config)
        await streams.ensure_group(stream_key)
        entry = await plain.xadd(stream_key, {"uuid": "u", "segment": b"s\xff", "dpuuid": "d"})
        assert await streams.read(stream_key, 10, None) == [
            (entry, {"uuid": "u", "segment": "s\udcff", "dpuuid": "d"})]
    finally:
        await plain.delete(stream_key)
        await plain.aclose()


def test_on_a_cluster_every_node_parses_reads_the_same_way() -> None:
    """redis-py's cluster client gives its callbacks to each node it makes (from
    ``connection_kwargs``, also after a MOVED): one dict, so the parser reaches them all.
    Nothing connects here; ``tests/faults/test_cluster.py`` reads through a real cluster."""
    config = parse_config({**_config_data("redis://127.0.0.1:1", "s"),
                           "redis": {"url": "redis://127.0.0.1:1", "cluster": True}}, env={})
    client = connect(config)
    Streams(client, config)
    assert client.response_callbacks["XREADGROUP"] is parse_xreadgroup
    shared = client.nodes_manager.connection_kwargs["response_callbacks"]
    assert shared is client.response_callbacks
    assert all(node.response_callbacks is shared
               for node in client.nodes_manager.startup_nodes.values())


def test_the_parser_takes_both_wire_shapes_and_nil() -> None:
    entries = [["1-0", ["f", "v", "g", "w"]], ["2-0", None]]
    expected = {"s": [("1-0", {"f": "v", "g": "w"}), ("2-0", {})]}
    assert parse_xreadgroup({"s": entries}) == expected  # RESP3: a map
    assert parse_xreadgroup([["s", entries]]) == expected  # RESP2: a list of pairs
    assert parse_xreadgroup(None) == {} and parse_xreadgroup({}) == {}
