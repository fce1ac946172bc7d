"""JWT bearer against a token endpoint whose clock runs behind ours (acceptance 4 of issue 14).

PyJWT, like most servers, refuses an assertion whose ``iat`` lies in its own future, with no
leeway by default. iris back-dates ``iat`` by ``leeway`` (5 s unless configured), so a server
5 s behind accepts the assertion and the partner receives every event; without the leeway the
same server refuses it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from iris.cli.auth_commands import describe
from iris.config.model import Config, parse_config
from iris.errors import TokenError
from iris.runtime.metrics import Metrics
from iris.runtime.wiring import SharedTokens
from iris_demo.partner import PartnerServer
from iris_demo.servers import LocalServer
from iris_demo.token_server import OAuthError
from tests.conftest import SecretWatch, config_data, running, wait_for
from tests.oauth_server import JWT_BEARER, OAuthServer, make_rsa_key

DEST = "77"
ISSUER, SUBJECT = "iris-issuer", "svc-segments"


class BehindOAuthServer(OAuthServer):
    """``OAuthServer`` whose clock is ``behind`` seconds behind ours. It checks the assertion as
    usual, then checks ``iat`` and ``nbf`` as PyJWT would on its own clock: PyJWT refuses
    ``iat > now + leeway``, so ``leeway=-behind`` is exactly ``now - behind``. (``exp`` is left
    to the usual check: a clock behind ours only sees it later.) It keeps every assertion."""

    def __init__(self, *, behind: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.behind = behind
        self.assertions: list[str] = []

    def _verify_jwt(self, assertion: str, audience: str) -> None:
        self.assertions.append(assertion)
        super()._verify_jwt(assertion, audience)
        try:
            jwt.decode(assertion, self.jwt_public_key, algorithms=list(self.jwt_algorithms),
                       audience=audience, leeway=-self.behind, options={"verify_exp": False})
        except jwt.PyJWTError as e:
            raise OAuthError(400, "invalid_grant", f"assertion rejected: {e}") from None


@pytest.fixture
async def behind(secret_watch: SecretWatch) -> AsyncIterator[Callable[..., Any]]:
    """``await behind(seconds)``: a partner and its token endpoint, ``seconds`` behind us, on one
    loopback server; returns (token server, partner, auth settings for iris)."""
    servers: list[LocalServer] = []

    async def start(seconds: float) -> tuple[BehindOAuthServer, PartnerServer, dict[str, Any]]:
        private, public = make_rsa_key()
        secret_watch.add(private)
        tokens = BehindOAuthServer(behind=seconds, client_id="iris", client_secret=None,
                                   client_auth="none", jwt_public_key=public,
                                   jwt_issuer=ISSUER, jwt_subject=SUBJECT)
        partner = PartnerServer(destination_id=DEST, user_dpid="12345", client_id="74323",
                                tokens=tokens)
        app = web.Application()
        app.add_routes([*partner.routes(), *tokens.routes()])
        server = LocalServer()
        servers.append(server)
        secret_watch.token_servers.append(tokens)
        base = await server.start(app)
        auth = {"type": "jwt_bearer", "token_url": base + tokens.path, "private_key": private,
                "issuer": ISSUER, "subject": SUBJECT, "audience": base + tokens.path}
        return tokens, partner, {"url": base + "/segments/aam", "auth": auth}

    yield start
    for server in servers:
        await server.stop()


def make(redis_url: str, stream_key: str, where: dict[str, Any], **auth: Any) -> Config:
    dest = {"id": DEST, "url": where["url"], "user_dpid": "12345", "client_id": "74323",
            "allow_http": True, "batch": {"max_wait": 0.05}, "auth": {**where["auth"], **auth}}
    return parse_config(config_data(redis_url, stream_key, [dest]), env={})


def claims_of(assertion: str) -> dict[str, Any]:
    return jwt.decode(assertion, options={"verify_signature": False})


async def test_a_token_server_5_s_behind_accepts_the_assertion(behind, redis_server, redis,
                                                                stream_key, secret_watch):
    tokens, partner, where = await behind(5)
    config = make(redis_server.url, stream_key, where)
    assert config.destinations[0].auth.leeway == 5  # the default
    async with running(config):
        for i in range(3):
            await redis.xadd(stream_key, {"uuid": f"u{i}", "segment": "s1", "dpuuid": f"d{i}"})
        await wait_for(lambda: len(partner.segment_changes()) == 3, 10, "three deliveries",
                       lambda: (tokens.requests, partner.problems))
    assert sorted(partner.segment_changes()) == [
        (f"u{i}", f"d{i}", "s1", "1") for i in range(3)]
    assert [(r.ok, r.status, r.error, r.grant_type) for r in tokens.requests] == [
        (True, 200, None, JWT_BEARER)]
    [assertion] = tokens.assertions
    secret_watch.add(assertion)
    claims = claims_of(assertion)
    assert claims["exp"] - claims["iat"] == 300
    assert claims["iat"] <= time.time() - 5  # in the past of a clock 5 s behind
    assert partner.auth_failures == 0 and partner.problems == []


async def _token(config: Config, redis: aioredis.Redis) -> str:
    """One token request, as ``iris auth test --fresh`` makes it."""
    dest = config.destinations[0]
    return await describe(dest, SharedTokens.from_config(config, redis),
                          Metrics([dest.id], "t", "t"), fresh=True)


async def test_without_the_leeway_the_same_server_refuses(behind, redis_server, redis,
                                                          stream_key, secret_watch):
    tokens, _, where = await behind(5)
    with pytest.raises(TokenError) as refused:
        await _token(make(redis_server.url, stream_key, where, leeway=0), redis)
    assert [(r.ok, r.status, r.error) for r in tokens.requests] == [
        (False, 400, "invalid_grant")]
    # the endpoint's error_description names the cause, and iris keeps it (it is logged)
    assert "(invalid_grant): assertion rejected: The token is not yet valid (iat)" in str(
        refused.value)
    secret_watch.add(*tokens.assertions)


async def test_a_larger_skew_needs_a_larger_leeway(behind, redis_server, redis, stream_key,
                                                   secret_watch):
    tokens, _, where = await behind(20)
    with pytest.raises(TokenError):
        await _token(make(redis_server.url, f"{stream_key}:a", where), redis)
    line = await _token(make(redis_server.url, f"{stream_key}:b", where, leeway=30), redis)
    assert line.startswith(f"{DEST}: Bearer token, expires ")
    assert [(r.ok, r.error) for r in tokens.requests] == [(False, "invalid_grant"), (True, None)]
    secret_watch.add(*tokens.assertions)
    assert [claims_of(a)["exp"] - claims_of(a)["iat"] for a in tokens.assertions] == [300, 300]
