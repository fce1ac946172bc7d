"""The baseline iris must beat: the pipeline a competent engineer would write in an afternoon.

Built on FastStream (``faststream[redis]``), the way its documentation shows:

- a Redis stream subscriber in a consumer group (``StreamSub`` with ``group`` and ``consumer``),
  reading batches of up to 1,000 entries (``batch=True, max_records=1000``; XREADGROUP blocks
  ``polling_interval`` ms when the stream is empty);
- per read, the events grouped per destination (by segment, as iris routes them) and per user,
  cut into payloads of at most ``max_users`` users in AAM's standard payload, the one iris sends;
- the POSTs of one read sent concurrently (``asyncio.gather``) over one aiohttp session, with
  a bearer token per destination fetched once at start from the partner's token endpoint;
- the read acknowledged by FastStream's own policy: the handler returns once every POST of the
  read succeeded, and FastStream XACKs the whole read (one XACK); a failed POST raises, and the
  read stays pending.

What it does not have, and iris does: outbound streams per destination, dead letters, retries
with backoff, rate limits, isolation of a slow partner, reclaim of another consumer's pending
entries, idempotency keys, token refresh.

Run as ``python -m benchmarks.faststream_peer`` with ``BENCH_PEER_SPEC`` (JSON: ``redis_url``,
``stream``, ``group``, ``consumer``, ``max_users``, ``read_count``, ``block_ms``, ``ready_file``,
``destinations: {id: {segments, url, token_url, client_id, client_secret, user_dpid,
client_id_aam}}``) in the environment. It imports nothing from iris. Like ``faststream run``,
it uses uvloop when installed; SIGTERM or SIGINT stops it gracefully.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage


@lru_cache(maxsize=4096)
def aam_date(epoch_second: int) -> str:
    """AAM's ``Wed Jul 27 16:17:42 UTC 2016`` (English names: Python runs in the C locale)."""
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(epoch_second))


def create_app(spec: dict[str, Any]) -> FastStream:
    destinations: dict[str, dict[str, Any]] = spec["destinations"]
    route = {segment: dest for dest, conf in destinations.items() for segment in conf["segments"]}
    max_users: int = spec["max_users"]
    broker = RedisBroker(spec["redis_url"])
    app = FastStream(broker)
    http: dict[str, Any] = {}  # the session and the tokens, made at start-up

    @app.on_startup
    async def connect() -> None:
        session = aiohttp.ClientSession(raise_for_status=True)
        tokens = {}
        for dest, conf in destinations.items():
            async with session.post(
                conf["token_url"], data={"grant_type": "client_credentials"},
                auth=aiohttp.BasicAuth(conf["client_id"], conf["client_secret"]),
            ) as answer:
                tokens[dest] = (await answer.json())["access_token"]
        http["session"] = session
        http["headers"] = {dest: {"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/json"}
                           for dest, token in tokens.items()}

    @app.after_startup
    async def ready() -> None:
        Path(spec["ready_file"]).write_text(repr(time.time()))

    @app.after_shutdown
    async def disconnect() -> None:
        await http["session"].close()

    async def post(dest: str, body: bytes) -> None:
        conf = destinations[dest]
        async with http["session"].post(conf["url"], data=body, headers=http["headers"][dest]):
            pass  # raise_for_status: anything but 2xx raises, and the read is not acknowledged

    @broker.subscriber(stream=StreamSub(
        spec["stream"], group=spec["group"], consumer=spec["consumer"], batch=True,
        max_records=spec["read_count"], polling_interval=spec["block_ms"]))
    async def deliver(events: list[dict[str, str]], msg: RedisBatchStreamMessage) -> None:
        users: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # dest -> uuid -> user
        for entry_id, event in zip(msg.raw_message["message_ids"], events, strict=True):
            dest = route.get(event["segment"])
            if dest is None:
                continue  # no destination takes this segment
            user = users[dest].get(event["uuid"])
            if user is None:
                user = users[dest][event["uuid"]] = {
                    "AAM_UUID": event["uuid"], "DataPartner_UUID": event["dpuuid"],
                    "Segments": []}
            user["Segments"].append({
                "Segment_ID": event["segment"], "Status": event.get("status", "1"),
                "DateTime": aam_date(int(entry_id.partition(b"-")[0]) // 1000)})
        now = aam_date(int(time.time()))
        posts = []
        for dest, by_uuid in users.items():
            conf, batch = destinations[dest], list(by_uuid.values())
            for start in range(0, len(batch), max_users):
                chunk = batch[start:start + max_users]
                posts.append(post(dest, orjson.dumps({
                    "ProcessTime": now, "User_DPID": conf["user_dpid"],
                    "Client_ID": conf["client_id_aam"], "AAM_Destination_Id": dest,
                    "User_count": str(len(chunk)), "Users": chunk})))
        await asyncio.gather(*posts)

    return app


def main() -> None:
    app = create_app(json.loads(os.environ["BENCH_PEER_SPEC"]))
    try:
        import uvloop
    except ImportError:
        asyncio.run(app.run())
    else:
        uvloop.run(app.run())


if __name__ == "__main__":
    main()
