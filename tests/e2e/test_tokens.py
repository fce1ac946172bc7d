"""Acceptance 2–5: token lifetime, revocation, single flight, RFC 6749 encoding, gzip answers."""

from __future__ import annotations

import asyncio
import itertools
import time

from iris.core.payload import encode_payload
from iris.core.retry import Action
from iris.http.sender import PartnerSession, Sender
from iris.runtime.health import Health
from iris.runtime.metrics import Metrics
from iris.runtime.rate_limit import SharedRate
from iris.runtime.wiring import SharedTokens, make_auth
from iris.store.streams import Streams
from tests.conftest import (
    destination_config,
    diagnose,
    make_config,
    metric,
    pending_total,
    running,
    trickle,
    wait_for,
)
from tests.helpers import equals


async def test_short_lived_tokens_are_refreshed_before_expiry(redis_server, redis, stream_key,
                                                              partners):
    p = await partners("423", ttl=2)
    config = make_config(redis_server.url, stream_key,
                         [destination_config(p, batch={"max_wait": 0.05})])
    async with running(config) as worker:
        started = time.monotonic()
        async with trickle(redis, stream_key, 40) as sent:
            await wait_for(lambda: time.monotonic() - started > 8, 10, "an 8 s run")
        await wait_for(lambda: len(p.server.segment_changes()) == sent[0], 10, "all delivered",
                       lambda: diagnose(worker, p, sent[0]))
        await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "no pending")
        assert metric(worker, "iris_requests_total", destination="423", code="401") == 0
    assert p.server.expired_token_requests == 0 and p.server.auth_failures == 0
    issued = list(p.tokens.issued.values())  # monotonic expiry of each token, in issue order
    ok = [r for r in p.tokens.requests if r.ok]
    assert 4 <= len(ok) <= 7, len(ok)  # ~8 s / 2 s lifetimes, refreshed a little early
    for previous_expiry, request in zip(issued, ok[1:], strict=False):
        assert request.time < previous_expiry  # the next token came before the last expired


async def test_revoked_token_is_replaced_once(redis_server, redis, stream_key, partners):
    p = await partners("423")
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_wait": 0.05, "max_users": 5}, limits={"max_in_flight": 8})])
    async with running(config):
        for i in range(200):
            await redis.xadd(stream_key, {"uuid": f"a{i}", "segment": "s1", "dpuuid": "d"})
        await wait_for(lambda: len(p.server.segment_changes()) == 200, 20, "first half")
        p.tokens.revoke_all()  # the partner now answers 401 invalid_token to the old one
        for i in range(200):
            await redis.xadd(stream_key, {"uuid": f"b{i}", "segment": "s1", "dpuuid": "d"})
        await wait_for(lambda: len(p.server.segment_changes()) == 400, 20, "second half")
        await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "no pending")
    assert p.server.auth_failures >= 1
    assert p.tokens.ok_requests == 2  # exactly one new token request
    assert sorted(c[0] for c in p.server.segment_changes()) == sorted(
        [f"a{i}" for i in range(200)] + [f"b{i}" for i in range(200)])
    assert await redis.xlen(f"{stream_key}:dlq") == 0


async def test_200_concurrent_batches_wait_on_one_token_request(partners, redis_server, redis,
                                                                stream_key):
    p = await partners("423", ttl=3)
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, limits={"max_in_flight": 200, "requests_per_second": 10000})])
    dest = config.destinations[0]
    metrics = Metrics([dest.id], stream_key, "iris")
    session = PartnerSession(dest)
    auth = make_auth(dest, session, metrics, SharedTokens.from_config(config, redis))
    rate = SharedRate(Streams(redis, config), dest.id, dest.limits.requests_per_second,
                      Health().retry("rate"))
    sender = Sender(dest, auth, session, metrics, rate)

    def body(i: int) -> bytes:
        return encode_payload(destination_id=dest.id, user_dpid="12345", client_id="74323",
                              users=[{"AAM_UUID": f"u{i}", "DataPartner_UUID": "d",
                                      "Segments": [{"Segment_ID": "s", "Status": "1",
                                                    "DateTime": "Wed Jul 27 16:17:42 UTC 2016"}]}])
    try:
        assert (await sender.send(body(0), "k0")).action is Action.DELIVERED
        first = p.tokens.all_tokens()[0]
        await wait_for(lambda: p.tokens.is_expired(first), 5, "the token to expire")
        outcomes = await asyncio.gather(*(sender.send(body(i), f"k{i}") for i in range(1, 201)))
    finally:
        await auth.close()
        await session.close()
    assert [o.action for o in outcomes] == [Action.DELIVERED] * 200
    assert p.tokens.ok_requests == 2 and len(p.tokens.requests) == 2
    assert len(p.server.received) == 201 and p.server.expired_token_requests == 0


async def test_secret_with_reserved_characters(redis_server, redis, stream_key, partners,
                                               secret_watch):
    secret = "a+b %c:d é f"
    p = await partners("426", client_secret=secret)
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_wait": 0.05})])
    async with running(config):
        await redis.xadd(stream_key, {"uuid": "u1", "segment": "s1", "dpuuid": "d1"})
        await wait_for(lambda: len(p.server.received) == 1, 10, "delivery")
    [request] = p.tokens.requests
    assert request.ok and request.client_id_seen == "iris-426"
    assert request.content_type == "application/x-www-form-urlencoded;charset=UTF-8"
    assert request.method == "POST" and request.form == {"grant_type": "client_credentials"}
    assert request.accept_encoding == "gzip"


async def test_gzip_answer_without_expires_in(redis_server, redis, stream_key, partners):
    p = await partners("427", gzip=True, ttl=None)
    p.tokens.hidden_ttl = 3.0  # the server's real lifetime, which it does not announce
    config = make_config(redis_server.url, stream_key, [destination_config(
        p, batch={"max_wait": 0.05}, auth={"default_expires_in": 1.5})])
    async with running(config) as worker:
        started = time.monotonic()
        async with trickle(redis, stream_key, 40) as sent:
            await wait_for(lambda: time.monotonic() - started > 4, 6, "a 4 s run")
        await wait_for(lambda: len(p.server.segment_changes()) == sent[0], 10, "all delivered",
                       lambda: diagnose(worker, p, sent[0]))
    ok = [r for r in p.tokens.requests if r.ok]
    assert all(r.gzipped for r in ok)  # the answers really were gzip-encoded
    assert len(ok) >= 3  # ~4 s / 1.5 s: refreshed by default_expires_in, not the hidden 3 s
    gaps = [b.time - a.time for a, b in itertools.pairwise(ok)]
    assert all(0.9 <= gap <= 1.6 for gap in gaps[:-1]), gaps
    assert p.server.expired_token_requests == 0 and p.server.auth_failures == 0
