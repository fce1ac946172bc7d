"""Tokens shared by every replica, kept in Redis beside the streams.

Keys, all under ``<prefix>:<destination>``::

    :<fp>:token   hash {fence, data}; expires with the access token
    :<fp>:lock    the fence number of the one process now asking for a token (a lease)
    :<fp>:fence   a counter: every lock holder gets a larger number than the last
    :<fp>:pause   why and until when a refusal pauses the destination
    :refresh      hash {digest, seed, data}; never expires

``fp`` fingerprints the auth settings, so a changed secret, URL or scope never reuses a token
obtained under the old ones. A write carries its fence number and is refused if a later lock
holder already wrote (fencing: a process whose lease ran out cannot overwrite a newer token). A
rotated refresh token replaces the stored one only if the stored one is still the one that was
spent (compare-and-set), and is never given an expiry: losing it means a person logs in again.
With an encryption key, every token is encrypted at rest (Fernet). Pauses are judged by the
clock the store is given (``time.time`` unless a test passes its own); the keys' expiries in
Redis stay in Redis's time.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import orjson

from iris.store.client import RedisClient
from iris.store.errors import redis_errors
from iris.store.keys import TokenKeys

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

log = logging.getLogger(__name__)

PLAIN, SEALED = "plain:", "fernet:"  # a record says how it was written
FENCE_TTL_MS = 7 * 24 * 3600 * 1000
MAX_PAUSE = 900.0

ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
local stored = tonumber(redis.call('HGET', KEYS[3], 'fence') or '0')
if fence <= stored then  -- the counter expired while a long-lived token stayed stored
  fence = stored + 1
  redis.call('SET', KEYS[2], fence)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[1])
return fence
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
SAVE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if current > tonumber(ARGV[1]) then return 0 end
local at = tonumber(ARGV[3])
if not at or at <= 0 or at > 1e14 then return redis.error_reply('bad expiry ' .. ARGV[3]) end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], at)
if ARGV[4] ~= '' then
  local digest = redis.call('HGET', KEYS[2], 'digest')
  local seed = redis.call('HGET', KEYS[2], 'seed')
  if digest and digest ~= ARGV[5] and seed == ARGV[7] then return -1 end
  redis.call('HSET', KEYS[2], 'digest', ARGV[6], 'data', ARGV[4], 'seed', ARGV[7])
end
return 1
"""
INVALIDATE = """
if redis.call('HGET', KEYS[1], 'fence') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
DROP_REFRESH = """
if redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A refusal's pause, shared by every replica: one that runs is joined (replicas refused at
# the same moment make one pause, not one each); otherwise the count of pauses in a row goes
# up, and the pause lasts ARGV[2] doubled (count - 1) times, at most ARGV[3] (as
# core.retry.doubling). The record is kept twice as long, to remember the count.
PAUSE = """
local raw = redis.call('GET', KEYS[1])
local now, base, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local count = 1
local ok, pause = pcall(cjson.decode, raw or '')
if ok and type(pause) == 'table' and tonumber(pause['until']) and tonumber(pause['count']) then
  if tonumber(pause['until']) > now then return {0, raw} end
  count = tonumber(pause['count']) + 1
end
local seconds = math.min(base * 2 ^ math.min(count - 1, 30), most)
raw = cjson.encode({['until'] = now + seconds, count = count, error = ARGV[4]})
redis.call('SET', KEYS[1], raw, 'PX', math.floor(seconds * 2000))
return {1, raw}
"""
# The pause's record, dropped (1), unless it is for ARGV[1] (0: kept).
CLEAR_PAUSE = """
local ok, pause = pcall(cjson.decode, redis.call('GET', KEYS[1]) or '')
if ok and type(pause) == 'table' and pause['error'] == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
# The record of a pause for ARGV[1] that had ended by ARGV[2], dropped: its streak is over
# (1). A pause for it that ended later, or runs: -1. No such record: 0.
END_PAUSE = """
local ok, pause = pcall(cjson.decode, redis.call('GET', KEYS[1]) or '')
if not ok or type(pause) ~= 'table' or pause['error'] ~= ARGV[1] then return 0 end
if not (tonumber(pause['until']) <= tonumber(ARGV[2])) then return -1 end
return redis.call('DEL', KEYS[1])
"""


def _fernet(key: str) -> Fernet:
    from cryptography.fernet import Fernet  # only where tokens are encrypted

    return Fernet(key)


def digest(secret: str) -> str:
    """What the store compares refresh tokens by: never the token itself."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class StoredToken:
    access_token: str
    token_type: str
    expires_at: float  # epoch seconds
    refresh_at: float  # epoch seconds: whoever sees this passed fetches the next one
    obtained_at: float  # epoch seconds: when the token endpoint's answer arrived
    obtained_by: str  # consumer name of the process that asked the endpoint
    fence: int = 0

    def __repr__(self) -> str:
        return f"StoredToken(fence={self.fence}, expires_at={self.expires_at:.0f})"


