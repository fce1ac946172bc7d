"""What to do with a partner's answer: one function decides, and a table in the tests checks it.

2xx delivered; 401 refresh the token and retry once; 408/425/429/5xx, timeouts and connection
errors retried with exponential backoff and full jitter, honouring Retry-After; 413 split the
batch; any other 4xx dead-lettered as rejected.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import orjson

from iris.logs import redact, redact_cut

RETRYABLE_STATUSES = frozenset({408, 425, 429})
EXCERPT_CHARS = 160


class Action(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFRESH = "refresh"  # 401: new token, then once more
    SPLIT = "split"  # 413: halve the batch
    REJECT = "reject"  # other 4xx: dead-letter
    PAUSE = "pause"  # the token endpoint refused our credentials: wait, spend no attempt


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    code: str  # the iris_requests_total code label: status, timeout, connection_error, ...
    status: int | None = None
    retry_after: float | None = None
    error: str = ""


def classify(status: int, *, retry_after: str | None = None, body: bytes = b"",
             now: float = 0.0) -> Outcome:
    """The action for an HTTP status; ``now`` (epoch seconds) resolves an HTTP-date Retry-After."""
    code = str(status)
    if 200 <= status < 300:
        return Outcome(Action.DELIVERED, code, status)
    error = f"HTTP {status}: {excerpt(body)}".rstrip(": ")
    if status == 401:
        return Outcome(Action.REFRESH, code, status, error=error)
    if status == 413:
        return Outcome(Action.SPLIT, code, status, error=error)
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome(Action.RETRY, code, status, parse_retry_after(retry_after, now), error)
    return Outcome(Action.REJECT, code, status, error=error)


def failure(code: str, error: str) -> Outcome:
    """A request that got no HTTP answer (timeout, connection error, no token): retry."""
    return Outcome(Action.RETRY, code, None, None, error)


def paused(error: str, seconds: float | None) -> Outcome:
    """No request was made: the destination is paused for ``seconds`` by a token refusal."""
    return Outcome(Action.PAUSE, "auth_paused", None, seconds, error)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``Retry-After``: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Full-jitter exponential delay before attempt ``attempt + 1``; Retry-After wins, capped."""
    if retry_after is not None:
        return min(retry_after, cap)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def excerpt(body: bytes) -> str:
    """A short, single-line, secret-free summary of an error body (JSON fields when there are)."""
    if not body:
        return ""
    text = redact_cut(body[:4096].decode("utf-8", "replace"))
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        parts = [f"{k}={data[k]}" for k in ("error", "code", "status", "message", "detail",
                                             "details", "error_description") if k in data]
        if parts:
            text = " ".join(parts)
    return redact(" ".join(text.split()))[:EXCERPT_CHARS]  # text may hold JSON fields again
