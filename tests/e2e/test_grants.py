"""Every grant end to end against a strict OAuth server, refresh-token rotation across worker
restarts (in clear and Fernet-encrypted at rest, and a stop in the middle of a refresh), seed
003's templated token requests, and the fallback from a refused refresh token to the initial
grant.

Each test runs real servers on loopback (``OAuthServer`` or a small aiohttp token endpoint, and
``PartnerServer`` checking every bearer token with it), an in-process worker, and the session
redis-server. Token requests are checked field by field as the server recorded them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from cryptography.fernet import Fernet

from iris.config.model import Config, parse_config
from iris.runtime.wiring import SharedTokens, make_store
from iris.store.tokens import digest
from iris_demo.partner import PartnerServer
from iris_demo.servers import LocalServer
from iris_demo.token_server import OAuthError, error_response
from tests.conftest import (
    SecretWatch,
    config_data,
    metric,
    pending_total,
    running,
    trickle,
    wait_for,
)
from tests.helpers import equals
from tests.oauth_server import (
    CLIENT_CREDENTIALS,
    IMS_JWT,
    JWT_BEARER,
    PASSWORD,
    REFRESH_TOKEN,
    OAuthServer,
    make_ec_key,
    make_rsa_key,
)

DEST = "88"
USER_DPID, PARTNER_CLIENT = "12345", "74323"
CLIENT_ID = "iris grants"  # a space: Basic must percent-encode it (RFC 6749 §2.3.1)
SECRET = "gr@nt s3cret+/%é&="  # every character a form or Basic encoder could get wrong
USER, USER_PASSWORD = "ops@example.com", "pa ss+wörd&1"
FORM = "application/x-www-form-urlencoded;charset=UTF-8"
REFUSED = "token endpoint refused the credentials"


class RecordingOAuthServer(OAuthServer):
    """``OAuthServer`` that also lists every refresh token it made, in order (seeded ones too),
    so a test knows which one is current without reading the server's internals."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refresh_minted: list[str] = []

    def seed_refresh_token(self, value: str | None = None) -> str:
        token = super().seed_refresh_token(value)
        self.refresh_minted.append(token)
        return token

    def grant_of(self, token: str) -> str:
        """The grant an access token was issued by."""
        return dict(zip(self.issued, self.grants_issued, strict=True))[token]


