"""The redis-py client iris talks through: one Redis (a bounded pool that waits) or a Redis
Cluster (redis-py's cluster client), chosen by ``redis.cluster``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
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
_CHOICES = {"protocol": (2, 3)}  # values redis-py refuses only when it connects
_TEXT_OPTIONS = {"password", "username", "client_name", "lib_name", "lib_version", "ssl_ca_certs",
                 "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_password",
                 "ssl_cert_reqs", "ssl_ciphers"}  # options a URL gives as text, untyped
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
    With ``redis.cluster``, redis-py's cluster client (``connect_cluster``). The URL's options
    are checked when a command loads its config (``check_url_options``, ``cli.shell``).
    """
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
    (``parse_url``: the first value of each, typed by its table), where an option overrides
    what iris passes and goes to the connection's constructor.

    Raises ``ConfigError`` for an option whose value redis-py cannot read
    (``?socket_timeout=abc``) or refuses (``?protocol=9``), one its connection for the URL's
    scheme does not take (``?ssl_cert_reqs=`` on ``redis://``, a misspelt name): the first
    command would fail with a traceback, or retry for ever. Also for one iris sets itself
    (``?max_connections=``...), and for options on a cluster's later seed URLs other than the
    first's (redis-py takes only their host and port). No value is quoted: a URL may hold a
    password."""
    seeds = [urlsplit(url) for url in config.redis.urls or [""]]
    scheme = seeds[0].scheme
    first, *others = (parse_qs(seed.query) for seed in seeds)
    takes = _options_taken(scheme)
    for name, values in first.items():
        if name in _IRIS_SETS:
            raise ConfigError("redis.url", f"?{name}= is iris's to set: {_IRIS_SETS[name]}")
        if name not in takes:
            tls = (" (TLS options need rediss://)"
                   if name.startswith("ssl") and scheme != "rediss" else "")
            raise ConfigError("redis.url", f"?{name}= is not an option redis-py takes for a "
                                           f"{scheme}:// URL{tls}")
        try:
            value = _value(name, values[0])
        except (TypeError, ValueError):
            parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
            wanted = _WANTED.get(getattr(parser, "__name__", ""), "a value redis-py reads")
            raise ConfigError("redis.url", f"?{name}= must be {wanted}") from None
        if name in _CHOICES and value not in _CHOICES[name]:
            choices = " or ".join(map(str, _CHOICES[name]))
            raise ConfigError("redis.url", f"?{name}= must be {choices}")
    if any(query and _typed(query) != _typed(first) for query in others):
        raise ConfigError("redis.url", "a seed URL after the first has other options than the "
                                       "first, and redis-py reads only the first's")


def _options_taken(scheme: str) -> set[str]:
    """The query options a URL of ``scheme`` may carry: those redis-py reads from a URL (its
    typed table, and text such as ``ssl_ca_certs``) that its connection class for the scheme
    takes as arguments."""
    connection = {"rediss": SSLConnection, "unix": UnixDomainSocketConnection}.get(scheme,
                                                                                  Connection)
    arguments = {name for klass in connection.__mro__ if "__init__" in vars(klass)
                 for name in inspect.signature(vars(klass)["__init__"]).parameters}
    return arguments & (set(URL_QUERY_ARGUMENT_PARSERS) | _TEXT_OPTIONS)


def _value(name: str, text: str) -> object:
    """An option's value as redis-py reads it; raises ``ValueError`` or ``TypeError`` where its
    parser refuses it."""
    parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
    return parser(text) if parser is not None else text


def _typed(query: dict[str, list[str]]) -> dict[str, object]:
    """A query's options as redis-py reads them (``9`` and ``9.0`` are one timeout); text where
    its parser refuses the value."""
    typed: dict[str, object] = {}
    for name, values in query.items():
        try:
            typed[name] = _value(name, values[0])
        except (TypeError, ValueError):
            typed[name] = values[0]
    return typed


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
