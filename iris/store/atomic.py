"""Write commands that must all happen together, as one Redis command: ``Commands`` collects
them, and the ``RUN_ALL`` Lua script runs them in order, atomically, as a ``MULTI`` would. The
consumer's commit, the settler's flush and ``iris dlq replay`` write this way, each with its
acknowledgement or deletion last.

Why not a ``MULTI``: the consumer's commit of one round holds, at AAM's 10-user batches, a
hundred ``XADD``s; redis-py queues, packs and parses each command of a transaction on its own
(measured: 2.8 ms of client CPU per commit of 100 batches), while one ``EVALSHA`` with the same
words as arguments is packed in C and answered with one reply (1.3 ms). Redis counts the
commands the script runs, so ``INFO commandstats`` shows the same work (and one TYPE per key
an XADD or HSET writes, the first pass below).

What stays as with ``MULTI``: nothing else runs in between, and a write Redis cannot take is
refused whole, nothing written: when Redis refuses writes (OOM, MISCONF, a replica: ``#!lua``
makes Redis check a script up front, Redis 7 and later), when a key an XADD or HSET would write
holds another type, and when the ACL denies a command (the script's first pass). What is better:
where EXEC ran every command it could, so that the inbound XACK went through beside a batch
Redis refused (events lost), the script never acknowledges without the writes before it. A
write with one command longer than a script can pass on (``LUA_WORDS``) is a ``MULTI``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from iris.store.client import RedisClient
from iris.store.errors import redis_errors

# ARGV holds, for each command: the count of the words that follow, the command's name, the
# index in KEYS of its key, then its other arguments. Keys are declared in KEYS (a cluster
# routes by them; every key of one write shares a hash tag). A first pass writes nothing: it
# refuses the whole write when one of its commands could not run, a key that an XADD or HSET
# would write holding another type, or a command the ACL denies, as a MULTI refuses when a
# command cannot be queued (a command that failed halfway would leave the writes before it in
# place, and the retry would write them again). Only then does the second pass write. (The
# keys of XACK, XDEL and HDEL are not typed: one TYPE per key and write cost 0.01 Redis
# commands per event at 10-user batches; such a key is one iris read a moment ago.)
RUN_ALL = """#!lua
local kinds = {XADD = 'stream', HSET = 'hash'}
local typed, allowed = {}, {}
local i = 1
while i <= #ARGV do
  local n, command = tonumber(ARGV[i]), ARGV[i + 1]
  local key, wanted = KEYS[tonumber(ARGV[i + 2])], kinds[ARGV[i + 1]]
  if wanted and not typed[key] then
    typed[key] = true
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'none' and kind ~= wanted then
      return redis.error_reply('WRONGTYPE redis key ' .. key .. ' holds a ' .. kind ..
                               ', not a ' .. wanted)
    end
  end
  if not allowed[command .. ' ' .. key] then
    allowed[command .. ' ' .. key] = true
    if not redis.acl_check_cmd(command, key, unpack(ARGV, i + 3, i + n)) then
      return redis.error_reply("NOPERM The user executing the script can't run this command " ..
                               'or subcommand (' .. command .. ' on ' .. key .. ')')
    end
  end
  i = i + n + 1
end
i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])], unpack(ARGV, i + 3, i + n))
  i = i + n + 1
end
return 1
"""
CHUNK = 1000  # variadic arguments per command: Lua's unpack has a limit (~8,000 values)
LUA_WORDS = 7000  # a longer command (an event of thousands of fields) is written by a MULTI


class Commands:
    """Write commands to run as one (``run``), each on one key."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}  # key → its index in KEYS (1-based, as in Lua)
        self.args: list[str | bytes | int] = []  # RUN_ALL's ARGV
        self.longest = 0  # words of the longest command

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
        self.longest = max(self.longest, len(args) + 2)

    def each(self) -> Iterator[list[str | bytes | int]]:
        """Every command, as its words (name, key, arguments)."""
        keys, args, i = self.keys, self.args, 0
        while i < len(args):
            n = int(args[i])
            yield [args[i + 1], keys[int(args[i + 2]) - 1], *args[i + 3:i + 1 + n]]
            i += n + 1

    def add_each(self, command: str, key: str, head: Sequence[str],
                 items: Sequence[str | bytes]) -> None:
        """``command key *head *items`` for a variadic command (XACK, HDEL), as several
        commands of at most ``CHUNK`` items each."""
        for start in range(0, len(items), CHUNK):
            self.add(command, key, *head, *items[start:start + CHUNK])


class Atomic:
    """Runs ``Commands`` on one Redis (or one cluster node: their keys share a slot)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._script = redis.register_script(RUN_ALL)

    async def run(self, commands: Commands) -> None:
        """Run ``commands`` as one; raises ``RedisUnavailable`` as every Redis call of iris.
        A command longer than a script can pass on (``LUA_WORDS``: the dead letter of an event
        of thousands of fields) makes the write a ``MULTI``, as before scripts."""
        if not commands:
            return
        with redis_errors():
            if commands.longest > LUA_WORDS:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for words in commands.each():
                        pipe.execute_command(*words)
                    await pipe.execute()
                return
            await self._script(keys=commands.keys, args=commands.args)