@dataclass(frozen=True, slots=True)
class StoredRefresh:
    token: str
    digest: str
    seed: str  # which configured (or logged-in) refresh token this one descends from

    def __repr__(self) -> str:
        return f"StoredRefresh(seed={self.seed!r})"


@dataclass(frozen=True, slots=True)
class Pause:
    until: float  # epoch seconds
    count: int  # consecutive refusals: each pause doubles, up to MAX_PAUSE
    error: str


class TokenStore:
    def __init__(self, redis: RedisClient, prefix: str, destination: str, fingerprint: str,
                 *, encryption_key: str | None = None, lease: float = 120.0,
                 clock: Callable[[], float] = time.time, cluster: bool = False) -> None:
        self._redis = redis
        self._clock = clock  # epoch seconds: when a pause ends
        keys = TokenKeys.of(prefix, destination, fingerprint, cluster)
        self.token_key = keys.token
        self._lock_key = keys.lock
        self._fence_key = keys.fence
        self._pause_key = keys.pause
        self.refresh_key = keys.refresh
        self._cipher = _fernet(encryption_key) if encryption_key else None
        self._lease_ms = int(lease * 1000)
        self._acquire = redis.register_script(ACQUIRE)
        self._release = redis.register_script(RELEASE)
        self._save = redis.register_script(SAVE)
        self._invalidate = redis.register_script(INVALIDATE)
        self._drop_refresh = redis.register_script(DROP_REFRESH)
        self._pause = redis.register_script(PAUSE)
        self._clear_pause = redis.register_script(CLEAR_PAUSE)
        self._end_pause = redis.register_script(END_PAUSE)

    # -- access tokens ------------------------------------------------------------------------

    async def load(self) -> StoredToken | None:
        with redis_errors():
            fields = await self._redis.hgetall(self.token_key)
        data = self._open(fields.get("data"), self.token_key)
        if data is None:
            return None
        try:
            return StoredToken(**orjson.loads(data), fence=int(fields["fence"]))
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed token record at %s", self.token_key)
            return None

    async def save(self, token: StoredToken, rotated: tuple[str, str, str] | None = None) -> int:
        """Store ``token`` under its fence; ``rotated`` = (new refresh token, digest of the one
        spent, seed). 1 saved; 0 a later lock holder wrote first (nothing written); -1 the token
        was saved but the stored refresh token is no longer the one spent, so it was kept."""
        record = asdict(token)
        del record["fence"]
        new_refresh = spent = seed = ""
        if rotated is not None:
            new_refresh, spent, seed = rotated
        with redis_errors():
            return int(await self._save(
                keys=[self.token_key, self.refresh_key],
                args=[token.fence, self._seal(orjson.dumps(record).decode()),
                      int(token.expires_at * 1000),
                      self._seal(new_refresh) if new_refresh else "", spent,
                      digest(new_refresh) if new_refresh else "", seed]))

    async def invalidate(self, fence: int) -> None:
        """Drop the token a partner refused, unless a newer one replaced it already."""
        with redis_errors():
            await self._invalidate(keys=[self.token_key], args=[fence])

    # -- the lock -------------------------------------------------------------------------------

    async def acquire(self) -> int | None:
        """A fence number if this process may ask the endpoint now, else None."""
        with redis_errors():
            fence = int(await self._acquire(
                keys=[self._lock_key, self._fence_key, self.token_key],
                args=[self._lease_ms, FENCE_TTL_MS]))
        return fence or None

    async def release(self, fence: int) -> None:
        with redis_errors():
            await self._release(keys=[self._lock_key], args=[fence])

    # -- refresh tokens -------------------------------------------------------------------------

    async def refresh_token(self) -> StoredRefresh | None:
        with redis_errors():
            fields = await self._redis.hgetall(self.refresh_key)
        token = self._open(fields.get("data"), self.refresh_key)
        if token is None:
            return None
        return StoredRefresh(token, fields.get("digest", ""), fields.get("seed", ""))

    async def put_refresh_token(self, token: str, seed: str) -> None:
        """A person's login: replaces whatever was stored, unconditionally."""
        with redis_errors():
            await self._redis.hset(self.refresh_key, mapping={
                "digest": digest(token), "data": self._seal(token), "seed": seed})

    async def drop_refresh_token(self, spent_digest: str) -> None:
        """Forget a refresh token the endpoint refused (only if it is still the stored one)."""
        with redis_errors():
            await self._drop_refresh(keys=[self.refresh_key], args=[spent_digest])

    # -- refusals -------------------------------------------------------------------------------

    async def pause(self, base: float, error: str) -> tuple[Pause, bool]:
        """Pause the destination for every replica: ``base`` seconds, doubled at each refusal
        in a row, at most ``MAX_PAUSE``. A pause that runs already is joined, not lengthened:
        (that pause, False); else (the new one, True). Raises ``RedisUnavailable``."""
        with redis_errors():
            created, raw = await self._pause(keys=[self._pause_key],
                                             args=[self._clock(), base, MAX_PAUSE, error])
        return Pause(**orjson.loads(raw)), bool(created)

    async def paused(self, *, include_expired: bool = False) -> Pause | None:
        with redis_errors():
            raw = await self._redis.get(self._pause_key)
        if raw is None:
            return None
        try:
            pause = Pause(**orjson.loads(raw))
        except (ValueError, TypeError):
            return None
        return pause if include_expired or pause.until > self._clock() else None

    async def clear_pause(self, *, keep: str = "") -> bool:
        """Lift the pause and forget its count, in one step: False (kept) if it is a pause
        for ``keep``. Raises ``RedisUnavailable``."""
        with redis_errors():
            return bool(await self._clear_pause(keys=[self._pause_key], args=[keep]))

    async def end_pause(self, error: str, ended_by: float) -> bool:
        """Forget the record of a pause for ``error`` (and its count) if that pause had ended
        by ``ended_by`` (epoch seconds). True when no record for ``error`` is left; False
        while one that ended later, or runs, stays. A record for another error stays.
        Raises ``RedisUnavailable``."""
        with redis_errors():
            return int(await self._end_pause(keys=[self._pause_key],
                                             args=[error, ended_by])) >= 0

    # -- encryption at rest ---------------------------------------------------------------------

    def _seal(self, text: str) -> str:
        if self._cipher is None:
            return PLAIN + text
        return SEALED + self._cipher.encrypt(text.encode()).decode()

    def _open(self, text: str | None, key: str) -> str | None:
        if not text:
            return None
        if text.startswith(PLAIN) and self._cipher is None:
            return text.removeprefix(PLAIN)
        if text.startswith(SEALED) and self._cipher is not None:
            from cryptography.fernet import InvalidToken

            try:
                return self._cipher.decrypt(text.removeprefix(SEALED).encode()).decode()
            except InvalidToken:
                pass
        log.error("cannot read %s: it was stored %s, and token_store.encryption_key is %s; "
                  "ignoring it", key, "encrypted" if text.startswith(SEALED) else "in clear",
                  "set" if self._cipher is not None else "not set")
        return None
