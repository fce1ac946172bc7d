"""AAM's digitally signed requests, end to end: iris signs every batch (HMAC of the exact body,
base64, in the partner's header) and the test partner verifies it with its own code; a wrong
key is refused and dead-lettered; key rotation by ``active_from``; secrets from files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from iris_demo.partner import PartnerServer, SignatureCheck
from tests.conftest import (
    Partner,
    destination_config,
    diagnose,
    make_config,
    metric,
    pending_total,
    running,
    signatures_seen,
    wait_for,
)
from tests.helpers import equals

SECRET_A = "sig-secret-A-7d1e0c"
SECRET_B = "sig-secret-B-93fa42"
SECRET_OLD = "sig-secret-old-5b2e"
SECRET_NEW = "sig-secret-new-c41d"


def mac(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    """The expected header value, computed here a third time (neither iris's nor the partner's)."""
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).digest()
    return base64.b64encode(digest).decode()


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


@pytest.fixture
def signed_partners(partners: Callable[..., Any]) -> Callable[..., Any]:
    """``partners`` whose partner checks signatures with ``check``."""

    async def start(dest_id: str, check: SignatureCheck | None, *, https: bool = False) -> Partner:
        return await partners(dest_id, https=https, signature=check)

    return start


def capture_headers(partner: PartnerServer) -> list[dict[str, str]]:
    """Record the headers of every request that passed the partner's checks of credentials and
    signature (the responder hook runs after both); the request then goes on as usual."""
    seen: list[dict[str, str]] = []

    async def responder(request: web.Request, body: bytes) -> None:
        seen.append({k.lower(): v for k, v in request.headers.items()})

    partner.responder = responder
    return seen


async def push(redis, stream_key: str, n: int, prefix: str = "u") -> list[str]:
    ids = []
    for i in range(n):
        ids.append(await redis.xadd(stream_key, {"uuid": f"{prefix}{i}", "segment": "s1",
                                                 "dpuuid": f"d-{prefix}{i}"}))
    return ids


def signing(*keys: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"signing": {"keys": list(keys), **fields}}


# --------------------------------------------------------------------------- accepted


async def test_sha256_default_every_batch_verified_over_exact_bytes(
    redis_server, redis, stream_key, signed_partners, tls
):
    p = await signed_partners("423", SignatureCheck(keys={"k1": SECRET_A}), https=True)
    seen = capture_headers(p.server)
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, tls=tls, batch={"max_users": 5, "max_wait": 0.05},
        **signing({"id": "k1", "secret": SECRET_A}))])  # header and algorithm by default
    async with running(config) as worker:
        await push(redis, stream_key, 30)
        await wait_for(lambda: len(p.server.segment_changes()) == 30, 8, "30 changes",
                       lambda: diagnose(worker, p, 30))
        await wait_for(lambda: equals(pending_total(redis, config), 0), 5, "no pending entries")
        assert metric(worker, "iris_requests_total", destination="423", code="200") == len(
            p.server.received)
        assert metric(worker, "iris_requests_total", destination="423", code="401") == 0
    batches = p.server.received
    assert len(batches) >= 6  # at most 5 users a batch: each one signed on its own
    assert p.server.signature_failures == 0 and p.server.signature_rejections == []
    assert p.server.problems == [] and p.server.auth_failures == 0
    assert sorted(c[0] for c in p.server.segment_changes()) == sorted(f"u{i}" for i in range(30))
    for batch in batches:
        assert batch.signed_by == "k1"
        assert batch.signature == mac(SECRET_A, batch.body)  # of the bytes as they arrived
    assert len({b.signature for b in batches}) == len(batches)  # every body differs, so do MACs
    assert len(seen) == len(batches)
    for headers in seen:
        assert "x-key-id" not in headers and "x-sig" not in headers  # just X-Signature
        assert headers["x-signature"] in {b.signature for b in batches}


async def test_custom_header_and_key_id_header(redis_server, redis, stream_key, signed_partners):
    check = SignatureCheck(keys={"2024-q3": SECRET_A}, header="X-Sig",
                           key_id_header="X-Sig-Key-Id")
    p = await signed_partners("423", check)
    seen = capture_headers(p.server)
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_users": 4, "max_wait": 0.05},
        **signing({"id": "2024-q3", "secret": SECRET_A}, header="X-Sig",
                  key_id_header="X-Sig-Key-Id"))])
    async with running(config) as worker:
        await push(redis, stream_key, 12)
        await wait_for(lambda: len(p.server.segment_changes()) == 12, 8, "12 changes",
                       lambda: diagnose(worker, p, 12))
    assert p.server.signature_failures == 0 and p.server.problems == []
    assert len(p.server.received) >= 3
    for batch in p.server.received:
        assert batch.signed_by == "2024-q3"
        assert batch.signature == mac(SECRET_A, batch.body)
    assert len(seen) == len(p.server.received)
    for headers, batch in zip(seen, p.server.received, strict=True):
        assert headers["x-sig"] == batch.signature
        assert headers["x-sig-key-id"] == "2024-q3"
        assert "x-signature" not in headers  # the default header is not sent as well


@pytest.mark.parametrize("algorithm", ["sha1", "md5"])
async def test_other_algorithms(redis_server, redis, stream_key, signed_partners, algorithm):
    p = await signed_partners("423", SignatureCheck(keys={"k1": SECRET_A}, algorithm=algorithm))
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_users": 5, "max_wait": 0.05},
        **signing({"id": "k1", "secret": SECRET_A}, algorithm=algorithm))])
    async with running(config) as worker:
        await push(redis, stream_key, 10)
        await wait_for(lambda: len(p.server.segment_changes()) == 10, 8, "10 changes",
                       lambda: diagnose(worker, p, 10))
    assert p.server.signature_failures == 0 and p.server.problems == []
    digest_len = {"sha1": 20, "md5": 16}[algorithm]
    for batch in p.server.received:
        assert batch.signed_by == "k1"
        assert batch.signature == mac(SECRET_A, batch.body, algorithm)
        assert len(base64.b64decode(batch.signature)) == digest_len


# --------------------------------------------------------------------------- refused


WRONG = {
    # id: (iris signing, or None for none; partner check; the partner's reason)
    "wrong_secret": (
        {"keys": [{"id": "k1", "secret": SECRET_A}]},
        SignatureCheck(keys={"k1": SECRET_B}),
        "signature does not match the body",
    ),
    "wrong_algorithm": (
        {"keys": [{"id": "k1", "secret": SECRET_A}], "algorithm": "md5"},
        SignatureCheck(keys={"k1": SECRET_A}),
        "signature does not match the body",
    ),
    "unknown_key_id": (
        {"keys": [{"id": "k2", "secret": SECRET_A}], "key_id_header": "X-Key-Id"},
        SignatureCheck(keys={"k1": SECRET_A}, key_id_header="X-Key-Id"),
        "unknown key id 'k2'",
    ),
    "unsigned": (None, SignatureCheck(keys={"k1": SECRET_A}), "no X-Signature header"),
}


@pytest.mark.parametrize("case", list(WRONG))
async def test_wrong_signature_is_refused_and_dead_lettered(
    redis_server, redis, stream_key, signed_partners, case
):
    iris_signing, check, reason = WRONG[case]
    p = await signed_partners("423", check)
    extra = {"signing": iris_signing} if iris_signing is not None else {}
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_wait": 0.05}, **extra)])
    ids = await push(redis, stream_key, 3)
    async with running(config) as worker:
        await wait_for(lambda: equals(redis.xlen(f"{stream_key}:dlq"), 3), 8, "3 dead letters",
                       lambda: diagnose(worker, p, 3))
        await wait_for(lambda: equals(pending_total(redis, config), 0), 5, "no pending entries")
        dlq = await redis.xrange(f"{stream_key}:dlq")
        assert metric(worker, "iris_events_dead_lettered_total", destination="423",
                      reason="rejected") == 3
        assert metric(worker, "iris_requests_total", destination="423",
                      code="401") == p.server.signature_failures
        assert metric(worker, "iris_events_delivered_total", destination="423") == 0
    assert p.server.received == [] and p.server.problems == []
    assert p.server.auth_failures == 0  # the bearer token was fine: only the signature was not
    rejections = p.server.signature_rejections
    assert p.server.signature_failures == len(rejections) >= 2
    assert p.server.request_count == len(rejections)
    keys = Counter(r.idempotency_key for r in rejections)
    assert all(n == 2 for n in keys.values()), keys  # each batch: once, then once more
    assert p.tokens.ok_requests >= 2  # the 401 made iris fetch a new token before its retry
    for r in rejections:
        assert r.reason == reason
        if iris_signing is None:
            assert r.signature is None
        else:  # iris signed what it sent with what it was given: the keys just disagree
            algorithm = iris_signing.get("algorithm", "sha256")
            assert r.signature == mac(SECRET_A, r.body, algorithm)
        assert json.loads(r.body)["AAM_Destination_Id"] == "423"
    assert sorted(u for r in rejections for u in
                  (x["AAM_UUID"] for x in json.loads(r.body)["Users"])) == sorted(
        [f"u{i}" for i in range(3)] * 2)
    assert len(dlq) == 3
    by_source = {fields["dlq_source_id"]: fields for _, fields in dlq}
    assert sorted(by_source) == sorted(ids)
    for i, entry_id in enumerate(ids):
        entry = by_source[entry_id]
        assert {k: v for k, v in entry.items() if not k.startswith("dlq_")} == {
            "uuid": f"u{i}", "segment": "s1", "dpuuid": f"d-u{i}"}
        assert entry["dlq_reason"] == "rejected"
        assert entry["dlq_destination"] == "423"
        assert entry["dlq_status"] == "401"
        assert entry["dlq_error"] == "HTTP 401: error=invalid_signature"
        assert entry["dlq_time"]


async def test_partner_check_is_over_the_exact_bytes(signed_partners):
    """The partner itself: a signature of other bytes (even the same JSON re-spaced) is 401
    invalid_signature, counted apart from problems; the exact bytes pass."""
    p = await signed_partners("423", SignatureCheck(keys={"old": SECRET_OLD, "new": SECRET_NEW}))
    doc = {
        "ProcessTime": "Wed Jul 27 16:17:42 UTC 2016", "User_DPID": "12345", "Client_ID": "74323",
        "AAM_Destination_Id": "423", "User_count": "1",
        "Users": [{"AAM_UUID": "u1", "DataPartner_UUID": "d1", "Segments": [
            {"Segment_ID": "s1", "Status": "1", "DateTime": "Wed Jul 27 16:17:22 UTC 2016"}]}],
    }
    compact = json.dumps(doc, separators=(",", ":")).encode()
    spaced = json.dumps(doc).encode()
    async with aiohttp.ClientSession() as session:
        basic = base64.b64encode(f"{p.tokens.client_id}:{p.client_secret}".encode()).decode()
        form = {"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
                "Authorization": f"Basic {basic}"}
        async with session.post(p.token_url, data=b"grant_type=client_credentials",
                                headers=form) as r:
            token = (await r.json())["access_token"]

        async def post(body: bytes, signature: str | None) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            if signature is not None:
                headers["X-Signature"] = signature
            async with session.post(p.url, data=body, headers=headers) as resp:
                return resp.status, await resp.json()

        refused = {"error": "invalid_signature"}
        assert await post(spaced, mac(SECRET_NEW, compact)) == (401, refused)
        assert await post(compact, mac(SECRET_NEW, compact)[:-2]) == (401, refused)
        assert await post(compact, None) == (401, refused)
        assert await post(compact, mac(SECRET_A, compact)) == (401, refused)
        assert await post(compact, mac(SECRET_NEW, compact, "sha1")) == (401, refused)
        assert p.server.signature_failures == 5 and p.server.received == []
        assert p.server.problems == []
        assert await post(spaced, mac(SECRET_OLD, spaced)) == (200, {"status": "ok"})
        assert await post(compact, mac(SECRET_NEW, compact)) == (200, {"status": "ok"})
    assert [b.signed_by for b in p.server.received] == ["old", "new"]  # any known key passes
    assert [b.body for b in p.server.received] == [spaced, compact]
    assert p.server.signature_failures == 5 and p.server.auth_failures == 0
    assert [r.reason for r in p.server.signature_rejections] == [
        "signature does not match the body"] * 2 + ["no X-Signature header"] + [
        "signature does not match the body"] * 2
    assert len(signatures_seen(p.server)) == 6  # registered as secrets by the fixture


# --------------------------------------------------------------------------- rotation


@pytest.mark.parametrize(("new_from", "expected"), [
    (timedelta(hours=1), "old"),  # the new key is configured ahead of its cut-over
    (-timedelta(hours=1), "new"),  # cut-over passed: the newest key signs
], ids=["future", "past"])
async def test_rotation_by_active_from(redis_server, redis, stream_key, signed_partners,
                                       new_from, expected):
    check = SignatureCheck(keys={"old": SECRET_OLD, "new": SECRET_NEW}, key_id_header="X-Key-Id")
    p = await signed_partners("423", check)
    seen = capture_headers(p.server)
    keys = [{"id": "new", "secret": SECRET_NEW, "active_from": iso(datetime.now(UTC) + new_from)},
            {"id": "old", "secret": SECRET_OLD}]
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_users": 3, "max_wait": 0.05}, **signing(*keys, key_id_header="X-Key-Id"))])
    async with running(config) as worker:
        await push(redis, stream_key, 9)
        await wait_for(lambda: len(p.server.segment_changes()) == 9, 8, "9 changes",
                       lambda: diagnose(worker, p, 9))
    assert p.server.signature_failures == 0 and p.server.problems == []
    secret = {"old": SECRET_OLD, "new": SECRET_NEW}[expected]
    assert len(p.server.received) >= 3
    for batch in p.server.received:
        assert batch.signed_by == expected
        assert batch.signature == mac(secret, batch.body)
    assert [h["x-key-id"] for h in seen] == [expected] * len(p.server.received)


async def test_rotation_cut_over_while_running(redis_server, redis, stream_key, signed_partners):
    """Zero downtime: the partner knows both keys; iris switches at active_from without a
    restart or a single refused request; then the partner retires the old key."""
    check = SignatureCheck(keys={"old": SECRET_OLD, "new": SECRET_NEW}, key_id_header="X-Key-Id")
    p = await signed_partners("423", check)
    cut_over = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    keys = [{"id": "new", "secret": SECRET_NEW, "active_from": iso(cut_over)},
            {"id": "old", "secret": SECRET_OLD}]
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_users": 2, "max_wait": 0.05}, **signing(*keys, key_id_header="X-Key-Id"))])
    async with running(config) as worker:
        await push(redis, stream_key, 6, prefix="before")
        await wait_for(lambda: len(p.server.segment_changes()) == 6, 2.5, "6 changes",
                       lambda: diagnose(worker, p, 6))
        assert time.time() < cut_over.timestamp()  # so every one was signed before it
        before = len(p.server.received)
        await wait_for(lambda: time.time() >= cut_over.timestamp(), 4, "the cut-over instant")
        await push(redis, stream_key, 6, prefix="after")
        await wait_for(lambda: len(p.server.segment_changes()) == 12, 5, "12 changes",
                       lambda: diagnose(worker, p, 12))
        during = len(p.server.received)
        p.server.signature = SignatureCheck(keys={"new": SECRET_NEW}, key_id_header="X-Key-Id")
        await push(redis, stream_key, 4, prefix="retired")
        await wait_for(lambda: len(p.server.segment_changes()) == 16, 5, "16 changes",
                       lambda: diagnose(worker, p, 16))
        assert metric(worker, "iris_requests_total", destination="423", code="401") == 0
    signed_by = [b.signed_by for b in p.server.received]
    assert before >= 3 and during - before >= 3
    assert signed_by == ["old"] * before + ["new"] * (len(signed_by) - before)
    for batch in p.server.received:
        secret = SECRET_OLD if batch.signed_by == "old" else SECRET_NEW
        assert batch.signature == mac(secret, batch.body)
    assert p.server.signature_failures == 0 and p.server.problems == []


# --------------------------------------------------------------------------- secrets


async def test_secrets_from_files_and_never_logged(redis_server, redis, stream_key,
                                                   signed_partners, secret_watch, tmp_path):
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old_file.write_text(SECRET_OLD + "\n", encoding="utf-8")
    new_file.write_text(SECRET_NEW + "\n", encoding="utf-8")
    secret_watch.add(SECRET_OLD, SECRET_NEW)
    check = SignatureCheck(keys={"old": SECRET_OLD, "new": SECRET_NEW}, header="X-Sig",
                           key_id_header="X-Key-Id")
    p = await signed_partners("423", check)
    past = iso(datetime.now(UTC) - timedelta(minutes=5))
    keys = [{"id": "new", "secret_file": str(new_file), "active_from": past},
            {"id": "old", "secret_file": str(old_file)}]
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_users": 3, "max_wait": 0.05},
        **signing(*keys, header="X-Sig", key_id_header="X-Key-Id"))])
    assert SECRET_NEW not in repr(config) and SECRET_OLD not in repr(config)
    async with running(config) as worker:
        await push(redis, stream_key, 9)
        await wait_for(lambda: len(p.server.segment_changes()) == 9, 8, "9 changes",
                       lambda: diagnose(worker, p, 9))
    assert p.server.signature_failures == 0 and p.server.problems == []
    for batch in p.server.received:
        assert batch.signed_by == "new"
        assert batch.signature == mac(SECRET_NEW, batch.body)  # the file's text, no newline
    signatures = signatures_seen(p.server)
    assert len(signatures) == len(p.server.received) >= 3
    secret_watch.add(*signatures)  # the autouse scan at teardown: none of these in any log line