class SimpleIssuer:
    """A partner's own token endpoint: checks seed 003's form body and answers ``answer(token)``
    (any JSON shape). Has ``is_valid``/``is_expired`` for ``PartnerServer``."""

    path = "/nested/token"

    def __init__(self, answer: Callable[[str], dict[str, Any]]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []  # content type and redacted form
        self.issued: dict[str, float] = {}  # token -> monotonic expiry

    def routes(self) -> list[web.RouteDef]:
        return [web.post(self.path, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        self.requests.append({
            "content_type": request.headers.get("Content-Type"),
            "form": {k: "***" if k == "client_secret" else v for k, v in form.items()},
        })
        expected = {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                    "client_secret": SECRET}
        if form != expected or "Authorization" in request.headers:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(32)
        self.issued[token] = time.monotonic() + 3600
        return web.json_response(self.answer(token))

    def is_valid(self, token: str) -> bool:
        return time.monotonic() < self.issued.get(token, 0)

    def is_expired(self, token: str) -> bool:
        return token in self.issued and not self.is_valid(token)

    def all_tokens(self) -> list[str]:
        return list(self.issued)


# --------------------------------------------------------------------------- plumbing

@pytest.fixture
async def site(secret_watch: SecretWatch) -> AsyncIterator[Callable[..., Any]]:
    """``await site(tokens)`` serves the partner (checking bearer tokens with ``tokens``) and
    ``tokens``' routes on one loopback server; returns (partner, base URL)."""
    servers: list[LocalServer] = []
    secret_watch.add(SECRET, USER_PASSWORD)

    async def start(tokens: Any) -> tuple[PartnerServer, str]:
        partner = PartnerServer(destination_id=DEST, user_dpid=USER_DPID,
                                client_id=PARTNER_CLIENT, tokens=tokens)
        app = web.Application()
        app.add_routes(partner.routes())
        app.add_routes(tokens.routes())
        server = LocalServer()
        servers.append(server)
        secret_watch.token_servers.append(tokens)
        return partner, await server.start(app)

    yield start
    for server in servers:
        await server.stop()


def make(redis_url: str, stream_key: str, base: str, auth: dict[str, Any],
         token_store: dict[str, Any] | None = None) -> Config:
    dest = {"id": DEST, "url": base + "/segments/aam", "user_dpid": USER_DPID,
            "client_id": PARTNER_CLIENT, "allow_http": True, "batch": {"max_wait": 0.05},
            "auth": auth}
    raw = config_data(redis_url, stream_key, [dest])
    if token_store is not None:
        raw["token_store"] = token_store
    return parse_config(raw, env={})


def store_of(config: Config, redis: aioredis.Redis):
    return make_store(config.destinations[0], SharedTokens.from_config(config, redis))


def capture_bodies(server: OAuthServer) -> list[bytes]:
    """Every token request body exactly as sent (the server then answers as usual)."""
    bodies: list[bytes] = []

    async def responder(request: web.Request) -> None:
        bodies.append(await request.read())

    server.responder = responder
    return bodies


def form_of(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


async def deliver(redis: aioredis.Redis, stream_key: str, partner: PartnerServer, prefix: str,
                  n: int = 3, timeout: float = 8) -> None:
    """XADD ``n`` events and wait until the partner has accepted every one of them."""
    want = set()
    for i in range(n):
        await redis.xadd(stream_key, {"uuid": f"{prefix}{i}", "segment": "s1",
                                      "dpuuid": f"d-{prefix}{i}"})
        want.add((f"{prefix}{i}", f"d-{prefix}{i}", "s1", "1"))
    await wait_for(lambda: want <= set(partner.segment_changes()), timeout,
                   f"delivery of {prefix}0..{n - 1}", lambda: explain(partner))


def explain(partner: PartnerServer) -> str:
    return (f"(received={len(partner.segment_changes())}, requests={partner.request_count}, "
            f"auth failures={partner.auth_failures}, problems={partner.problems[:3]})")


async def all_delivered(partner: PartnerServer, prefix: str, sent: int) -> None:
    want = {f"{prefix}{i}" for i in range(sent)}
    await wait_for(lambda: want <= {c[0] for c in partner.segment_changes()}, 8,
                   f"all {sent} {prefix}* events delivered", lambda: explain(partner))


def check_request(rec: Any, *, path: str, form: dict[str, str], grant_type: str | None,
                  client_auth: str | None, client_id: str | None,
                  content_type: str = FORM) -> None:
    """One recorded token request, field by field (form order included)."""
    assert (rec.ok, rec.status, rec.error) == (True, 200, None)
    assert rec.path == path
    assert rec.method == "POST"
    assert rec.content_type == content_type
    headers = {k.lower(): v for k, v in rec.headers.items()}
    assert headers["accept"] == "application/json"
    assert headers["accept-encoding"] == "gzip"
    assert list(rec.form.items()) == list(form.items())
    assert rec.grant_type == grant_type
    assert rec.client_auth_method == client_auth
    assert rec.client_id_seen == client_id
    assert rec.authorization_scheme == ("Basic" if client_auth == "client_secret_basic" else None)


def check_delivered_with(partner: PartnerServer, oauth: RecordingOAuthServer,
                         grants: set[str], *, still_valid: bool = True) -> None:
    """Every accepted batch carried a token that ``oauth`` issued by one of ``grants`` (the
    partner checked it was valid when it arrived; long-lived ones must still be valid)."""
    assert partner.received and partner.problems == [] and partner.auth_failures == 0
    for batch in partner.received:
        assert batch.token is not None and batch.token in oauth.issued
        assert oauth.grant_of(batch.token) in grants
        assert not still_valid or oauth.is_valid(batch.token)


def client_form(method: str) -> dict[str, str]:
    """What the client authentication adds to the form (at its end)."""
    if method == "client_secret_post":
        return {"client_id": CLIENT_ID, "client_secret": "***"}
    if method == "none":
        return {"client_id": CLIENT_ID}
    return {}


def client_settings(method: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"client_id": CLIENT_ID, "client_auth": method}
    if method != "none":
        settings["client_secret"] = SECRET
    return settings


def oauth_server(method: str = "client_secret_basic", **kwargs: Any) -> RecordingOAuthServer:
    return RecordingOAuthServer(client_id=CLIENT_ID,
                                client_secret=SECRET if method != "none" else None,
                                client_auth=method, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 1. every grant

@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials(method, site, redis_server, redis, stream_key):
    oauth = oauth_server(method, scope="segments:write offline")
    partner, base = await site(oauth)
    bodies = capture_bodies(oauth)
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_client_credentials", "token_url": base + oauth.path,
        **client_settings(method), "scope": ["segments:write", "offline"],
        "params": {"audience": "aam segments"},
    })
    async with running(config) as worker:
        await deliver(redis, stream_key, partner, "cc")
        assert metric(worker, "iris_token_requests_total", destination=DEST,
                      outcome="success") == 1
    [rec] = oauth.requests
    check_request(rec, path=oauth.path, grant_type=CLIENT_CREDENTIALS, client_auth=method,
                  client_id=CLIENT_ID, form={
                      "grant_type": "client_credentials", "scope": "segments:write offline",
                      "audience": "aam segments", **client_form(method)})
    [body] = bodies  # spaces are %20, never '+'; reserved characters percent-encoded
    assert b"scope=segments%3Awrite%20offline&audience=aam%20segments" in body
    if method == "client_secret_post":
        assert body.endswith(b"&client_id=iris%20grants"
                             b"&client_secret=gr%40nt%20s3cret%2B%2F%25%C3%A9%26%3D")
    assert oauth.grants_issued == [CLIENT_CREDENTIALS]
    check_delivered_with(partner, oauth, {CLIENT_CREDENTIALS})


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "none"])
async def test_password(method, site, redis_server, redis, stream_key):
    oauth = oauth_server(method, users={USER: USER_PASSWORD}, scope="segments:write")
    partner, base = await site(oauth)
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_password", "token_url": base + oauth.path, **client_settings(method),
        "username": USER, "password": USER_PASSWORD, "scope": "segments:write",
    })
    async with running(config):
        await deliver(redis, stream_key, partner, "pw")
    [rec] = oauth.requests
    check_request(rec, path=oauth.path, grant_type=PASSWORD, client_auth=method,
                  client_id=CLIENT_ID, form={
                      "grant_type": "password", "username": USER, "password": "***",
                      "scope": "segments:write", **client_form(method)})
    assert oauth.grants_issued == [PASSWORD]
    check_delivered_with(partner, oauth, {PASSWORD})
    # The password grant's refresh token was kept for later, in the clear (no encryption key).
    stored = await redis.hgetall(store_of(config, redis).refresh_key)
    [refresh] = oauth.refresh_minted
    assert stored == {"digest": digest(refresh), "data": "plain:" + refresh, "seed": "issued"}


