"""RedisProcess: a real, private redis-server (never the one on 6379) and its fault hooks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from iris_demo.localredis import RedisProcess, free_port, ping
from tests.helpers import assert_port_held


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` until true or fail at the deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def rp() -> Iterator[RedisProcess]:
    with RedisProcess() as r:
        yield r


def client(r: RedisProcess, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(r.url, socket_timeout=timeout, socket_connect_timeout=timeout)


def test_free_port_is_usable() -> None:
    port = free_port()
    assert 0 < port < 65536 and port != 6379


def test_port_6379_is_refused() -> None:
    with pytest.raises(ValueError, match="6379"):
        RedisProcess(port=6379)


def test_start_answers_ping_and_stores(rp: RedisProcess) -> None:
    assert rp.url == f"redis://127.0.0.1:{rp.port}/0"
    assert rp.port != 6379 and rp.pid is not None and rp.running
    assert ping(rp.port)
    c = client(rp)
    c.set("k", "v")
    assert c.get("k") == b"v"
    assert c.config_get("save")["save"] == ""
    assert c.config_get("appendonly")["appendonly"] == "no"
    c.close()


async def test_usable_from_async_code(rp: RedisProcess) -> None:
    c = aioredis.from_url(rp.url)
    try:
        await c.xadd("s", {"uuid": "u1"})
        assert await c.xlen("s") == 1
    finally:
        await c.aclose()


def test_kill_then_restart_same_port_loses_data(rp: RedisProcess) -> None:
    port = rp.port
    c = client(rp)
    c.set("k", "v")
    c.close()  # closed by the client first: no TIME_WAIT on the server's port
    rp.kill()
    assert rp.pid is None and not rp.running
    assert not ping(port)
    assert_port_held(port)  # the port is not given away
    rp.restart()
    assert rp.port == port and ping(port)
    c = client(rp)
    assert c.get("k") is None
    c.close()


def test_freeze_then_thaw(rp: RedisProcess) -> None:
    c = client(rp, timeout=0.3)
    assert c.ping()
    rp.freeze()
    with pytest.raises(redis.exceptions.TimeoutError):
        c.ping()
    rp.thaw()
    wait_until(lambda: ping(rp.port))
    assert client(rp).ping()


def test_stop_is_idempotent_works_when_frozen_and_removes_tempdir() -> None:
    r = RedisProcess().start()
    workdir = r.logfile.parent if r.logfile else None
    assert workdir is not None and workdir.is_dir()
    r.freeze()
    r.stop()
    r.stop()
    assert not r.running and not ping(r.port)
    assert not workdir.exists()


def test_given_workdir_is_kept(tmp_path: Path) -> None:
    with RedisProcess(workdir=tmp_path) as r:
        assert ping(r.port)
    assert (tmp_path / "redis.log").exists()


def test_busy_port_fails_fast_with_log_tail(rp: RedisProcess) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        RedisProcess(port=rp.port).start()
    assert time.monotonic() - started < 9
    assert ping(rp.port)  # the first one is untouched


def test_missing_redis_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="redis-server not found"):
        RedisProcess().start()
