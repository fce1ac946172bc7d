"""The settler, on a real redis-server: batches settled together, one bad settle isolated.

A group is one atomic write (``store.atomic``); a reply about one command (here: a Redis user
that may not write the dead-letter stream) must not hold the other batches of its group, nor
those queued behind it (a stuck grouped ack was apache/pulsar#7683's failure), and a bug in one
settle crashes only that batch's delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from iris.config.model import parse_config
from iris.core.records import DeadLetter
from iris.errors import RedisUnavailable
from iris.runtime import settler as settler_module
from iris.runtime.health import Health
from iris.runtime.settler import Settler
from iris.store.permissions import check_permissions
from iris.store.streams import Streams, connect
from iris_demo.localredis import RedisProcess
from tests.conftest import wait_for

GROUP = "iris"


def open_streams(url: str, stream_key: str) -> Streams:
    config = parse_config({"redis": {"url": url}, "stream": {"key": stream_key}, "destinations": [
        {"id": d, "url": "https://p.example/x", "user_dpid": "1", "client_id": "2",
         "segments": ["*"], "auth": {"type": "none"}} for d in ("a", "b")]}, env={})
    return Streams(connect(config), config)


@pytest.fixture
async def streams(redis_server: RedisProcess, stream_key: str) -> AsyncIterator[Streams]:
    opened = open_streams(redis_server.url, stream_key)
    yield opened
    await opened.redis.aclose()


@pytest.fixture
async def no_dead_letters(redis_server: RedisProcess, redis: aioredis.Redis,
                          stream_key: str) -> AsyncIterator[Streams]:
    """The same streams, as a Redis user that may not write the dead-letter stream (NOPERM for
    the dead letters' XADD, which comes first: the group's write applies nothing)."""
    user = f"settler-{stream_key.split(':')[0]}"
    await redis.execute_command("ACL", "SETUSER", user, "on", ">pw", f"~{stream_key}:out:*",
                                "+@all")
    opened = open_streams(redis_server.url.replace("redis://", f"redis://{user}:pw@"),
                          stream_key)
    yield opened
    await opened.redis.aclose()
    await redis.execute_command("ACL", "DELUSER", user)


async def batches(redis: aioredis.Redis, streams: Streams, dest: str, count: int) -> list[str]:
    """``count`` outbound entries of ``dest``, delivered to our consumer (pending)."""
    key = streams.outbound(dest)
    await streams.ensure_group(key)
    for i in range(count):
        await redis.xadd(key, {"body": "{}", "events": "[]", "n": str(i)})
    return [entry_id for entry_id, _ in await streams.read(key, count, None)]


async def pending(redis: aioredis.Redis, key: str) -> int:
    return int((await redis.xpending(key, GROUP))["pending"])


async def writes(redis: aioredis.Redis) -> int:
    """Atomic writes so far: each is one run of ``store.atomic``'s script (EVALSHA), not
    counting the one refused with NOSCRIPT before redis-py loads the script."""
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


def dead(event: dict[str, str]) -> list[DeadLetter]:
    return [DeadLetter(event, "rejected", "1-0", "a", 400, "HTTP 400")]


async def test_batches_that_finish_together_are_one_transaction(
    redis: aioredis.Redis, streams: Streams,
) -> None:
    ids_a, ids_b = await batches(redis, streams, "a", 5), await batches(redis, streams, "b", 5)
    before = await writes(redis)
    settler = Settler(streams, Health().retry("settle"))
    results = await asyncio.gather(
        *(settler.settle(streams.outbound("a"), i, []) for i in ids_a),
        *(settler.settle(streams.outbound("b"), i, dead({"uuid": "u"})) for i in ids_b))
    after = await writes(redis)
    assert results == [True] * 10 and after - before == 1
    for dest in ("a", "b"):
        assert await pending(redis, streams.outbound(dest)) == 0
        assert await redis.xlen(streams.outbound(dest)) == 0
    assert await redis.xlen(streams.dead_letters) == 5


async def test_a_settle_that_holds_a_slot_is_written_without_gathering(
    redis: aioredis.Redis, streams: Streams, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settles gather for ``GATHER_SECONDS`` (here a minute) before a flush, unless they hold
    half a destination's delivery slots (``hurry``): then the flush is written at once, with
    every settle queued beside it, in one transaction (a 20 ms gather before every flush
    capped a fast partner's throughput at small ``max_in_flight``)."""
    monkeypatch.setattr(settler_module, "GATHER_SECONDS", 60.0)
    ids = await batches(redis, streams, "a", 3)
    before = await writes(redis)
    settler = Settler(streams, Health().retry("settle"))
    waiting = [asyncio.ensure_future(settler.settle(streams.outbound("a"), i, [])) for i in ids]
    for _ in range(20):  # the loop runs the flush task: it gathers
        await asyncio.sleep(0)
    assert not any(w.done() for w in waiting)
    settler.hurry()
    await wait_for(lambda: all(w.done() for w in waiting), 5, "the hurried flush")
    assert [w.result() for w in waiting] == [True] * 3
    assert await writes(redis) - before == 1
    assert await pending(redis, streams.outbound("a")) == 0


