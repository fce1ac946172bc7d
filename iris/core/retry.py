"""What to do with a partner's answer: one function decides, and a table in the tests checks it.

2xx delivered; 3xx dead-lettered as redirected (a redirect is never followed for a batch POST:
clients turn 301/302/303 into a body-less GET, and a 307/308 may lead to another origin or to
plain http); 401 refresh the token and retry; 408/425/429/5xx, timeouts and connection errors
retried with exponential backoff and full jitter, Retry-After lengthening (never shortening)
the wait; 413 split the batch; any other 4xx dead-lettered as rejected.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import orjson

from iris.core.logs import redact, redact_cut, without_secrets

RETRYABLE_STATUSES = frozenset({408, 425, 429})
EXCERPT_CHARS = 160


class Action(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFRESH = "refresh"  # 401: new token, then once more
    SPLIT = "split"  # 413: halve the batch
    REJECT = "reject"  # other 4xx: dead-letter
    REDIRECTED = "redirected"  # 3xx: dead-letter (replay once the url is fixed)
    PAUSE = "pause"  # the token endpoint refused our credentials: wait, spend no attempt


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    code: str  # the iris_requests_total code label: status, timeout, connection_error, ...
    status: int | None = None
    retry_after: float | None = None
    error: str = ""
    blames_token: bool = False  # a 401 that names the token (or nothing else) as its cause


def classify(status: int, *, retry_after: str | None = None, body: bytes = b"",
             now: float = 0.0, location: str | None = None,
             authenticate: str | None = None) -> Outcome:
    """The action for an HTTP status; ``now`` (epoch seconds) resolves an HTTP-date Retry-After;
    ``location`` is a redirect's target, ``authenticate`` a 401's WWW-Authenticate."""
    code = str(status)
    if 200 <= status < 300:
        return Outcome(Action.DELIVERED, code, status)
    if 300 <= status < 400:
        target = without_secrets(location) if location else "nowhere (no Location)"
        return Outcome(Action.REDIRECTED, code, status, error=(
            f"HTTP {status} redirect to {target}: redirects are not followed for a batch POST; "
            "point the destination's url at the endpoint itself"))
    error = f"HTTP {status}: {excerpt(body)}".rstrip(": ")
    if status == 401:
        return Outcome(Action.REFRESH, code, status, error=error,
                       blames_token=_blames_token(body, authenticate))
    if status == 413:
        return Outcome(Action.SPLIT, code, status, error=error)
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome(Action.RETRY, code, status, parse_retry_after(retry_after, now), error)
    return Outcome(Action.REJECT, code, status, error=error)


def _blames_token(body: bytes, authenticate: str | None) -> bool:
    """RFC 6750 §3.1: a 401 is about the token unless it names another error (a partner's
    ``invalid_signature``, say), in WWW-Authenticate or in a JSON body."""
    named = re.search(r'error="?([\w.-]+)', authenticate or "")
    error = named.group(1) if named else None
    if error is None:
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        found = data.get("error") if isinstance(data, dict) else None
        error = found if isinstance(found, str) else None
    return error in (None, "invalid_token")


def failure(code: str, error: str) -> Outcome:
    """A request that got no HTTP answer (timeout, connection error, no token): retry."""
    return Outcome(Action.RETRY, code, None, None, error)


def paused(error: str, seconds: float | None) -> Outcome:
    """No request was made: the destination is paused for ``seconds`` by a token refusal."""
    return Outcome(Action.PAUSE, "auth_paused", None, seconds, error)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``Retry-After``: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
    None when it asks for no wait at all (``0``, a date that has passed) or is not valid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value) or None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    wait = when.timestamp() - now
    return wait if wait > 0 else None


MAX_DOUBLINGS = 64  # 2**64 times any base is past any cap, and a float holds it


def doubling(base: float, step: int, cap: float) -> float:
    """``base`` doubled ``step`` times, at most ``cap``: the one exponential schedule of iris's
    waits. The exponent is bounded, so an outage of any length never overflows."""
    return min(cap, base * 2.0 ** min(max(step, 0), MAX_DOUBLINGS))


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None,
            jitter: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before attempt ``attempt + 1``: full-jitter exponential backoff
    (``jitter(0, top)`` draws it), which a Retry-After may lengthen but never shorten; at most
    ``cap``."""
    delay = jitter(0, doubling(base, attempt - 1, cap))
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return min(delay, cap)


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
