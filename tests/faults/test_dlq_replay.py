"""`iris dlq replay` and `iris dlq list` against a live worker (issue 12, acceptance 7).

A replay handles the dead letters present when it starts, each once: events that fail again
while it runs are dead-lettered behind that point and are not picked up by the same replay (it
used to chase its own tail: 100,000 dead letters became 219,300 re-injected events). A dead
letter holding bytes that are not UTF-8 is listed, escaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from iris_demo.localredis import RedisProcess
from tests.conftest import wait_for
from tests.faults.harness import WorkerProcess, raw_config
from tests.helpers import run_cli

DEAD = 20_000


async def entries_added(client: aioredis.Redis, key: str) -> int:
    """Every XADD the stream has ever taken (trimming does not lower it)."""
    return int((await client.xinfo_stream(key))["entries-added"])


async def test_replay_against_a_partner_that_still_refuses(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """20,000 `rejected` dead letters, a running worker, a partner that still answers 400:
    the replay re-injects exactly 20,000 events, and the dead-letter stream ends with the
    20,000 that failed again (none lost, none replayed twice)."""
    partner = await partners("423")
    refused = [0]

    async def still_broken(request: web.Request, body: bytes) -> web.Response:
        refused[0] += 1
        return web.json_response({"status": "400", "message": "still not mapped"}, status=400)

    partner.server.responder = still_broken
    dlq = f"{stream_key}:dlq"
    for start in range(0, DEAD, 5000):
        async with direct.pipeline(transaction=False) as pipe:
            for n in range(start, start + 5000):
                pipe.xadd(dlq, {"uuid": f"u{n}", "segment": "s1", "dpuuid": f"d{n}",
                                "dlq_reason": "rejected", "dlq_destination": "423",
                                "dlq_status": "400", "dlq_error": "HTTP 400",
                                "dlq_source_id": "0-1", "dlq_time": "2026-11-29T00:00:00Z"})
            await pipe.execute()
    data = raw_config(own_redis.url, stream_key, partner,
                      dest={"batch": {"max_users": 100, "max_wait": 0.1}})
    with WorkerProcess(data, tmp_path).start() as worker:
        await wait_for(worker.ready, 20, "worker ready", worker.log)
        before = await entries_added(direct, stream_key)
        code, out, err = await run_cli("dlq", "replay", "-c", str(worker.config_path),
                                    "--destination", "423", "--reason", "rejected")
        assert code == 0, err
        assert out.strip() == f"replayed {DEAD} event(s) into {stream_key}"
        assert "replayed 10000 event(s) so far" in err  # progress for a large replay
        assert await entries_added(direct, stream_key) - before == DEAD

        async def all_failed_again() -> bool:
            return await direct.xlen(dlq) == DEAD

        await wait_for(all_failed_again, 60, "every replayed event dead-lettered again",
                       lambda: direct.xlen(dlq))
    assert refused[0] >= DEAD // 100
    assert await entries_added(direct, stream_key) - before == DEAD


async def test_dry_run_and_limit(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """``--dry-run`` counts and changes nothing; ``--limit`` bounds a replay."""
    partner = await partners("423")
    dlq = f"{stream_key}:dlq"
    for n in range(30):
        await direct.xadd(dlq, {"uuid": f"u{n}", "segment": "s1", "dpuuid": "d",
                                "dlq_reason": "retries_exhausted", "dlq_destination": "423"})
    config = tmp_path / "iris.yaml"
    config.write_text(orjson.dumps(raw_config(own_redis.url, stream_key, partner)).decode())
    code, out, _ = await run_cli("dlq", "replay", "-c", str(config), "--dry-run")
    assert code == 0 and out.strip() == f"would replay 30 event(s) into {stream_key}"
    assert await direct.xlen(dlq) == 30 and not await direct.exists(stream_key)
    code, out, _ = await run_cli("dlq", "replay", "-c", str(config), "--limit", "12")
    assert code == 0 and out.strip() == f"replayed 12 event(s) into {stream_key}"
    assert await direct.xlen(dlq) == 18 and await direct.xlen(stream_key) == 12


async def test_list_shows_a_dead_letter_that_is_not_utf8(
    own_redis: RedisProcess, stream_key: str, partners: Any, tmp_path: Path,
) -> None:
    """A dead letter whose fields hold bytes that are not UTF-8 (a producer's mistake kept as
    it was): listed with the bad bytes escaped, beside a normal one; exit 0."""
    partner = await partners("423")
    raw = aioredis.Redis.from_url(own_redis.url)  # bytes in, bytes out
    try:
        await raw.xadd(f"{stream_key}:dlq", {b"uuid": b"caf\xe9-\xff", b"segment": b"s1",
                                             b"dlq_reason": b"invalid_event"})
        await raw.xadd(f"{stream_key}:dlq", {b"uuid": "café".encode(), b"segment": b"s2",
                                             b"dlq_reason": b"invalid_event"})
    finally:
        await raw.aclose()
    config = tmp_path / "iris.yaml"
    config.write_text(orjson.dumps(raw_config(own_redis.url, stream_key, partner)).decode())
    code, out, err = await run_cli("dlq", "list", "-c", str(config))
    assert code == 0, err
    first, second = (orjson.loads(line) for line in out.splitlines())
    assert first["uuid"] == "caf\\xe9-\\xff" and first["segment"] == "s1"
    assert second["uuid"] == "café"
    assert err.strip() == "2 dead letter(s)"
