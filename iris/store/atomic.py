"""Write commands that must all happen together, as one Redis command: ``Commands`` collects
them, and the ``RUN_ALL`` Lua script runs them in order, atomically, as a ``MULTI`` would. The
consumer's commit, the settler's flush and ``iris dlq replay`` write this way, each with its
acknowledgement or deletion last.

Why not a ``MULTI``: the consumer's commit of one round holds, at AAM's 10-user batches, a
hundred ``XADD``s; redis-py queues, packs and parses each command of a transaction on its own
(measured: 2.8 ms of client CPU per commit of 100 batches), while one ``EVALSHA`` with the same
words as arguments is packed in C and answered with one reply (1.3 ms). Redis counts the
commands the script runs, so ``INFO commandstats`` shows the same work.

What stays as with ``MULTI``: nothing else runs in between; a Redis that refuses writes (OOM,
MISCONF, a replica) refuses the whole script before it runs (``#!lua``: a script with flags is
checked up front, Redis 7 and later); and a command that fails on its own (a key of another
type) is not undone. Unlike ``MULTI``, the commands after it do not run either: the write that
must come last (the inbound ``XACK``) then never happens without the writes before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from iris.store.client import RedisClient
from iris.store.errors import redis_errors

# ARGV holds, for each command: the count of the words that follow, the command's name, the
# index in KEYS of its key, then its other arguments. Keys are declared in KEYS (a cluster
# routes by them; every key of one commit shares a hash tag).
RUN_ALL = """#!lua
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])], unpack(ARGV, i + 3, i + n))
  i = i + n + 1
end
return 1
"""
CHUNK = 1000  # variadic arguments per command: Lua's unpack has a limit (~8,000 values)


class Commands:
    """Write commands to run as one (``run``), each on one key."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}  # key → its index in KEYS (1-based, as in Lua)
        self.args: list[str | bytes | int] = []  # RUN_ALL's ARGV

    def __bool__(self) -> bool:
        return bool(self.args)

    @property
    def keys(self) -> list[str]:
        """RUN_ALL's KEYS: every key the commands write, once each."""
        return list(self._index)

    def add(self, command: str, key: str, *args: str | bytes | int) -> None:
        """One command on ``key``."""
        index = self._index.setdefault(key, len(self._index) + 1)
        self.args += (len(args) + 2, command, index, *args)

    def add_each(self, command: str, key: str, head: Sequence[str],
                 items: Sequence[str | bytes]) -> None:
        """``command key *head *items`` for a variadic command (XACK, HDEL), as several
        commands of at most ``CHUNK`` items each."""
        for start in range(0, len(items), CHUNK):
            self.add(command, key, *head, *items[start:start + CHUNK])


class Atomic:
    """Runs ``Commands`` on one Redis (or one cluster node: their keys share a slot)."""

    def __init__(self, redis: RedisClient) -> None:
        self._script = redis.register_script(RUN_ALL)

    async def run(self, commands: Commands) -> None:
        """Run ``commands`` as one; raises ``RedisUnavailable`` as every Redis call of iris."""
        if not commands:
            return
        with redis_errors():
            await self._script(keys=commands.keys, args=commands.args)
