"""Every Redis answer has a named outcome (``iris/redis_errors.py``): a table of redis-py's
errors, then the real replies of a real redis-server (OOM inside MULTI, NOPERM, BUSY, NOGROUP),
since redis-py wraps some of them in ways a table alone would not show."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rx

from iris.errors import GroupMissing, RedisUnavailable
from iris.store.errors import redis_errors, translate
from iris_demo.localredis import RedisProcess

TABLE = [  # (what redis-py raises, reply label, start of the reason /readyz shows)
    (rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM",
     "redis refuses writes: OOM command not allowed"),
    (rx.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently "
                      "unable to persist to disk."), "MISCONF", "redis refuses writes: MISCONF"),
    (rx.ReadOnlyError("You can't write against a read only replica."), "READONLY",
     "redis is a read-only replica: READONLY You can't write"),
    (rx.BusyLoadingError("Redis is loading the dataset in memory"), "LOADING",
     "redis is loading its data: LOADING"),
    (rx.ResponseError("BUSY Redis is busy running a script."), "BUSY",
     "redis is busy running a script: BUSY"),
    (rx.NoPermissionError("this user has no permissions to run the 'evalsha' command"),
     "NOPERM", "the redis user lacks a permission: NOPERM this user has no permissions to run "
     "the 'evalsha' command"),
    (rx.TryAgainError("Multiple keys request during rehashing of slot"), "TRYAGAIN",
     "redis cluster is resharding: TRYAGAIN"),
    (rx.ClusterDownError("The cluster is down"), "CLUSTERDOWN", "redis cluster is down"),
    (rx.MasterDownError("Link with MASTER is down"), "MASTERDOWN", "redis lost its primary"),
    (rx.ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS",
     "redis refuses writes: NOREPLICAS Not enough good replicas to write."),
    (rx.ResponseError("ERR The user executing the script can't run this command or "
                      "subcommand script: d2b5bc0f, on @user_script:34."), "NOPERM",
     "the redis user lacks a permission: NOPERM for a command inside one of iris's Lua"),
    (rx.ResponseError("UNBLOCKED force unblock from blocking operation, instance state "
                      "changed (master -> replica?)"), "READONLY",
     "redis is a read-only replica: READONLY UNBLOCKED force unblock"),
    # the stream deleted under a blocked XREADGROUP (Redis 7.0), or its group (7.2 and later):
    # a vanished group, recreated, not a replica
    (rx.ResponseError("UNBLOCKED the stream key no longer exists"), "NOGROUP",
     "consumer group missing: UNBLOCKED the stream key no longer exists"),
    (rx.ResponseError("UNBLOCKED the consumer group this client was blocked on no longer "
                      "exists"), "NOGROUP", "consumer group missing: UNBLOCKED the consumer"),
    (rx.ResponseError("UNBLOCKED client unblocked via CLIENT UNBLOCK"), "other",
     "redis refused a command: UNBLOCKED client unblocked"),
    (rx.ReadOnlyError("You can't write against a read only replica. script: 9f1c, on "
                      "@user_script:3."), "READONLY",
     "redis is a read-only replica: READONLY You can't write against a read only replica."),
    (rx.ResponseError("NOGROUP No such key 'k' or consumer group 'iris'"), "NOGROUP",
     "consumer group missing: NOGROUP"),
    (rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     "other", "redis refused a command: WRONGTYPE Operation"),
    (rx.ResponseError("unknown command 'XAUTOCLAIM'"), "other", "redis refused a command: ERR"),
    (rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
     "connection", "redis unreachable: ConnectionError: Error 111"),
    (rx.MaxConnectionsError("Too many connections"), "connection", "redis unreachable"),
    (rx.AuthenticationError("invalid username-password pair or user is disabled."), "connection",
     "redis refused the credentials of redis.url (user or password): invalid username"),
    (rx.TimeoutError("Timeout reading from socket"), "timeout", "redis did not answer in time"),
    (ConnectionResetError(104, "Connection reset by peer"), "connection",
     "redis unreachable: ConnectionResetError"),
]


@pytest.mark.parametrize(("raised", "reply", "reason"), TABLE,
                         ids=[f"{type(r).__name__}-{p}" for r, p, _ in TABLE])
def test_every_error_has_a_named_outcome(raised: Exception, reply: str, reason: str) -> None:
    translated = translate(raised)
    assert translated is not None
    assert translated.reply == reply
    assert str(translated).startswith(reason), str(translated)
    assert isinstance(translated, GroupMissing) == (reply == "NOGROUP")


def test_a_bug_is_not_translated() -> None:
    assert translate(ValueError("not a redis error")) is None
    with pytest.raises(rx.DataError), redis_errors():
        raise rx.DataError("invalid input: a bug of iris's, not Redis's answer")


async def test_wrong_credentials_are_named_as_such(redis_server: RedisProcess) -> None:
    """A password the server refuses (WRONGPASS) is not "unreachable": the reason names the
    credentials of ``redis.url``, and never the password itself."""
    url = redis_server.url.replace("redis://", "redis://nobody:not-the-pw-7431@")
    client = aioredis.Redis.from_url(url)
    try:
        with pytest.raises(RedisUnavailable) as caught, redis_errors():
            await client.ping()
    finally:
        await client.aclose()
    reason = str(caught.value)
    assert reason.startswith("redis refused the credentials of redis.url"), reason
    assert "not-the-pw-7431" not in reason


async def test_real_replies() -> None:
    """OOM inside MULTI (redis-py raises the queued command's error, quoting the command: the
    reason keeps Redis's words and drops the command), NOPERM from a script, BUSY, NOGROUP."""
    with RedisProcess() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            await client.xgroup_create("s", "g", id="0", mkstream=True)
            for _ in range(200):
                await client.xadd("s", {"payload": "x" * 200, "user": "u-secret-id"})
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used // 2)
            with pytest.raises(RedisUnavailable) as oom, redis_errors():
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xadd("out", {"body": "u-secret-id"})
                    pipe.xack("s", "g", "0-1")
                    await pipe.execute()
            assert oom.value.reply == "OOM"
            assert str(oom.value) == ("redis refuses writes: OOM command not allowed when used "
                                      "memory > 'maxmemory'.")
            await client.config_set("maxmemory", 0)

            await client.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                                     commands=["+@all", "-@scripting"])
            limited = aioredis.Redis.from_url(f"redis://limited:pw@127.0.0.1:{server.port}/0")
            try:
                with pytest.raises(RedisUnavailable) as denied, redis_errors():
                    await limited.register_script("return 1")()
                assert denied.value.reply == "NOPERM" and "'evalsha'" in str(denied.value)

                await client.config_set("busy-reply-threshold", 50)
                spin = asyncio.create_task(client.eval(  # runs one second
                    "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
                    "if (n[1] - t[1]) * 1000000 + n[2] - t[2] >= 1000000 then return 1 end "
                    "end", 0))
                busy: RedisUnavailable | None = None
                while busy is None and not spin.done():  # until the script has run 50 ms
                    try:
                        with redis_errors():
                            await limited.ping()
                    except RedisUnavailable as exc:
                        busy = exc
                    await asyncio.sleep(0.02)
                assert busy is not None and busy.reply == "BUSY", busy
                await spin
            finally:
                await limited.aclose()

            with pytest.raises(GroupMissing), redis_errors():
                await client.xreadgroup("nope", "c", {"s": ">"})
        finally:
            await client.aclose()
