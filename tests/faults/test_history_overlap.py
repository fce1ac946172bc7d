"""A round of history must not overlap the commit before it.

A worker starts with entries of its own pending (a restart) and claims one that a dead
consumer left. While the commit of the first round (which writes the claimed entry's batch and
acknowledges it) is slow to reach Redis, the next page of history must not find that entry
still pending and fold it into a second batch, under another idempotency key. Here a proxy
holds every commit (the chunk that carries a batch's ``created_ms``) for half a second, while
other commands pass at once. The first claim comes due (every ``claim_idle_ms / 2``, 0.75 s)
in the third round of history, each round waiting for the commit before it: the entry claimed
then goes into a batch with the third page's last entry, and the fourth page would find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from iris_demo.localredis import RedisProcess
from tests.conftest import running, wait_for
from tests.faults.harness import (
    as_config,
    check_promises,
    delivered,
    missing,
    produce,
    raw_config,
    settled,
)
from tests.helpers import GROUP

COMMIT = b"created_ms"
HOLD_SECONDS = 0.5


@contextlib.asynccontextmanager
async def slow_commits(upstream_port: int) -> AsyncIterator[int]:
    """A TCP proxy to Redis that holds each chunk holding ``COMMIT`` for ``HOLD_SECONDS``."""
    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   hold: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if hold and COMMIT in data:
                    await asyncio.sleep(HOLD_SECONDS)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pump(client_r, redis_w, True), pump(redis_r, client_w, False))

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(serve, sock=sock)
    try:
        yield sock.getsockname()[1]
    finally:
        server.close()


async def test_a_page_of_history_never_refolds_what_the_last_commit_acknowledges(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    partner = await partners("423")
    await direct.xgroup_create(stream_key, GROUP, id="0", mkstream=True)
    own = await produce(direct, stream_key, "own", 15)  # three pages of history
    await direct.xreadgroup(GROUP, "me", {stream_key: ">"}, count=15)  # pending: a restart
    ghost = await produce(direct, stream_key, "ghost", 1)
    await direct.xreadgroup(GROUP, "ghost", {stream_key: ">"}, count=1)  # a dead consumer's

    async def ghost_idle() -> bool:
        rows = await direct.xpending_range(stream_key, GROUP, min="-", max="+", count=10,
                                           consumername="ghost")
        return bool(rows) and rows[0]["time_since_delivered"] > 1600
    await wait_for(ghost_idle, 10, "the ghost's entry idle past claim_idle_ms")

    async with slow_commits(own_redis.port) as port:
        data = raw_config(f"redis://127.0.0.1:{port}/0", stream_key, partner, read_count=5,
                          block_ms=100, claim_idle_ms=1500,
                          dest={"batch": {"max_users": 2, "max_wait": 0.05}, "timeout": 1})
        data["stream"]["consumer"] = "me"
        async with running(as_config(data)):
            await wait_for(lambda: own | ghost <= delivered(partner), 20, "every event",
                           lambda: missing(partner, own | ghost))
            await settled(direct, stream_key, partner.dest_id)

    await check_promises(direct, stream_key, GROUP, {partner.dest_id: partner.server},
                         {partner.dest_id: own | ghost})
