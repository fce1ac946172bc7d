"""iris.core.retry: what to do with a partner's answer, checked by a table."""

from __future__ import annotations

from email.utils import formatdate

import orjson
import pytest

from iris.core.logs import register_secret
from iris.core.retry import (
    EXCERPT_CHARS,
    Action,
    Outcome,
    backoff,
    classify,
    excerpt,
    failure,
    parse_retry_after,
)

NOW = 1_700_000_000.0

CLASSIFY_TABLE = [
    (200, Action.DELIVERED),
    (301, Action.REDIRECTED),
    (302, Action.REDIRECTED),
    (303, Action.REDIRECTED),
    (307, Action.REDIRECTED),
    (308, Action.REDIRECTED),
    (201, Action.DELIVERED),
    (204, Action.DELIVERED),
    (400, Action.REJECT),
    (401, Action.REFRESH),
    (403, Action.REJECT),
    (404, Action.REJECT),
    (408, Action.RETRY),
    (409, Action.REJECT),
    (413, Action.SPLIT),
    (422, Action.REJECT),
    (425, Action.RETRY),
    (429, Action.RETRY),
    (500, Action.RETRY),
    (502, Action.RETRY),
    (503, Action.RETRY),
    (504, Action.RETRY),
]


@pytest.mark.parametrize(("status", "action"), CLASSIFY_TABLE)
def test_classify(status: int, action: Action) -> None:
    outcome = classify(status)
    assert outcome.action is action
    assert outcome.code == str(status)
    assert outcome.status == status
    assert outcome.retry_after is None


@pytest.mark.parametrize(("status", "action"), CLASSIFY_TABLE)
def test_classify_with_retry_after(status: int, action: Action) -> None:
    outcome = classify(status, retry_after="7", now=NOW)
    assert outcome.action is action
    assert outcome.retry_after == (7.0 if action is Action.RETRY else None)


def test_a_redirect_names_its_target_without_secrets() -> None:
    outcome = classify(308, location="http://user:pw@new.example:8080/aam?token=s3cret#x")
    assert outcome.action is Action.REDIRECTED and outcome.code == "308"
    assert outcome.error.startswith("HTTP 308 redirect to http://new.example:8080/aam: ")
    assert "s3cret" not in outcome.error and "pw" not in outcome.error
    assert "nowhere" in classify(302).error


def test_delivered_has_no_error() -> None:
    assert classify(200, body=b'{"ok": true}') == Outcome(Action.DELIVERED, "200", 200)


def test_error_text_names_the_status_and_the_body() -> None:
    assert classify(500).error == "HTTP 500"
    assert classify(400, body=b"bad  payload\n").error == "HTTP 400: bad payload"
    body = b'{"error": "invalid_token"}'
    assert classify(401, body=body).error == "HTTP 401: error=invalid_token"
    assert classify(413, body=b"too big").error == "HTTP 413: too big"
    assert classify(503, body=b"down").error == "HTTP 503: down"


@pytest.mark.parametrize(
    ("code", "error"),
    [("timeout", "no answer within 30 s"), ("connection_error", "connection refused")],
)
def test_failure_without_an_answer_is_retried(code: str, error: str) -> None:
    assert failure(code, error) == Outcome(Action.RETRY, code, None, None, error)


# --------------------------------------------------------------------------- Retry-After

def test_retry_after_seconds() -> None:
    assert parse_retry_after("2", NOW) == 2.0
    assert parse_retry_after(" 120 ", NOW) == 120.0
    assert parse_retry_after("0", NOW) is None  # "no wait": the normal backoff applies


def test_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after(formatdate(NOW + 3, usegmt=True), NOW) == 3.0


def test_retry_after_http_date_in_the_past() -> None:
    assert parse_retry_after(formatdate(NOW - 3600, usegmt=True), NOW) is None


def test_retry_after_http_date_through_classify() -> None:
    outcome = classify(503, retry_after=formatdate(NOW + 3, usegmt=True), now=NOW)
    assert outcome.retry_after == 3.0


@pytest.mark.parametrize("value", [None, "", "soon", "-1", "1.5", "Wed, 99 Foo 2016 nonsense",
                                   "0"])
def test_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# --------------------------------------------------------------------------- backoff

@pytest.mark.parametrize(("attempt", "base", "cap"), [(1, 0.5, 60), (2, 0.5, 60), (5, 0.5, 60),
                                                      (10, 0.5, 60), (30, 0.5, 60), (3, 2, 5)])