async def test_refresh_token_grant(site, redis_server, redis, stream_key):
    oauth = oauth_server()
    partner, base = await site(oauth)
    seed = oauth.seed_refresh_token()
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_refresh_token", "token_url": base + oauth.path,
        "client_id": CLIENT_ID, "client_secret": SECRET, "refresh_token": seed,
    })
    async with running(config):
        await deliver(redis, stream_key, partner, "rt")
    [rec] = oauth.requests
    check_request(rec, path=oauth.path, grant_type=REFRESH_TOKEN,
                  client_auth="client_secret_basic", client_id=CLIENT_ID,
                  form={"grant_type": "refresh_token", "refresh_token": "***"})
    assert oauth.grants_issued == [REFRESH_TOKEN] and oauth.refresh_tokens_used == [seed]
    check_delivered_with(partner, oauth, {REFRESH_TOKEN})
    stored = await redis.hgetall(store_of(config, redis).refresh_key)
    [_, rotated] = oauth.refresh_minted
    assert stored == {"digest": digest(rotated), "data": "plain:" + rotated,
                      "seed": "config:" + digest(seed)[:16]}


async def test_authorization_code_lives_on_the_logged_in_refresh_token(site, redis_server, redis,
                                                                       stream_key):
    oauth = oauth_server("client_secret_post", scope="segments:write offline")
    partner, base = await site(oauth)
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_authorization_code", "token_url": base + oauth.path,
        "authorization_url": base + oauth.authorize_path,
        **client_settings("client_secret_post"), "scope": ["segments:write", "offline"],
    })
    store = store_of(config, redis)
    login = oauth.seed_refresh_token()
    await store.put_refresh_token(login, "login:test")  # what `iris auth login` leaves behind
    async with running(config):
        await deliver(redis, stream_key, partner, "ac")
    [rec] = oauth.requests
    check_request(rec, path=oauth.path, grant_type=REFRESH_TOKEN,
                  client_auth="client_secret_post", client_id=CLIENT_ID, form={
                      "grant_type": "refresh_token", "refresh_token": "***",
                      "scope": "segments:write offline", **client_form("client_secret_post")})
    assert oauth.grants_issued == [REFRESH_TOKEN] and oauth.refresh_tokens_used == [login]
    check_delivered_with(partner, oauth, {REFRESH_TOKEN})
    [_, rotated] = oauth.refresh_minted
    assert await redis.hgetall(store.refresh_key) == {
        "digest": digest(rotated), "data": "plain:" + rotated, "seed": "login:test"}


