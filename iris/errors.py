"""One exception tree for iris.

    IrisError
    ├── ConfigError        bad configuration; carries the key path (``destinations[1].url``)
    ├── EventError         a malformed inbound entry; never retried, dead-lettered
    ├── TokenError         no token; ``permanent`` says whether retrying soon can help
    └── RedisUnavailable   Redis refused, reset or timed out; back off and retry

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
    """Redis did not answer (refused, reset, timed out, loading): back off and retry."""
