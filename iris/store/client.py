"""The redis-py client iris talks through: one Redis (a bounded pool that waits) or a Redis
Cluster (redis-py's cluster client), chosen by ``redis.cluster``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.utils import HIREDIS_AVAILABLE

from iris.config.model import RedisSettings
from iris.errors import ConfigError

RedisClient: TypeAlias = aioredis.Redis | RedisCluster  # what every Redis-talking class is given

__all__ = ["RedisClient", "StreamsCluster", "check_url_options", "connect", "connect_cluster"]

_WANTED = {"float": "a number", "int": "a whole number"}  # what redis-py's option parsers read
_IRIS_SETS = {  # URL options that would override what connect() passes, and what to do instead
    "max_connections": "use redis.max_connections",
    "timeout": "leave it out (a task waits for a free connection as long as it takes)",
    "decode_responses": "leave it out (iris reads text)",
    "encoding": "leave it out (iris reads UTF-8)",
    "encoding_errors": "leave it out (bytes that are not UTF-8 reach the event check)",
    "legacy_responses": "leave it out (iris reads redis-py's usual reply shapes)",
}


def connect(config: RedisSettings) -> RedisClient:
    """A client whose socket timeout outlasts the blocking read, over a bounded pool that waits.

    redis-py's own retry is off on purpose: it re-sends a command whose reply was lost, and a
    re-sent commit writes its batches twice. Every caller retries explicitly instead, with
    backoff, and re-reads its pending list, which is exact. The pool never raises for being
    full (redis-py's default pool does, at 100 connections): a task waits for a connection.
    Each partition beyond the first adds two connections, for its two blocking reads.
    With ``redis.cluster``, redis-py's cluster client (``connect_cluster``). Raises
    ``ConfigError`` for a URL option redis-py cannot read (``check_url_options``).
    """
    check_url_options(config)
    if config.redis.cluster:
        return connect_cluster(config)
    pool = aioredis.BlockingConnectionPool.from_url(
        config.redis.url,
        max_connections=config.redis.max_connections + 2 * (config.stream.partitions - 1),
        timeout=None,
        decode_responses=True,
        encoding_errors="surrogateescape",  # invalid UTF-8 reaches the parser, which refuses it
        socket_timeout=config.redis_socket_timeout,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), retries=0),
        health_check_interval=30,
    )
    if HIREDIS_AVAILABLE:
        pool.connection_class = hiredis_packing(pool.connection_class)
    return aioredis.Redis.from_pool(pool)


def check_url_options(config: RedisSettings) -> None:
    """Read the query options of ``redis.url`` as redis-py reads them at connect
    (``parse_url``: the first value of each, with its table of typed options), where an option
    overrides what iris passes.

    Raises ``ConfigError`` for an option whose value redis-py cannot read
    (``?socket_timeout=abc``: the first command would fail with a traceback), one iris sets
    itself (``?max_connections=``, ``?decode_responses=``...), and options on a cluster's later
    seed URLs other than the first's (redis-py takes only their host and port: the same
    options written on every seed are fine). No value is quoted: a URL may hold a password."""
    first, *others = (urlsplit(url).query for url in config.redis.urls or [""])
    if any(query not in ("", first) for query in others):
        raise ConfigError("redis.url", "a seed URL after the first has other options than the "
                                       "first, and redis-py reads only the first's")
    for name, values in parse_qs(first).items():
        if name in _IRIS_SETS:
            raise ConfigError("redis.url", f"?{name}= is iris's to set: {_IRIS_SETS[name]}")
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            if parser is not None:
                parser(values[0])
        except (TypeError, ValueError):
            wanted = _WANTED.get(getattr(parser, "__name__", ""), "a value redis-py reads")
            raise ConfigError("redis.url", f"?{name}= must be {wanted}") from None


def hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (plain, TLS or Unix socket) packing commands with hiredis's C
    encoder, as redis-py's synchronous client does (its asyncio client packs in Python: at
    AAM's 10-user batches, a tenth of a worker's CPU went to packing XADDs). The bytes on the
    wire are the same. redis-py's own encoder packs the rest: a command name of two words
    (``XGROUP CREATE``), a type hiredis refuses, and text hiredis cannot encode (invalid UTF-8
    kept as surrogates, e.g. in a dead letter), with the pool's error handler."""
    import hiredis  # only called where redis-py found it (HIREDIS_AVAILABLE)

    pack = hiredis.pack_command

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " not in args[0]:
            try:
                return [pack(args)]
            except (UnicodeEncodeError, TypeError):
                pass
        return connection_class.pack_command(self, *args)  # type: ignore[no-any-return]

    return type(f"Hiredis{connection_class.__name__}", (connection_class,),
                {"pack_command": pack_command})