@pytest.mark.parametrize(("client", "algorithm"), [
    ("anonymous", "RS256"), ("none", "ES256"), ("client_secret_basic", "PS256")])
async def test_jwt_bearer_rfc7523(client, algorithm, site, redis_server, redis, stream_key,
                                  secret_watch):
    private, public = make_ec_key() if algorithm.startswith("ES") else make_rsa_key()
    secret_watch.add(private)
    claims = {"tenant": "acme", "segments": True}
    oauth = oauth_server("none" if client == "anonymous" else client,
                         jwt_public_key=public, jwt_algorithms=[algorithm],
                         jwt_issuer="iris-issuer", jwt_subject="svc-segments",
                         jwt_required_claims=claims)
    partner, base = await site(oauth)
    bodies = capture_bodies(oauth)
    auth: dict[str, Any] = {
        "type": "jwt_bearer", "token_url": base + oauth.path, "private_key": private,
        "algorithm": algorithm, "key_id": "key-1", "issuer": "iris-issuer",
        "subject": "svc-segments", "audience": base + oauth.path, "lifetime": 120,
        "claims": claims,
    }
    if client != "anonymous":
        auth.update(client_settings(client))
    config = make(redis_server.url, stream_key, base, auth)
    async with running(config):
        await deliver(redis, stream_key, partner, "jwt")
    [rec] = oauth.requests
    check_request(rec, path=oauth.path, grant_type=JWT_BEARER,
                  client_auth=None if client == "anonymous" else client,
                  client_id=None if client == "anonymous" else CLIENT_ID,
                  form={"grant_type": JWT_BEARER, "assertion": "***",
                        **({} if client == "anonymous" else client_form(client))})
    assert oauth.grants_issued == [JWT_BEARER]
    check_delivered_with(partner, oauth, {JWT_BEARER})
    # The assertion, verified with the server's public key.
    assertion = form_of(bodies[0])["assertion"]
    secret_watch.add(assertion)
    assert jwt.get_unverified_header(assertion) == {"alg": algorithm, "typ": "JWT",
                                                    "kid": "key-1"}
    decoded = jwt.decode(assertion, public, algorithms=[algorithm],
                         audience=base + oauth.path, issuer="iris-issuer")
    assert set(decoded) == {"iss", "sub", "aud", "iat", "exp", "jti", "tenant", "segments"}
    assert (decoded["sub"], decoded["tenant"], decoded["segments"]) == ("svc-segments", "acme",
                                                                        True)
    assert decoded["exp"] - decoded["iat"] == 120 and abs(decoded["iat"] - time.time()) < 10
    assert len(decoded["jti"]) == 32 and int(decoded["jti"], 16) >= 0


