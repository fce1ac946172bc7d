"""The commands iris sends are packed by hiredis's C encoder into the very bytes redis-py's own
encoder writes; what hiredis cannot pack goes through redis-py's encoder, and a real Redis
answers both."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError
from redis.utils import HIREDIS_AVAILABLE

from iris.store.client import hiredis_packing
from iris_demo.localredis import RedisProcess

pytestmark = pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")

COMMANDS = [
    ("XADD", "iris:out:901", "*", "body", b'{"Users":[]}', "users", 10, "ratio", 2.5),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", "caf\u00e9", b"\xff\x00raw"),
    ("XGROUP CREATE", "iris:events", "iris", "0", "MKSTREAM"),  # two words: split
    ("SET", "k", bytearray(b"bytes hiredis refuses")),
    ("SET", "k", memoryview(b"a view")),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packed_bytes_match_redis_py(args: tuple[object, ...]) -> None:
    ours = hiredis_packing(Connection)(encoding_errors="surrogateescape")
    theirs = Connection(encoding_errors="surrogateescape")
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


def test_text_hiredis_cannot_encode_is_packed_with_the_error_handler() -> None:
    packed = b"".join(hiredis_packing(Connection)(encoding_errors="surrogateescape")
                      .pack_command("SET", "k", "bad\udcffbyte"))
    assert packed.endswith(b"$8\r\nbad\xffbyte\r\n")


def test_iris_commands_take_hiredis_s_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken: a one-word command goes to hiredis.pack_command once, whole."""
    import hiredis

    calls: list[tuple[object, ...]] = []
    real = hiredis.pack_command
    monkeypatch.setattr(hiredis, "pack_command", lambda args: calls.append(args) or real(args))
    connection = hiredis_packing(Connection)()
    connection.pack_command(*COMMANDS[0])
    connection.pack_command(*COMMANDS[2])  # two words: redis-py's encoder
    assert calls == [COMMANDS[0]]


def test_none_is_refused_as_redis_py_refuses_it() -> None:
    with pytest.raises(DataError):
        hiredis_packing(Connection)().pack_command("SET", "k", None)


async def test_a_real_redis_reads_both(redis_server: RedisProcess, stream_key: str) -> None:
    pool = aioredis.ConnectionPool.from_url(redis_server.url, decode_responses=False)
    pool.connection_class = hiredis_packing(pool.connection_class)
    client = aioredis.Redis.from_pool(pool)
    try:
        await client.execute_command("SET", f"{stream_key}:a", bytearray(b"x" * 3))
        await client.execute_command("XGROUP CREATE", stream_key, "g", "0", "MKSTREAM")
        await client.execute_command("RPUSH", f"{stream_key}:l", "caf\u00e9", b"\xff", 7, 2.5)
        assert await client.get(f"{stream_key}:a") == b"xxx"
        assert await client.lrange(f"{stream_key}:l", 0, -1) == [b"caf\xc3\xa9", b"\xff", b"7",
                                                             b"2.5"]
        assert [g["name"] for g in await client.xinfo_groups(stream_key)] == [b"g"]
    finally:
        await client.aclose()
