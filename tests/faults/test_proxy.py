"""The fault proxy itself, over real sockets: a private redis-server and a tiny echo server.

No mocks and no fixed sleeps: conditions are polled against deadlines. The only timed waits
are the "must NOT happen within this long" checks for pause(), which cannot be polled.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from iris_demo.localredis import RedisProcess
from tests.conftest import wait_for
from tests.faults.proxy import TASK_PREFIX, FaultProxy
from tests.helpers import assert_port_held, closed_port

PROMPT = 5.0  # "promptly": far below XREAD BLOCK 5000 plus the time a reconnect would take
STALL = 0.3  # how long a paused command must stay pending


def proxy_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(TASK_PREFIX)]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def backend() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


@pytest.fixture
async def direct(backend: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    """A client that bypasses the proxy: the ground truth about what reached Redis."""
    client = aioredis.Redis(host="127.0.0.1", port=backend.port)
    yield client
    await client.aclose()


@pytest.fixture
async def proxy(backend: RedisProcess) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", backend.port) as p:
        yield p
    assert not proxy_tasks()


@pytest.fixture
async def client(proxy: FaultProxy) -> AsyncIterator[aioredis.Redis]:
    """Through the proxy, with retries off so every fault surfaces to the test."""
    c = aioredis.Redis(host="127.0.0.1", port=proxy.port, retry=None, socket_connect_timeout=5)
    yield c
    await c.aclose()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A tiny echo server; on EOF from the client it closes its side too."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def echo_proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port) as p:
        yield p
    assert not proxy_tasks()


def key(name: str) -> str:
    return f"faults:{name}:{uuid.uuid4().hex}"


async def blocked_clients(direct: aioredis.Redis) -> int:
    return int((await direct.info("clients"))["blocked_clients"])


# --------------------------------------------------------------------------- forwarding


async def test_forwards_redis_commands_both_ways(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    assert proxy.address == f"127.0.0.1:{proxy.port}"
    assert await client.ping() is True
    k = key("fwd")
    big = bytes(range(256)) * 8192  # 2 MiB: many 64 KiB chunks each way
    assert await client.set(k, big) is True
    assert await direct.get(k) == big  # really reached Redis
    assert await client.get(k) == big  # and came back through the proxy
    assert proxy.connections == 1
    assert proxy.accepted == 1


async def test_echo_forwarding_and_half_close(echo_proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    payload = b"hello through the proxy\n" * 10_000
    writer.write(payload)
    writer.write_eof()  # half-close: the echo must still come back, then EOF
    assert await asyncio.wait_for(reader.read(), PROMPT) == payload
    writer.close()
    await wait_for(lambda: echo_proxy.connections == 0, what="connection torn down after EOF")
    await wait_for(lambda: not proxy_tasks(), what="pump tasks to finish")


async def test_upstream_down_resets_the_client() -> None:
    with closed_port() as dead_port:  # nothing listens there
        async with FaultProxy("127.0.0.1", dead_port) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), PROMPT)
            writer.close()
            await wait_for(lambda: p.connections == 0)


# --------------------------------------------------------------------------- reset_all


async def test_reset_all_breaks_a_blocked_xread(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    stream = key("xread")
    read = asyncio.create_task(client.xread({stream: "$"}, block=5000))
    await wait_for(lambda: blocked_clients(direct), what="XREAD to block in Redis")

    started = time.monotonic()
    proxy.reset_all()
    with pytest.raises(RedisConnectionError) as caught:
        await asyncio.wait_for(read, PROMPT)
    assert time.monotonic() - started < 2.0
    # redis-py wraps the socket error; the RST itself is visible in the message
    assert "reset" in str(caught.value).lower(), repr(caught.value)
    await wait_for(lambda: proxy.connections == 0)
    # the server-side socket was reset too, so Redis dropped the blocked client
    await wait_for(lambda: _not_blocked(direct), what="Redis to drop the blocked client")
    # and the proxy still works for a new connection
    assert await client.ping() is True


async def _not_blocked(direct: aioredis.Redis) -> bool:
    return await blocked_clients(direct) == 0


async def test_reset_all_breaks_a_blocked_echo_read(echo_proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), PROMPT) == b"ping"
    pending = asyncio.create_task(reader.read(1))  # nothing more will come: blocked
    await wait_for(lambda: echo_proxy.connections == 1)
    echo_proxy.reset_all()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(pending, PROMPT)
    writer.close()


# --------------------------------------------------------------------------- reset_when


async def test_reset_when_xack_hits_the_ack_only_then_disarms(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    stream, group = key("xack"), "g"
    await direct.xgroup_create(stream, group, id="0", mkstream=True)
    entry_id = await direct.xadd(stream, {"f": "v"})

    proxy.reset_when(b"XACK")
    # the preceding command goes through untouched
    got = await client.xreadgroup(group, "c1", {stream: ">"}, count=1)
    assert got[0][1][0][0] == entry_id
    assert proxy.resets_triggered == 0

    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(client.xack(stream, group, entry_id), PROMPT)
    assert proxy.resets_triggered == 1
    # the chunk holding XACK was not forwarded: the entry is still pending in Redis
    assert (await direct.xpending(stream, group))["pending"] == 1

    # once=True: disarmed, so a reconnect and the same ack now work
    assert await client.xack(stream, group, entry_id) == 1
    assert (await direct.xpending(stream, group))["pending"] == 0
    assert proxy.resets_triggered == 1


async def test_reset_when_pattern_split_across_reads(echo_proxy: FaultProxy) -> None:
    echo_proxy.reset_when(b"XACK")
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    writer.write(b"abcXA")
    # wait for the echo so "XA" and "CK" certainly arrive in different reads
    assert await asyncio.wait_for(reader.readexactly(5), PROMPT) == b"abcXA"
    writer.write(b"CKdef")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), PROMPT)
    assert echo_proxy.resets_triggered == 1
    writer.close()


async def test_reset_when_downstream_and_not_once(
    proxy: FaultProxy, client: aioredis.Redis
) -> None:
    assert await client.ping() is True  # connect (and its handshake) before arming
    proxy.reset_when(b"PONG", direction="downstream", once=False)
    for expected in (1, 2):
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(client.ping(), PROMPT)
        assert proxy.resets_triggered == expected
    proxy.reset_when(None)
    assert await client.ping() is True


def test_reset_when_rejects_bad_arguments() -> None:
    p = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError):
        p.reset_when(b"x", direction="sideways")
    with pytest.raises(ValueError):
        p.reset_when(b"")


# --------------------------------------------------------------------------- pause / delay


async def test_pause_stalls_and_resume_completes(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    assert await client.ping() is True
    k = key("pause")
    proxy.pause()
    command = asyncio.create_task(client.set(k, "v"))
    done, _ = await asyncio.wait({command}, timeout=STALL)
    assert not done, "a command completed through a paused proxy"
    assert await direct.get(k) is None  # held in the proxy, not delivered late
    proxy.pause(False)
    assert await asyncio.wait_for(command, PROMPT) is True
    assert await direct.get(k) == b"v"


async def test_pause_holds_data_on_a_raw_stream(echo_proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    echo_proxy.pause()
    writer.write(b"held, not dropped")
    pending = asyncio.create_task(reader.readexactly(17))
    done, _ = await asyncio.wait({pending}, timeout=STALL)
    assert not done
    echo_proxy.pause(False)
    assert await asyncio.wait_for(pending, PROMPT) == b"held, not dropped"
    writer.close()


async def test_delay_adds_latency(proxy: FaultProxy, client: aioredis.Redis) -> None:
    assert await client.ping() is True
    proxy.delay(0.15)
    started = time.monotonic()
    assert await client.ping() is True
    assert time.monotonic() - started >= 0.3  # request and reply are each held 0.15 s
    proxy.delay(0)
    assert await client.ping() is True
    with pytest.raises(ValueError):
        proxy.delay(-1)


# --------------------------------------------------------------------------- refusing


async def test_close_and_reopen_listener(proxy: FaultProxy, client: aioredis.Redis) -> None:
    port = proxy.port
    assert await client.ping() is True  # a live connection, which close_listener keeps
    await proxy.close_listener()
    assert not proxy.listening
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert await client.ping() is True

    await proxy.reopen_listener()
    assert proxy.port == port
    fresh = aioredis.Redis(host="127.0.0.1", port=port, retry=None)
    try:
        assert await fresh.ping() is True
    finally:
        await fresh.aclose()
    assert proxy.accepted == 2


async def test_a_closed_listener_keeps_its_port(proxy: FaultProxy) -> None:
    """While closed, the port stays bound: the kernel gives it to no other test asking for a
    free port, whose server would answer in the proxy's place (a partner's backlog was once
    dead-lettered as HTTP 404 by another test's aiohttp server given the port in an outage)."""
    port = proxy.port
    await proxy.close_listener()
    assert_port_held(port)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)

    await proxy.reopen_listener()
    assert proxy.listening and proxy.port == port
    fresh = aioredis.Redis(host="127.0.0.1", port=port, retry=None)
    try:
        assert await fresh.ping() is True
    finally:
        await fresh.aclose()


