"""Whether the Redis user may run every command iris needs, and the dead-letter key is a stream,
checked once at start.

An ACL that forbids one kind of command (``-@scripting``, say) would otherwise show only when
that command first runs, minutes later, as a loop failing in the background. Each command runs
once, harmlessly (on a group that never exists, with ids that match nothing, on a key that is
never written), and every refusal is named in one error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from iris.errors import RedisUnavailable
from iris.store import scripts as stream_scripts
from iris.store.errors import redis_errors, translate
from iris.store.streams import NEW, Streams

PROBE_GROUP = "iris-permission-check"  # never exists: commands on it fail after the ACL check


async def check_permissions(streams: Streams) -> None:
    """Run every kind of command iris needs once, harmlessly, on its own keys; raise
    ``RedisUnavailable`` (NOPERM) naming each one the Redis user may not run."""
    key, group, me = streams.inbound, streams.group, streams.consumer
    probe = streams.keys.permission_probe
    probes = {
        "xreadgroup": ("XREADGROUP", "GROUP", PROBE_GROUP, me, "COUNT", 1, "STREAMS", key,
                       NEW),
        "xadd": ("XADD", key, "NOMKSTREAM", "0-0", "f", "v"),  # refused: id 0-0 (no write)
        "xack": ("XACK", key, group, "0-0"),
        "xdel": ("XDEL", key, "0-0"),
        "xrange": ("XRANGE", key, "+", "-", "COUNT", 1),
        "xpending": ("XPENDING", key, PROBE_GROUP),
        "xautoclaim": ("XAUTOCLAIM", key, PROBE_GROUP, me, 1, "0-0", "COUNT", 1),
        "xclaim": ("XCLAIM", key, PROBE_GROUP, me, 1, "0-0", "JUSTID"),
        "xinfo": ("XINFO", "GROUPS", key),
        "xtrim": ("XTRIM", key, "MINID", "0-0"),
        "xgroup": ("XGROUP", "DELCONSUMER", key, PROBE_GROUP, me),
        "time": ("TIME",),  # the shared rate limit's clock
        "get": ("GET", probe),  # tokens, leases, rates: keys under the stream's name
        "set": ("SET", probe, "v", "XX"),  # XX: sets nothing, the key does not exist
        "del": ("DEL", probe),
        "pexpire": ("PEXPIRE", probe, 1),
        "pttl": ("PTTL", probe),
        "hgetall": ("HGETALL", probe),
        "hdel": ("HDEL", probe, "f"),
    }
    async with streams.redis.pipeline(transaction=False) as pipe:
        for args in probes.values():
            pipe.execute_command(*args)
        with redis_errors():
            replies = await pipe.execute(raise_on_error=False)
    denied = [name for name, reply in zip(probes, replies, strict=True)
              if isinstance(reply, Exception) and _is_noperm(reply)]
    touch = streams.redis.register_script(stream_scripts.TOUCH_OWNED)
    checks: dict[str, Callable[[], Awaitable[object]]] = {
        "evalsha": lambda: touch(keys=[key], args=[PROBE_GROUP, me]),
        "multi": lambda: _multi_ack(streams),  # an atomic write too long for a script
    }
    for name, check in checks.items():
        try:
            with redis_errors():
                await check()
        except RedisUnavailable as exc:
            if exc.reply != "NOPERM":
                raise
            denied.append(name)
    await _check_dead_letter_key(streams)
    if denied:
        raise RedisUnavailable(
            f"the redis user lacks a permission: NOPERM for {', '.join(denied)} (iris needs "
            "+@stream +@scripting +@transaction +@string +@hash +@keyspace +@connection "
            "+time on the keys under its stream's name)", "NOPERM")


async def _check_dead_letter_key(streams: Streams) -> None:
    """The dead-letter stream's key must be a stream, or absent. An XADD to a key of another
    type refuses every write that holds a dead letter (a commit, a settle), which would then
    wait: named at start instead."""
    with redis_errors():
        kind = await streams.redis.type(streams.dead_letters)
    if kind not in ("stream", "none"):
        raise RedisUnavailable(
            f"redis key {streams.dead_letters} holds a {kind}, not a stream: iris writes its "
            "dead letters there (rename or delete that key)", "WRONGTYPE")


async def _multi_ack(streams: Streams) -> None:
    async with streams.redis.pipeline(transaction=True) as pipe:
        pipe.xack(streams.inbound, streams.group, "0-0")  # acknowledges nothing
        await pipe.execute()


def _is_noperm(reply: Exception) -> bool:
    translated = translate(reply)
    return translated is not None and translated.reply == "NOPERM"
