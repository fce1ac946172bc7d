"""Every worker process a fault scenario starts must log only JSON lines with the required
fields, and never a secret, whatever the fault did to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from iris_demo.localredis import RedisProcess
from tests.conftest import SecretWatch
from tests.faults.harness import STARTED, log_problems


@pytest.fixture(autouse=True)
def worker_logs_are_clean_json(secret_watch: SecretWatch) -> Iterator[None]:
    STARTED.clear()
    yield
    problems = {}
    for worker in STARTED:
        worker.kill()
        found = log_problems(worker.log(), secret_watch.all())
        if found:
            problems[worker.log_path.name] = found[:5]
    STARTED.clear()
    assert not problems, f"worker logs: {problems}"


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, to kill, freeze and restart."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def direct(own_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    """A client straight to ``own_redis`` (never through a proxy): the ground truth."""
    client = aioredis.Redis.from_url(
        own_redis.url, decode_responses=True,  # reconnects after a kill and restart of Redis
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    yield client
    await client.aclose()
