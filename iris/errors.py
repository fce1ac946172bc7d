"""One exception tree for iris.

    IrisError
    ├── ConfigError        bad configuration; carries the key path (``destinations[1].url``)
    ├── EventError         a malformed inbound entry; never retried, dead-lettered
    ├── TokenError         no token; ``permanent`` says whether retrying soon can help
    └── RedisUnavailable   Redis cannot be used now (no connection, or a reply such as OOM,
        │                  READONLY, NOPERM); ``reply`` names it: back off and retry
        └── GroupMissing   NOGROUP: the consumer group vanished; recreate it

Only the stream adapter and the sender catch redis or aiohttp exceptions; everything above them
sees these types.
"""

from __future__ import annotations


class IrisError(Exception):
    """Base of every error iris raises on purpose."""


class ConfigError(IrisError):
    """A configuration problem at ``path``; ``str()`` is the one line shown to the operator."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class EventError(IrisError):
    """An inbound entry that can never be delivered as it is (missing field, bad status, bad ts)."""


class TokenError(IrisError):
    """The token endpoint refused or failed; ``permanent`` errors are not worth retrying soon.

    ``error`` is the RFC 6749 §5.2 code when the endpoint gave one; ``retry_in`` is how long a
    refused destination stays paused (seconds), when it is.
    """

    def __init__(self, message: str, *, permanent: bool = False, status: int | None = None,
                 error: str | None = None, retry_in: float | None = None) -> None:
        self.permanent = permanent
        self.status = status
        self.error = error
        self.retry_in = retry_in
        super().__init__(message)


class RedisUnavailable(IrisError):
    """Redis cannot be used now: no connection, no answer in time, or an error reply that says
    "not now" (OOM, READONLY, LOADING, BUSY, MISCONF, NOPERM, ...). Back off and retry.

    ``reply`` is the Redis error code, or ``connection``/``timeout``/``other`` (the label of
    ``iris_redis_errors_total``); ``str()`` is the reason ``/readyz`` shows.
    """

    def __init__(self, reason: str, reply: str = "connection") -> None:
        self.reply = reply
        super().__init__(reason)


class GroupMissing(RedisUnavailable):
    """NOGROUP: the consumer group is gone (a Redis restart without persistence, or an
    operator's XGROUP DESTROY); the next read recreates it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "NOGROUP")