async def test_jwt_bearer_adobe_ims_reads_expires_in_as_milliseconds(site, redis_server, redis,
                                                                     stream_key, secret_watch):
    private, public = make_rsa_key()
    secret_watch.add(private)
    oauth = oauth_server("client_secret_post", ttl=900, jwt_public_key=public,
                         jwt_issuer="ORG@AdobeOrg", jwt_subject="TECH@techacct.adobe.com")
    partner, base = await site(oauth)
    metascope = {f"{base}/s/ent_dataservices_sdk": True}
    oauth.jwt_required_claims = metascope
    bodies = capture_bodies(oauth)
    config = make(redis_server.url, stream_key, base, {
        "type": "jwt_bearer", "form": "adobe_ims", "token_url": base + oauth.ims_path,
        "client_id": CLIENT_ID, "client_secret": SECRET, "private_key": private,
        "issuer": "ORG@AdobeOrg", "subject": "TECH@techacct.adobe.com",
        "audience": f"{base}/c/{CLIENT_ID}", "claims": metascope,
    })
    async with running(config) as worker:
        await deliver(redis, stream_key, partner, "ims")
        expiry = metric(worker, "iris_token_expiry_timestamp_seconds", destination=DEST)
        now = time.time()
    assert now + 890 <= expiry <= now + 901  # 900000 ms is 900 s, not 900000 s
    ttl_ms = await redis.pttl(store_of(config, redis).token_key)
    assert 880_000 <= ttl_ms <= 900_000
    [rec] = oauth.requests
    check_request(rec, path=oauth.ims_path, grant_type=None, client_auth="client_secret_post",
                  client_id=CLIENT_ID,
                  form={"client_id": CLIENT_ID, "client_secret": "***", "jwt_token": "***"})
    assert oauth.grants_issued == [IMS_JWT]
    check_delivered_with(partner, oauth, {IMS_JWT})
    assertion = form_of(bodies[0])["jwt_token"]
    secret_watch.add(assertion)
    decoded = jwt.decode(assertion, public, algorithms=["RS256"],
                         audience=f"{base}/c/{CLIENT_ID}", issuer="ORG@AdobeOrg")
    assert decoded["sub"] == "TECH@techacct.adobe.com"
    assert decoded[f"{base}/s/ent_dataservices_sdk"] is True


# --------------------------------------------------------------------------- 2. rotation

async def redis_values(redis: aioredis.Redis, pattern: str) -> dict[str, list[str]]:
    """Every key matching ``pattern`` with every name and value stored under it."""
    out: dict[str, list[str]] = {}
    async for key in redis.scan_iter(match=pattern, count=1000):
        kind = await redis.type(key)
        if kind == "none":  # expired since SCAN listed it (a rate schedule's key lives ~1 s)
            continue
        if kind == "hash":
            values = [x for item in (await redis.hgetall(key)).items() for x in item]
        elif kind == "string":
            values = [await redis.get(key) or ""]
        elif kind == "stream":
            values = [x for _, fields in await redis.xrange(key) for item in fields.items()
                      for x in item]
        else:
            raise AssertionError(f"unexpected {kind} at {key}")
        out[key] = values
    return out


@pytest.mark.parametrize(("grant", "encrypted"), [
    pytest.param("oauth2_refresh_token", False, id="refresh_token-plain"),
    pytest.param("oauth2_refresh_token", True, id="refresh_token-fernet"),
    pytest.param("oauth2_password", False, id="password-plain")])