class ClusterScript(AsyncScript):  # type: ignore[misc]  # redis-py is untyped here
    """A Lua script on a cluster that a promoted replica does not know yet.

    Redis does not replicate SCRIPT LOAD (redis/redis#14314): after a failover the new master
    answers NOSCRIPT. redis-py then loads the script on the primaries it knows, which may not
    include the new master yet, and its second EVALSHA fails the same way. Then the script runs
    once by its text (EVAL), which the node that serves the key caches."""

    async def __call__(self, keys: Sequence[Any] | None = None,
                       args: Sequence[Any] | None = None, client: Any = None) -> Any:
        try:
            return await super().__call__(keys, args, client)
        except NoScriptError:
            keys = keys or []
            return await (client or self.registered_client).eval(
                self.script, len(keys), *keys, *(args or []))


class StreamsCluster(RedisCluster):  # type: ignore[misc]  # redis-py is untyped here
    """redis-py's cluster client, reading the keys of XREADGROUP and XREAD itself, and
    running Lua scripts a promoted replica does not know yet (``ClusterScript``).

    redis-py asks the server for the keys (COMMAND GETKEYS) before every such read, to find the
    slot: one more round trip per read, a third of all iris's commands on a cluster (measured
    by ``make bench``'s scale-out mode). Their keys are the first half of what follows
    ``STREAMS``."""

    def register_script(self, script: str) -> ClusterScript:
        return ClusterScript(self, script)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("XREADGROUP", "XREAD"):
            words = [arg if isinstance(arg, bytes) else str(arg).encode() for arg in args]
            if b"STREAMS" in words:
                named = args[words.index(b"STREAMS") + 1:]
                slots = {self.keyslot(key) for key in named[:len(named) // 2]}
                if len(slots) == 1:
                    return int(slots.pop())
        return int(await super()._determine_slot(command, *args))


def connect_cluster(config: RedisSettings) -> RedisCluster:
    """redis-py's cluster client, seeded with every URL of ``redis.url`` (TLS and password
    as written in them). It follows MOVED and ASK itself; its retry is off, as ``connect``'s:
    a connection lost during a failover is each caller's to retry, after the client has read
    the new topology. A MOVED reply only moves its slot in the client's map: by default
    every fifth MOVED made redis-py close every connection to every node, cutting short the
    commands of every partition, so resharding one partition stalled them all. Its per-node
    pool raises instead of waiting when full, so each node gets ``redis.max_connections``
    plus room for two blocking reads per partition beyond the first, or 64, whichever is
    more."""
    first, *others = config.redis.urls
    per_node = max(64, config.redis.max_connections + 2 * (config.stream.partitions - 1))
    seeds = [ClusterNode(part.hostname or "127.0.0.1", part.port or 6379)
             for part in map(urlsplit, others)]
    return StreamsCluster.from_url(
        first,
        startup_nodes=seeds or None,
        max_connections=per_node,
        decode_responses=True,
        encoding_errors="surrogateescape",
        socket_timeout=config.redis_socket_timeout,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), retries=0),
        reinitialize_steps=0,
        health_check_interval=30,
    )