async def test_a_settle_redis_refuses_does_not_hold_the_others(
    redis: aioredis.Redis, no_dead_letters: Streams, stream_key: str,
) -> None:
    """The batch with dead letters cannot be settled; the others of its group, and later
    ones, are; once the user may write dead letters, it is settled too."""
    streams = no_dead_letters
    ids_a, ids_b = await batches(redis, streams, "a", 1), await batches(redis, streams, "b", 3)
    settler = Settler(streams, Health().retry("settle"))
    bad = asyncio.ensure_future(settler.settle(streams.outbound("a"), ids_a[0],
                                               dead({"uuid": "u"})))
    good = await asyncio.gather(*(settler.settle(streams.outbound("b"), i, []) for i in ids_b[:2]))
    later = await settler.settle(streams.outbound("b"), ids_b[2], [])
    assert good == [True, True] and later is True
    assert await pending(redis, streams.outbound("b")) == 0
    assert not bad.done() and await pending(redis, streams.outbound("a")) == 1
    user = f"settler-{stream_key.split(':')[0]}"
    await redis.execute_command("ACL", "SETUSER", user, f"~{streams.dead_letters}")  # fixed
    assert await asyncio.wait_for(bad, 10) is True
    assert await pending(redis, streams.outbound("a")) == 0
    assert await redis.xlen(streams.dead_letters) == 1


async def test_a_bug_in_one_settle_fails_that_batch_only(
    redis: aioredis.Redis, streams: Streams,
) -> None:
    ids = await batches(redis, streams, "a", 3)
    settler = Settler(streams, Health().retry("settle"))
    broken = dead({"uuid": None})  # type: ignore[dict-item]  # redis-py refuses None
    results = await asyncio.gather(
        settler.settle(streams.outbound("a"), ids[0], []),
        settler.settle(streams.outbound("a"), ids[1], broken),
        settler.settle(streams.outbound("a"), ids[2], []), return_exceptions=True)
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], Exception) and "None" in str(results[1])
    assert [r["message_id"] for r in await redis.xpending_range(
        streams.outbound("a"), GROUP, "-", "+", 10)] == [ids[1]]  # stays pending: reclaimed


async def test_close_gives_up_at_the_deadline_and_leaves_the_batch_pending(
    redis: aioredis.Redis, no_dead_letters: Streams,
) -> None:
    streams = no_dead_letters
    ids = await batches(redis, streams, "a", 1)
    settler = Settler(streams, Health().retry("settle"))
    waiting = asyncio.ensure_future(settler.settle(streams.outbound("a"), ids[0],
                                                   dead({"uuid": "u"})))
    await wait_for(lambda: settler._flushing is not None, 5, "a flush under way")
    settler.stopping.set()
    await settler.close(0.5)
    assert await asyncio.wait_for(waiting, 1) is False
    assert await pending(redis, streams.outbound("a")) == 1


async def test_a_dead_letter_key_of_another_type_is_named_at_start(
    redis: aioredis.Redis, streams: Streams,
) -> None:
    """A key of another type fails only when EXEC runs, after the acknowledgements queued beside
    it were applied: the worker refuses to start instead (it retries, naming the key)."""
    await check_permissions(streams)
    await redis.set(streams.dead_letters, "not a stream")
    with pytest.raises(RedisUnavailable, match=r":dlq holds a string, not a stream"):
        await check_permissions(streams)