async def test_refuse_resets_new_connections(proxy: FaultProxy) -> None:
    proxy.refuse()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), PROMPT)
    writer.close()

    refused = aioredis.Redis(host="127.0.0.1", port=proxy.port, retry=None)
    try:
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(refused.ping(), PROMPT)
        assert proxy.accepted == 2
        assert proxy.connections == 0
        proxy.refuse(False)
        assert await refused.ping() is True
    finally:
        await refused.aclose()


# --------------------------------------------------------------------------- stop


async def test_stop_leaves_no_tasks_and_closes_everything(
    backend: RedisProcess, direct: aioredis.Redis
) -> None:
    p = FaultProxy("127.0.0.1", backend.port)
    await p.start()
    port = p.port
    blocked = aioredis.Redis(host="127.0.0.1", port=port, retry=None)
    stalled = aioredis.Redis(host="127.0.0.1", port=port, retry=None)
    try:
        read = asyncio.create_task(blocked.xread({key("stop"): "$"}, block=5000))
        await wait_for(lambda: _blocked_at_least(direct, 1), what="XREAD to block")
        assert await stalled.ping() is True
        p.pause()
        stuck = asyncio.create_task(stalled.ping())
        await wait_for(lambda: p.connections == 2)
        assert proxy_tasks()

        await p.stop()
        assert not proxy_tasks()
        assert p.connections == 0
        for task in (read, stuck):
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(task, PROMPT)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await p.stop()  # idempotent
    finally:
        await blocked.aclose()
        await stalled.aclose()
        await p.stop()


async def _blocked_at_least(direct: aioredis.Redis, n: int) -> bool:
    return await blocked_clients(direct) >= n


async def test_stop_right_after_reset_all_leaves_no_tasks(echo_port: int) -> None:
    p = FaultProxy("127.0.0.1", echo_port)
    await p.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), PROMPT) == b"x"
    p.reset_all()  # cancels the pumps; stop() must still wait for them to unwind
    await p.stop()
    assert not proxy_tasks()
    writer.close()
