"""Each destination batches on its own terms (issue 14, acceptance 1): a daily-style
destination beside a real-time one on the same events, and a crash between their writes.

An entry routed to several destinations is acknowledged when its last batch is written; the
MULTI that writes an earlier one records which destinations have it, so after a crash it goes
only where it is still missing, and no partner sees it twice under different keys.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from iris_demo.localredis import RedisProcess
from tests.conftest import config_data, destination_config, wait_for
from tests.faults.harness import WorkerProcess, check_promises, delivered, produce
from tests.helpers import GROUP, equals


async def test_a_slow_batcher_beside_a_fast_one_and_a_crash_between_them(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """A (max_users 1000, max_wait 30) and B (max_users 5, max_wait 0.5) take the same 40
    events: B's eight batches of 5 go out within seconds while A's batch stays open. The worker
    is SIGKILLed then: a new one takes the entries over and sends none of them to B again;
    A's batch goes out when it closes (here: at the new worker's clean stop), all 40 users in
    it, and nothing is pending afterwards (a third worker delivers what the second wrote at
    its stop)."""
    a, b = await partners("A"), await partners("B")

    def config(name: str) -> dict[str, Any]:
        return config_data(own_redis.url, stream_key, [
            destination_config(a, batch={"max_users": 1000, "max_wait": 30}, timeout=1),
            destination_config(b, batch={"max_users": 5, "max_wait": 0.5}, timeout=1),
        ], consumer=name, claim_idle_ms=2000)

    with WorkerProcess(config("first"), tmp_path, "first").start() as first:
        await wait_for(first.ready, 20, "first worker ready", first.log)
        sent = await produce(direct, stream_key, "fan", 40)
        started = time.monotonic()
        await wait_for(lambda: sent <= delivered(b), 10, "B's batches", first.log)
        b_took = time.monotonic() - started
        assert a.server.received == []  # A's batch is still open

        async def b_settled() -> bool:  # B's batches acknowledged: only A's work is left
            return await direct.xlen(f"{stream_key}:out:B") == 0

        await wait_for(b_settled, 10, "B's batches settled")
        first.kill()  # a crash between B's writes and A's
    assert [len(batch.payload["Users"]) for batch in b.server.received] == [5] * 8
    assert (await direct.hgetall(f"{stream_key}:written")).keys() == {
        entry_id for entry_id, _ in await direct.xrange(stream_key)}

    with WorkerProcess(config("second"), tmp_path, "second").start() as second:
        await wait_for(second.ready, 20, "second worker ready", second.log)

        async def taken_over() -> bool:
            rows = await direct.xpending_range(stream_key, GROUP, "-", "+", 100)
            return len(rows) == 40 and {r["consumer"] for r in rows} == {"second"}

        await wait_for(taken_over, 20, "the entries taken over", second.log)
        assert len(b.server.received) == 8  # nothing sent to B again
        second.signal(signal.SIGTERM)  # A's batch closes now, and is written
        assert await asyncio.to_thread(second.wait, 20) == 0
    with WorkerProcess(config("third"), tmp_path, "third").start() as third:
        await wait_for(lambda: sent <= delivered(a), 20, "A's batch delivered", third.log)
        await wait_for(lambda: equals(direct.xlen(f"{stream_key}:out:A"), 0), 10, "settled")
    assert [len(batch.payload["Users"]) for batch in a.server.received] == [40]
    assert len(b.server.received) == 8
    await check_promises(direct, stream_key, GROUP, {"A": a.server, "B": b.server},
                         {"A": sent, "B": sent})
    assert not await direct.exists(f"{stream_key}:written")
    assert b_took < 5