def test_backoff_is_full_jitter_within_the_exponential_bound(
    attempt: int, base: float, cap: float
) -> None:
    bound = min(cap, base * 2 ** (attempt - 1))
    draws = [backoff(attempt, base, cap) for _ in range(2000)]
    assert all(0 <= d <= bound for d in draws)
    assert min(draws) < bound * 0.05  # full jitter: the whole range is used
    assert max(draws) > bound * 0.95


def test_backoff_honours_retry_after_capped() -> None:
    assert backoff(1, 0.5, 60, retry_after=5.0) == 5.0
    assert backoff(1, 0.5, 60, retry_after=3600.0) == 60.0


# (Retry-After header, attempt) → the wait is the normal backoff's or longer, never shorter
RETRY_AFTER_TABLE = [
    ("0", 9), (formatdate(NOW - 3600, usegmt=True), 9), ("soon", 9), ("-5", 9), ("", 9),
    ("0", 1), ("1", 9), (formatdate(NOW + 2, usegmt=True), 9),
]


@pytest.mark.parametrize(("header", "attempt"), RETRY_AFTER_TABLE)
def test_retry_after_never_shortens_the_backoff(header: str, attempt: int) -> None:
    """Over 2,000 draws, the waits spread over the normal backoff's whole range (or sit at a
    longer Retry-After); a Retry-After of 0 or in the past does not make the retry immediate."""
    bound = min(60, 0.5 * 2 ** (attempt - 1))
    retry_after = parse_retry_after(header, NOW)
    draws = [backoff(attempt, 0.5, 60, retry_after) for _ in range(2000)]
    floor = min(retry_after or 0.0, 60)
    assert all(floor <= d <= max(bound, floor) for d in draws)
    assert max(draws) > max(bound, floor) * 0.95


def test_ten_attempts_with_retry_after_0_take_their_time() -> None:
    """Issue 13: ten attempts answered `Retry-After: 0` used to run within 20 ms."""
    for _ in range(200):
        assert sum(backoff(n, 0.5, 60, parse_retry_after("0", NOW)) for n in range(1, 10)) > 1


# --------------------------------------------------------------------------- excerpt

SEED_004_BODY = orjson.dumps({
    "status": 403,
    "message": "User not authorized",
    "details": 'Your subscription package does not include the "ASFAFD" channel.\n'
               "    Please go to http://www.ca.ble/upgrade in order to upgrade your subscription."
               + " More text." * 30,
})


def test_excerpt_of_a_json_error_body() -> None:
    text = excerpt(SEED_004_BODY)
    assert "\n" not in text
    assert "  " not in text
    assert len(text) == EXCERPT_CHARS == 160
    assert text.startswith("status=403 message=User not authorized details=Your subscription")


def test_excerpt_of_short_bodies() -> None:
    assert excerpt(b"") == ""
    assert excerpt(b"  Service\r\n\tUnavailable  ") == "Service Unavailable"
    assert excerpt(b'{"error": "invalid_request", "error_description": "bad grant"}') == (
        "error=invalid_request error_description=bad grant"
    )
    assert excerpt(b'{"foo": "bar"}') == '{"foo": "bar"}'  # no known field: the raw text
    assert excerpt(b"\xff\xfeoops") == "\ufffd\ufffdoops"


def test_excerpt_never_contains_a_registered_secret() -> None:
    secret = "tok-3f9a2c71e5b84d06"
    register_secret(secret)
    bodies = [
        secret.encode(),
        f'{{"error": "invalid_token", "message": "token {secret} expired"}}'.encode(),
        f"<html><body>Bearer {secret}</body></html>".encode(),
        ("x" * 150 + " " + secret).encode(),  # straddles the 160-character cut
    ]
    for body in bodies:
        text = excerpt(body)
        assert secret not in text, body
        assert secret[:8] not in text, body
    assert "[REDACTED]" in excerpt(bodies[1])
    assert secret not in classify(400, body=bodies[1]).error


def test_excerpt_never_contains_part_of_a_secret_after_a_long_prefix() -> None:
    """An HTML error page echoing the token after 4 KB of indentation."""
    secret = "tok-8d1e4b7709c2a5f3"
    register_secret(secret)
    head = "<html>\n" + " " * 4083  # the secret straddles the 4096th byte
    assert len(head) == 4090
    body = (head + secret + "\n</html>").encode()
    text = excerpt(body)
    assert secret[:6] not in text, text