async def test_rotated_refresh_tokens_survive_a_restart(grant, encrypted, site, redis_server,
                                                        redis, stream_key, secret_watch):
    oauth = oauth_server(ttl=2, users={USER: USER_PASSWORD})
    partner, base = await site(oauth)
    auth: dict[str, Any] = {"type": grant, "token_url": base + oauth.path,
                            "client_id": CLIENT_ID, "client_secret": SECRET}
    if grant == "oauth2_refresh_token":
        auth["refresh_token"] = oauth.seed_refresh_token()
    else:
        auth.update(username=USER, password=USER_PASSWORD)
    key = Fernet.generate_key().decode() if encrypted else None
    secret_watch.add(key or "")
    config = make(redis_server.url, stream_key, base, auth,
                  {"encryption_key": key} if key else None)
    initial = REFRESH_TOKEN if grant == "oauth2_refresh_token" else PASSWORD

    async with running(config):  # the first worker rotates at least twice
        async with trickle(redis, stream_key, prefix="a") as sent:
            await wait_for(lambda: oauth.grants_issued.count(REFRESH_TOKEN) >= 3, 8,
                           "three rotations", lambda: oauth.grants_issued)
        await all_delivered(partner, "a", sent[0])
    first_tokens = set(oauth.issued)
    spent_before = len(oauth.refresh_tokens_used)
    current_at_stop = oauth.refresh_minted[-1]

    async with running(config):  # a new worker carries on from the stored refresh token
        async with trickle(redis, stream_key, prefix="b") as sent:
            await wait_for(lambda: len(oauth.refresh_tokens_used) > spent_before and any(
                b.token not in first_tokens for b in partner.received), 8,
                "a delivery with a token the new worker refreshed",
                lambda: (oauth.grants_issued, explain(partner)))
        await all_delivered(partner, "b", sent[0])
        await wait_for(lambda: equals(pending_total(redis, config), 0), 5, "nothing pending")
        store = store_of(config, redis)  # read while the worker keeps a token stored
        token_record = await redis.hget(store.token_key, "data")
        everything = await redis_values(redis, f"{stream_key}*")

    assert oauth.reused_refresh_tokens == 0
    used = oauth.refresh_tokens_used
    assert len(used) == len(set(used)), "a refresh token was sent twice"
    assert used[spent_before] == current_at_stop  # the new worker used the stored one
    assert used == oauth.refresh_minted[:-1]  # each spent once, in order; the last is current
    assert [r.status for r in oauth.requests] == [200] * len(oauth.requests)
    assert oauth.grants_issued == [initial] + [REFRESH_TOKEN] * (len(oauth.grants_issued) - 1)
    check_delivered_with(partner, oauth, {initial, REFRESH_TOKEN}, still_valid=False)

    current = oauth.refresh_minted[-1]
    stored = await redis.hgetall(store.refresh_key)
    assert stored["digest"] == digest(current)
    lineage = ("config:" + digest(auth["refresh_token"])[:16]
               if grant == "oauth2_refresh_token" else "issued")
    assert stored["seed"] == lineage
    assert token_record is not None
    if key is None:
        assert stored["data"] == "plain:" + current
        assert token_record.startswith("plain:")
        return
    assert stored["data"].startswith("fernet:") and token_record.startswith("fernet:")
    fernet = Fernet(key)
    assert fernet.decrypt(stored["data"].removeprefix("fernet:").encode()).decode() == current
    assert store.refresh_key in everything and store.token_key in everything
    tokens = oauth.all_tokens()  # every access and refresh token ever issued
    assert len(tokens) >= 8
    leaks = [(k, t[:6]) for k, values in everything.items() for t in tokens
             for v in [k, *values] if t in v]
    assert leaks == [], f"tokens stored in clear: {leaks}"


async def test_stopping_during_a_refresh_keeps_the_rotated_refresh_token(site, redis_server,
                                                                       redis, stream_key):
    """A worker is stopped (a rolling deploy) while its proactive refresh is at the server. The
    server rotates all the same, so the spent refresh token is dead: whatever the worker does at
    shutdown, the next worker must not be left with only the spent one."""
    oauth = oauth_server(ttl=4)
    partner, base = await site(oauth)
    arrived = asyncio.Event()

    async def slow_second_refresh(request: web.Request) -> None:
        if len(oauth.requests) == 2:  # the worker's proactive refresh, at ~3 s of 4
            arrived.set()
            await asyncio.sleep(1.5)  # then the server spends the old one and rotates

    oauth.responder = slow_second_refresh
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_refresh_token", "token_url": base + oauth.path,
        "client_id": CLIENT_ID, "client_secret": SECRET,
        "refresh_token": oauth.seed_refresh_token(),
    })
    async with running(config):
        async with trickle(redis, stream_key, prefix="a") as sent:
            await asyncio.wait_for(arrived.wait(), 8)
        await all_delivered(partner, "a", sent[0])
    stopped = time.monotonic()
    await wait_for(lambda: len(oauth.refresh_minted) == 3, 3, "the server to rotate")
    seed, first, second = oauth.refresh_minted
    assert oauth.refresh_tokens_used == [seed, first]
    stored = await redis.hgetall(store_of(config, redis).refresh_key)
    assert stored["digest"] == digest(second), (
        f"the worker stopped {time.monotonic() - stopped:.1f} s before the server answered its "
        f"refresh request; the store kept the spent refresh token "
        f"(it is the {'first' if stored['digest'] == digest(first) else 'unknown'} one), and the "
        f"rotated one is lost")
    async with running(config) as worker:
        await deliver(redis, stream_key, partner, "b")
        assert metric(worker, "iris_auth_paused", destination=DEST) == 0
    assert oauth.reused_refresh_tokens == 0
    assert oauth.refresh_tokens_used == oauth.refresh_minted[:-1]


# --------------------------------------------------------------------------- 3. seed 003

SEED_003_BODY = ("{{ formUrlEncode('grant_type', 'client_credentials', 'client_id', "
                 "authData.clientId, 'client_secret', authData.clientSecret) | raw }}")
SEED_003_VALIDATIONS = [
    {"name": "access_token validation", "actual": "{{response.body.access_token is empty }}",
     "expected": "false"},
    {"name": "response status", "actual": "{{ response.status }}", "expected": "200"},
]


async def test_seed_003_templated_client_credentials(site, redis_server, redis, stream_key):
    oauth = oauth_server("client_secret_post", path="/ms-4711/identity/oauth/token")
    partner, base = await site(oauth)
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET,
        "data": {"moviestarId": "ms-4711"},
        "token_request": {
            "url": base + "/{{ authData.moviestarId }}/identity/oauth/token",
            "method": "POST", "content_type": "application/x-www-form-urlencoded",
            "body": SEED_003_BODY,
            "response_fields": {"accessToken": "{{ response.body.access_token }}",
                                "tokenType": "{{ response.body.token_type }}",
                                "expiresIn": "{{ response.body.expires_in }}"},
            "validations": SEED_003_VALIDATIONS,
        },
    })
    async with running(config) as worker:
        await deliver(redis, stream_key, partner, "tpl")
        expiry = metric(worker, "iris_token_expiry_timestamp_seconds", destination=DEST)
        assert abs(expiry - (time.time() + 3600)) < 10
    [rec] = oauth.requests
    check_request(rec, path="/ms-4711/identity/oauth/token", grant_type=CLIENT_CREDENTIALS,
                  client_auth="client_secret_post", client_id=CLIENT_ID,
                  content_type="application/x-www-form-urlencoded",
                  form={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                        "client_secret": "***"})
    assert oauth.grants_issued == [CLIENT_CREDENTIALS]
    check_delivered_with(partner, oauth, {CLIENT_CREDENTIALS})


async def test_templated_nested_response(site, redis_server, redis, stream_key):
    issuer = SimpleIssuer(lambda token: {"data": {"token": token, "ttl": "3600"}})
    partner, base = await site(issuer)
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_client_credentials", "token_url": base + issuer.path,
        "client_id": CLIENT_ID, "client_secret": SECRET,
        "token_request": {
            "body": SEED_003_BODY,
            "response_fields": {"accessToken": "{{ response.body.data.token }}",
                                "expiresIn": "{{ response.body.data.ttl }}"},
        },
    })
    async with running(config) as worker:
        await deliver(redis, stream_key, partner, "nest")
        expiry = metric(worker, "iris_token_expiry_timestamp_seconds", destination=DEST)
        assert abs(expiry - (time.time() + 3600)) < 10  # "3600", a string, read as seconds
    assert issuer.requests == [{"content_type": "application/x-www-form-urlencoded",
                                "form": {"grant_type": "client_credentials",
                                         "client_id": CLIENT_ID, "client_secret": "***"}}]
    [token] = issuer.issued
    assert {b.token for b in partner.received} == {token}
    assert partner.problems == [] and partner.auth_failures == 0


async def test_failed_validation_pauses_the_destination(site, redis_server, redis, stream_key,
                                                        caplog):
    issuer = SimpleIssuer(lambda token: {"access_token": "", "token_type": "Bearer",
                                         "expires_in": 3600})
    partner, base = await site(issuer)
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_client_credentials", "token_url": base + issuer.path,
        "client_id": CLIENT_ID, "client_secret": SECRET,
        "token_request": {"body": SEED_003_BODY, "validations": SEED_003_VALIDATIONS},
    })
    caplog.set_level(logging.DEBUG)
    async with running(config) as worker:
        for i in range(3):
            await redis.xadd(stream_key, {"uuid": f"v{i}", "segment": "s1", "dpuuid": "d"})
        await wait_for(lambda: metric(worker, "iris_auth_paused", destination=DEST) == 1, 8,
                       "the destination to pause")
        assert worker.health.readiness()[0]  # the pod can work; the destination waits
        assert f"destination {DEST} paused ({REFUSED})" in worker.health.paused_destinations()
        assert metric(worker, "iris_token_requests_total", destination=DEST,
                      outcome="error") == 1
        assert metric(worker, "iris_token_requests_total", destination=DEST,
                      outcome="success") == 0
        assert await pending_total(redis, config) > 0  # kept for later, not dead-lettered
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert ("token_request validation 'access_token validation' failed: expected 'false', "
            "got 'true' (HTTP 200)") in errors[0]
    assert "destination paused" in errors[0]
    assert len(issuer.requests) == 1  # a refusal is not retried
    assert partner.request_count == 0 and partner.received == []
    assert await redis.xlen(f"{stream_key}:dlq") == 0


# --------------------------------------------------------------------------- 4. fallback

async def test_refused_refresh_token_falls_back_to_the_password_grant(site, redis_server, redis,
                                                                      stream_key, caplog):
    oauth = oauth_server(ttl=2, users={USER: USER_PASSWORD})
    partner, base = await site(oauth)
    refusals: list[str] = []

    async def revoke_once(request: web.Request) -> web.Response | None:
        form = form_of(await request.read())
        if form.get("grant_type") == "refresh_token" and not refusals:
            refusals.append(form["refresh_token"])
            return error_response(OAuthError(400, "invalid_grant", "revoked by the test"))
        return None

    oauth.responder = revoke_once
    config = make(redis_server.url, stream_key, base, {
        "type": "oauth2_password", "token_url": base + oauth.path, "client_id": CLIENT_ID,
        "client_secret": SECRET, "username": USER, "password": USER_PASSWORD,
    })
    caplog.set_level(logging.DEBUG)
    async with running(config) as worker:
        async with trickle(redis, stream_key, prefix="f") as sent:
            await wait_for(lambda: REFRESH_TOKEN in oauth.grants_issued, 8,
                           "a refresh after the fallback", lambda: oauth.grants_issued)
        await all_delivered(partner, "f", sent[0])
        assert metric(worker, "iris_auth_paused", destination=DEST) == 0
        assert metric(worker, "iris_token_requests_total", destination=DEST,
                      outcome="error") == 1
        assert worker.health.readiness()[0]
    first, second = oauth.refresh_minted[:2]
    assert refusals == [first]  # the first refresh token was the one refused
    assert oauth.grants_issued[:3] == [PASSWORD, PASSWORD, REFRESH_TOKEN]
    assert oauth.grants_issued.count(PASSWORD) == 2  # exactly one extra password request
    statuses = [(r.grant_type, r.status, r.error) for r in oauth.requests[:4]]
    assert statuses == [("password", 200, None), (None, 400, "responder"),
                        ("password", 200, None), ("refresh_token", 200, None)]
    assert oauth.refresh_tokens_used[0] == second  # the new lineage, not the refused token
    assert oauth.reused_refresh_tokens == 0
    assert oauth.refresh_tokens_used == oauth.refresh_minted[1:-1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("refresh token was refused (invalid_grant)" in w
               and "initial grant" in w for w in warnings), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    check_delivered_with(partner, oauth, {PASSWORD, REFRESH_TOKEN}, still_valid=False)
    stored = await redis.hgetall(store_of(config, redis).refresh_key)
    assert stored["digest"] == digest(oauth.refresh_minted[-1])

