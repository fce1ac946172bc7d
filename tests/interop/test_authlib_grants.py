"""Interop: iris's other grants against Authlib, a real, well-kept OAuth 2 server.

``test_authlib_server`` proves the client credentials grant against Authlib. Here the same kind of
server (Authlib's ``AuthorizationServer`` in Flask, served by werkzeug in a thread, and the partner
endpoint behind Authlib's ``ResourceProtector``) runs the other grants iris speaks: the resource
owner password grant, the refresh token grant with rotation, the authorization code grant with
PKCE driven through ``iris auth login``, the RFC 7523 JWT bearer grant, and the
``client_secret_post`` and ``none`` client authentication methods. Every token iris delivers with
was issued, and is checked, by code we did not write.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    BaseGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
    ResourceOwnerPasswordCredentialsGrant,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerGrant
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, request
from joserfc.jwk import RSAKey

from iris.auth.exchange import Grant
from iris.auth.source import EndpointSource
from iris.config.auth import OAuth2Base
from iris.config.model import parse_config
from iris.http.token_endpoint import TokenEndpoint
from iris_demo.localredis import RedisProcess, free_port
from tests.conftest import SecretWatch, config_data, make_config, running, wait_for
from tests.interop.test_authlib_server import (
    CLIENT_ID,
    SECRET,
    IssuedToken,
    PartnerClient,
    add_segment_route,
    serving,
)

ROOT = Path(__file__).resolve().parents[2]
DEST = "423"
SCOPE = "segments"
ALL_METHODS = ["client_secret_basic", "client_secret_post", "none"]
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# '+', '@' and '%20' must reach Authlib as written: form encoding's own metacharacters.
USERNAME = "ana.lima+ops@example.com"
PASSWORD = "p@ss w+rd%20&é="
PACE = 0.05  # seconds between events while a test waits for token rotations (a feed rate)


# --------------------------------------------------------------------------- Authlib's side

@dataclass(frozen=True)
class User:
    name: str

    def get_user_id(self) -> str:
        return self.name


ANA = User(USERNAME)


@dataclass(eq=False)
class RegisteredClient(PartnerClient):
    """A client as Authlib models a registration: the grant types it may use, the one
    ``token_endpoint_auth_method`` it registered (Authlib accepts no other), its redirect URI."""

    auth_method: str = "client_secret_basic"
    grant_types: frozenset[str] = frozenset()
    redirect_uri: str | None = None

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass(eq=False)
class RefreshRecord:
    refresh_token: str = field(repr=False)
    client_id: str
    scope: str
    user: User
    revoked: bool = False

    def check_client(self, client: RegisteredClient) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope


@dataclass(eq=False)
class AuthCode:
    code: str = field(repr=False)
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True)
class TokenCall:
    """One request to the token endpoint, as it arrived, and Authlib's answer."""

    content_type: str
    accept_encoding: str
    authorization_scheme: str  # "Basic", or "" without an Authorization header
    body: str = field(repr=False)
    status: int
    error: str | None

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body, keep_blank_values=True, strict_parsing=True)

    @property
    def grant_type(self) -> str:
        return dict(self.pairs).get("grant_type", "")


@dataclass(frozen=True)
class Issued:
    """What Authlib issued, and how it had authenticated the client (``request.auth_method``;
    None where the grant authenticates no client, as RFC 7523's)."""

    grant_type: str
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    auth_method: str | None
    user: str | None
    scope: str
    expires_in: int


def authority_of(grant: BaseGrant) -> Authority:
    server = grant.server
    assert isinstance(server, Authority)
    return server


class PasswordGrant(ResourceOwnerPasswordCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS  # the client's registration picks one

    def authenticate_user(self, username: str, password: str) -> User | None:
        return authority_of(self).authenticate_user(username, password)


class CredentialsGrant(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS


class RotatingRefreshGrant(RefreshTokenGrant):
    """RFC 6749 §6 with rotation (RFC 9700 §4.14.2): each refresh issues a new refresh token
    and revokes the one presented."""

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        return authority_of(self).present_refresh_token(refresh_token)

    def authenticate_user(self, refresh_token: RefreshRecord) -> User:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        authority_of(self).revoke(refresh_token)


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def save_authorization_code(self, code: str, oauth_request: OAuth2Request) -> None:
        data = oauth_request.payload.data
        authority_of(self).save_code(AuthCode(
            code, oauth_request.client.get_client_id(), oauth_request.payload.redirect_uri,
            oauth_request.scope, oauth_request.user, data.get("code_challenge"),
            data.get("code_challenge_method"),
        ))

    def query_authorization_code(self, code: str, client: RegisteredClient) -> AuthCode | None:
        return authority_of(self).code(code, client)

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        authority_of(self).delete_code(authorization_code)

    def authenticate_user(self, authorization_code: AuthCode) -> User:
        return authorization_code.user


class JwtGrant(JWTBearerGrant):
    """RFC 7523 §2.1. Authlib finds the client by the assertion's ``iss`` and authenticates
    none at the token endpoint; ``aud`` must be one of ``get_audiences()``."""

    def resolve_issuer_client(self, issuer: str) -> RegisteredClient | None:
        return authority_of(self).query_client(issuer)

    def resolve_client_public_key(self, client: RegisteredClient) -> RSAKey:
        key = authority_of(self).jwt_key
        assert key is not None
        return key

    def get_audiences(self) -> list[str]:
        return [authority_of(self).token_url]

    def authenticate_user(self, subject: str) -> User | None:
        return ANA if subject == ANA.name else None

    def has_granted_permission(self, client: RegisteredClient, user: User) -> bool:
        return user == ANA

    def process_assertion_claims(self, assertion: str) -> dict[str, Any]:
        headers, _ = self.extract_assertion(assertion)
        claims = dict(super().process_assertion_claims(assertion))
        authority_of(self).record_assertion(assertion, dict(headers), claims)
        return claims


GrantSpec = type[BaseGrant] | tuple[type[BaseGrant], list[Any]]


class Authority(AuthorizationServer):
    """Authlib's authorization server with the grants a test registers (token endpoint at
    ``/oauth/token``, authorization endpoint at ``/oauth/authorize``, which consents for Ana
    at once) and the partner endpoint ``/segments/aam`` behind Authlib's ``ResourceProtector``
    (scope ``segments`` required). All state is in memory."""

    def __init__(self, client_secret: str, *, auth_method: str, grant_types: set[str],
                 grants: list[GrantSpec], expires_in: dict[str, int] | None = None,
                 redirect_uri: str | None = None) -> None:
        self.lock = threading.Lock()
        self.client = RegisteredClient(CLIENT_ID, client_secret, self._presented,
                                       auth_method=auth_method,
                                       grant_types=frozenset(grant_types),
                                       redirect_uri=redirect_uri)
        self.expires_in = expires_in or {}  # per grant type; 3600 s otherwise
        self.base_url = ""
        self.jwt_key: RSAKey | None = None
        self.calls: list[TokenCall] = []
        self.issued: list[Issued] = []
        self.tokens: dict[str, IssuedToken] = {}
        self.presented_secrets: list[str] = []
        self.logins: list[tuple[str, str]] = []  # (username, password) as Authlib decoded them
        self.refresh_records: dict[str, RefreshRecord] = {}
        self.presented_refresh: list[str] = []
        self.codes: dict[str, AuthCode] = {}
        self.codes_issued: list[str] = []
        self.authorize_queries: list[dict[str, str]] = []
        self.assertions: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.resource_authorizations: list[str] = []
        self.received: list[tuple[str, dict[str, Any]]] = []
        app = Flask("authlib-grants")
        super().__init__(app, query_client=self._query_client, save_token=self._save_token)
        self.register_token_generator("default", BearerTokenGenerator(
            lambda **_: generate_token(42), lambda **_: generate_token(48),
            expires_generator=lambda client, grant_type: self.expires_in.get(grant_type, 3600),
        ))
        for spec in grants:
            grant, extensions = spec if isinstance(spec, tuple) else (spec, None)
            self.register_grant(grant, extensions)
        self.app = self._routes(app)

    # -- what the grants call ------------------------------------------------------------------

    def generate_token(self, grant_type: str, client: RegisteredClient, user: Any = None,
                       scope: str | None = None, expires_in: int | None = None,
                       include_refresh_token: bool = True) -> dict[str, Any]:
        """A refresh token only for a client registered for the refresh_token grant."""
        return dict(super().generate_token(
            grant_type, client, user, scope, expires_in,
            include_refresh_token and client.check_grant_type("refresh_token")))

    def _presented(self, secret: str) -> None:
        with self.lock:
            self.presented_secrets.append(secret)

    def _query_client(self, client_id: str) -> RegisteredClient | None:
        return self.client if client_id == self.client.client_id else None

    def _save_token(self, token: dict[str, Any], oauth_request: OAuth2Request) -> None:
        client_id = oauth_request.client.get_client_id()
        scope = token.get("scope", "")
        user = oauth_request.user
        access = IssuedToken(token["access_token"], client_id, scope, time.time(),
                             int(token["expires_in"]))
        refresh = token.get("refresh_token")
        with self.lock:
            self.tokens[access.access_token] = access
            if refresh is not None:
                self.refresh_records[refresh] = RefreshRecord(refresh, client_id, scope, user)
            self.issued.append(Issued(
                oauth_request.payload.grant_type, access.access_token, refresh,
                oauth_request.auth_method, user.name if user else None, scope,
                access.expires_in))

    def authenticate_user(self, username: str, password: str) -> User | None:
        with self.lock:
            self.logins.append((username, password))
        if username == ANA.name and hmac.compare_digest(password.encode(), PASSWORD.encode()):
            return ANA
        return None

    def present_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        with self.lock:
            self.presented_refresh.append(refresh_token)
            record = self.refresh_records.get(refresh_token)
            return record if record is not None and not record.revoked else None

    def revoke(self, record: RefreshRecord) -> None:
        with self.lock:
            record.revoked = True

    def save_code(self, code: AuthCode) -> None:
        with self.lock:
            self.codes[code.code] = code
            self.codes_issued.append(code.code)

    def code(self, code: str, client: RegisteredClient) -> AuthCode | None:
        with self.lock:
            found = self.codes.get(code)
        return found if found is not None and found.client_id == client.client_id else None

    def delete_code(self, code: AuthCode) -> None:
        with self.lock:
            self.codes.pop(code.code, None)

    def record_assertion(self, assertion: str, headers: dict[str, Any],
                         claims: dict[str, Any]) -> None:
        with self.lock:
            self.assertions.append((assertion, headers, claims))

    # -- HTTP ----------------------------------------------------------------------------------

    def _routes(self, app: Flask) -> Flask:
        @app.post("/oauth/token")
        def token() -> Any:
            scheme = request.headers.get("Authorization", "").partition(" ")[0]
            body = request.get_data(as_text=True)
            response = self.create_token_response()
            answer = response.get_json(silent=True) or {}
            with self.lock:
                self.calls.append(TokenCall(
                    request.content_type or "", request.headers.get("Accept-Encoding", ""),
                    scheme, body, response.status_code, answer.get("error")))
            return response

        @app.get("/oauth/authorize")
        def authorize() -> Any:
            with self.lock:
                self.authorize_queries.append(request.args.to_dict())
            try:
                grant = self.get_consent_grant(end_user=ANA)
            except OAuth2Error as error:
                return self.handle_error_response(None, error)
            return self.create_authorization_response(grant=grant, grant_user=ANA)

        add_segment_route(app, self.lookup, self.lock, self.resource_authorizations,
                          self.received, SCOPE)

        return app

    # -- what tests read -----------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth/token"

    @property
    def authorize_url(self) -> str:
        return self.base_url + "/oauth/authorize"

    @property
    def resource_url(self) -> str:
        return self.base_url + "/segments/aam"

    def lookup(self, access_token: str) -> IssuedToken | None:
        with self.lock:
            return self.tokens.get(access_token)

    def issued_by(self, grant_type: str) -> list[Issued]:
        with self.lock:
            return [i for i in self.issued if i.grant_type == grant_type]

    def calls_of(self, grant_type: str) -> list[TokenCall]:
        with self.lock:
            return [c for c in self.calls if c.grant_type == grant_type]

    def segment_changes(self) -> list[tuple[str, str]]:
        with self.lock:
            bodies = [body for _, body in self.received]
        return [(user["AAM_UUID"], seg["Segment_ID"])
                for body in bodies for user in body["Users"] for seg in user["Segments"]]

    def secrets(self) -> list[str]:
        with self.lock:
            return ([i.access_token for i in self.issued]
                    + [i.refresh_token for i in self.issued if i.refresh_token]
                    + list(self.codes_issued) + [a for a, _, _ in self.assertions])

    def describe(self) -> str:
        with self.lock:
            calls = [(c.grant_type, c.status, c.error) for c in self.calls]
            return (f"(token calls={calls}, resource requests={len(self.resource_authorizations)}"
                    f", accepted={len(self.received)})")


@pytest.fixture
def authority(
    monkeypatch: pytest.MonkeyPatch, secret_watch: SecretWatch
) -> Iterator[Callable[..., Authority]]:
    """Start Authlib authorization servers (each with its partner endpoint); stop at teardown."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http, loopback only
    # Authlib logs every token it issues at DEBUG: the server's logs, not iris's, so they are
    # kept out of the leak scan, which judges iris (as test_authlib_server does).
    authlib_log = logging.getLogger("authlib")
    old_level = authlib_log.level
    authlib_log.setLevel(logging.INFO)
    started: list[Authority] = []

    with ExitStack() as stack:

        def start(client_secret: str = SECRET, **settings: Any) -> Authority:
            server = Authority(client_secret, **settings)
            secret_watch.add(client_secret, PASSWORD)
            started.append(server)
            server.base_url = stack.enter_context(serving(server.app))
            return server

        try:
            yield start
        finally:
            authlib_log.setLevel(old_level)
    for server in started:  # the leak scan runs after this teardown
        secret_watch.add(*server.secrets())


# --------------------------------------------------------------------------- iris's side

def form(*pairs: tuple[str, str]) -> str:
    """RFC 6749 Appendix B as iris writes it: UTF-8, every reserved character percent-encoded,
    a space as %20."""
    return urlencode(list(pairs), quote_via=quote)


def destination(server: Authority, auth: dict[str, Any]) -> dict[str, Any]:
    return {"id": DEST, "url": server.resource_url, "user_dpid": "12345", "client_id": "74323",
            "allow_http": True, "auth": auth, "batch": {"max_wait": 0.05}}


def parsed_auth(server: Authority, auth: dict[str, Any]) -> OAuth2Base:
    """The auth section exactly as iris's config loader builds it."""
    config = parse_config({"destinations": [destination(server, auth)]}, env={})
    parsed = config.destinations[0].auth
    assert isinstance(parsed, OAuth2Base)
    return parsed


async def fetch_initial(server: Authority, auth: dict[str, Any]) -> Grant:
    async with aiohttp.ClientSession() as session:
        source = EndpointSource(DEST, parsed_auth(server, auth), TokenEndpoint(session, 10),
                                allow_http=True)
        return await source.initial()


async def stored_refresh_token(redis: aioredis.Redis, stream_key: str) -> str | None:
    """The refresh token iris keeps for every replica (token store: ``<prefix>:<dest>:refresh``,
    written in clear without an encryption key)."""
    data = await redis.hget(f"{stream_key}:auth:{DEST}:refresh", "data")
    return data.removeprefix("plain:") if data is not None else None


class Feed:
    """Events into the stream, and what the partner must end up with."""

    def __init__(self, redis: aioredis.Redis, stream_key: str) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.sent: Counter[tuple[str, str]] = Counter()

    async def add(self, count: int = 1) -> None:
        for _ in range(count):
            n = sum(self.sent.values())
            uuid, segment = f"user{n:03d}", f"s{n % 3}"
            await self.redis.xadd(self.stream_key, {"uuid": uuid, "segment": segment,
                                                    "dpuuid": f"dp-{uuid}"})
            self.sent[(uuid, segment)] += 1

    async def until(self, condition: Callable[[], Awaitable[bool] | bool], timeout: float,
                    what: str, server: Authority) -> None:
        """Keep events flowing (iris renews tokens as batches need them) until ``condition``."""
        deadline = time.monotonic() + timeout
        while not await holds(condition):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                     f"{server.describe()}")
            await self.add()
            await asyncio.sleep(PACE)

    async def delivered(self, server: Authority, timeout: float = 10) -> None:
        total = sum(self.sent.values())
        await wait_for(lambda: len(server.segment_changes()) >= total, timeout,
                       f"all {total} segment changes at the Authlib-protected resource",
                       server.describe)


async def holds(condition: Callable[[], Awaitable[bool] | bool]) -> bool:
    result = condition()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


def assert_resource_saw_only(server: Authority, feed: Feed) -> None:
    """Every partner request carried a token Authlib issued, and Authlib accepted each."""
    with server.lock:
        authorizations = list(server.resource_authorizations)
        received = list(server.received)
        issued = {i.access_token for i in server.issued}
    assert authorizations
    assert all(a.startswith("Bearer ") and a.removeprefix("Bearer ") in issued
               for a in authorizations)
    assert len(received) == len(authorizations)  # none refused
    assert Counter(server.segment_changes()) == feed.sent
    for _, body in received:
        assert (body["User_DPID"], body["Client_ID"], body["AAM_Destination_Id"]) == (
            "12345", "74323", DEST)


FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"


async def renewed(server: Authority, redis: aioredis.Redis, stream_key: str, times: int) -> bool:
    """Authlib answered ``times`` refresh grants, iris stored the last rotated refresh token and
    the partner accepted a request carrying the last access token."""
    issued = server.issued_by("refresh_token")
    if len(issued) < times:
        return False
    with server.lock:
        used = {token for token, _ in server.received}
    return issued[-1].access_token in used and (
        await stored_refresh_token(redis, stream_key) == issued[-1].refresh_token)


def refresh_fields(refresh_token: str, method: str) -> list[tuple[str, str]]:
    fields = [("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("scope", SCOPE)]
    return fields + ([("client_id", CLIENT_ID)] if method == "none" else [])


# --------------------------------------------------------------------------- 1: password

async def test_password_grant_delivers_end_to_end(
    authority: Callable[..., Authority], redis_server: RedisProcess, redis: aioredis.Redis,
    stream_key: str,
) -> None:
    server = authority(auth_method="client_secret_basic", grant_types={"password"},
                       grants=[PasswordGrant])
    auth = {"type": "oauth2_password", "token_url": server.token_url, "client_id": CLIENT_ID,
            "client_secret": SECRET, "username": USERNAME, "password": PASSWORD,
            "scope": SCOPE}
    feed = Feed(redis, stream_key)
    async with running(make_config(redis_server.url, stream_key, [destination(server, auth)])):
        await feed.add(30)
        await feed.delivered(server)

    assert server.calls == [TokenCall(
        FORM_CONTENT_TYPE, "gzip", "Basic",
        form(("grant_type", "password"), ("username", USERNAME), ("password", PASSWORD),
             ("scope", SCOPE)),
        200, None)]
    assert server.logins == [(USERNAME, PASSWORD)]  # Authlib decoded exactly Ana's credentials
    assert server.presented_secrets == [SECRET]
    [issued] = server.issued
    assert (issued.grant_type, issued.auth_method, issued.user, issued.scope,
            issued.refresh_token) == ("password", "client_secret_basic", USERNAME, SCOPE, None)
    assert_resource_saw_only(server, feed)
    assert set(server.resource_authorizations) == {f"Bearer {issued.access_token}"}


# --------------------------------------------------------------------------- 2: refresh token

async def password_grant_by_hand(server: Authority) -> str:
    """A refresh token Authlib issues: RFC 6749 §4.3 with §2.3.1 Basic, sent by the test."""
    basic = base64.b64encode(f"{quote(CLIENT_ID, safe='')}:{quote(SECRET, safe='')}".encode())
    fields = {"grant_type": "password", "username": USERNAME, "password": PASSWORD,
              "scope": SCOPE}
    async with aiohttp.ClientSession() as session, session.post(
        server.token_url, data=fields, headers={"Authorization": f"Basic {basic.decode()}"},
    ) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert isinstance(answer["refresh_token"], str)
    return str(answer["refresh_token"])


async def test_refresh_token_grant_with_rotation(
    authority: Callable[..., Authority], redis_server: RedisProcess, redis: aioredis.Redis,
    stream_key: str,
) -> None:
    server = authority(auth_method="client_secret_basic",
                       grant_types={"password", "refresh_token"},
                       grants=[PasswordGrant, RotatingRefreshGrant],
                       expires_in={"refresh_token": 2})
    seed = await password_grant_by_hand(server)
    auth = {"type": "oauth2_refresh_token", "token_url": server.token_url,
            "client_id": CLIENT_ID, "client_secret": SECRET, "refresh_token": seed,
            "scope": SCOPE}
    config = make_config(redis_server.url, stream_key, [destination(server, auth)])
    feed = Feed(redis, stream_key)

    def lineage() -> list[str]:
        """The seed, then every refresh token Authlib rotated to, in issue order."""
        return [seed] + [str(i.refresh_token) for i in server.issued_by("refresh_token")]

    async with running(config):
        # 2 s tokens: iris renews at ~1.5 s while batches keep asking for a credential
        await feed.until(lambda: renewed(server, redis, stream_key, 3), 10,
                         "deliveries with the token of a third refresh grant", server)
        await feed.delivered(server)
    first = lineage()
    assert len(first) >= 4
    assert server.presented_refresh == first[:-1]  # each exactly once, the newest each time
    assert await stored_refresh_token(redis, stream_key) == first[-1]
    assert [r.revoked for r in map(server.refresh_records.__getitem__, first)] == (
        [True] * (len(first) - 1) + [False])
    calls = server.calls_of("refresh_token")
    assert calls == [TokenCall(FORM_CONTENT_TYPE, "gzip", "Basic",
                               form(*refresh_fields(token, "client_secret_basic")), 200, None)
                     for token in first[:-1]]
    refreshed = server.issued_by("refresh_token")
    assert {(i.expires_in, i.auth_method, i.user, i.scope) for i in refreshed} == {
        (2, "client_secret_basic", USERNAME, SCOPE)}
    assert_resource_saw_only(server, feed)
    used = {a.removeprefix("Bearer ") for a in server.resource_authorizations}
    assert len(used & {i.access_token for i in refreshed}) >= 2  # iris moved on to new tokens

    # A worker started afterwards lives on the rotated refresh token in the store, not on the
    # (revoked) one in its config.
    async with running(config):
        await feed.until(lambda: renewed(server, redis, stream_key, len(first)), 10,
                         "deliveries with the token of the new worker's refresh", server)
        await feed.delivered(server)
    second = lineage()
    assert len(second) > len(first)
    assert server.presented_refresh[len(first) - 1] == first[-1]
    assert server.presented_refresh == second[:-1]
    assert len(set(second)) == len(second)  # Authlib never saw a refresh token twice
    assert {(c.status, c.error) for c in server.calls} == {(200, None)}
    assert await stored_refresh_token(redis, stream_key) == second[-1]
    assert_resource_saw_only(server, feed)


# --------------------------------------------------------------------------- 3: code + PKCE

async def printed_url(login: asyncio.subprocess.Process, timeout: float) -> tuple[str, list[str]]:
    """The URL ``iris auth login`` prints on the line after "Open this URL", indented by two."""
    lines: list[str] = []

    async def read() -> str:
        assert login.stdout is not None
        prompted = False
        while raw := await login.stdout.readline():
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if line.startswith("Open this URL"):
                prompted = True
            elif prompted and line.startswith("  "):
                return line.strip()
        raise AssertionError(f"iris auth login ended without printing a URL: {lines}")

    try:
        return await asyncio.wait_for(read(), timeout), lines
    except TimeoutError:
        raise AssertionError(f"no URL from iris auth login in {timeout} s: {lines}") from None


@pytest.mark.parametrize("method", ["client_secret_basic", "none"])
async def test_authorization_code_with_pkce_through_iris_auth_login(
    method: str, authority: Callable[..., Authority], redis_server: RedisProcess,
    redis: aioredis.Redis, stream_key: str, tmp_path: Path,
) -> None:
    public = method == "none"
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    server = authority("" if public else SECRET, auth_method=method,
                       grant_types={"authorization_code", "refresh_token"},
                       grants=[(CodeGrant, [CodeChallenge(required=True)]),
                               RotatingRefreshGrant],
                       expires_in={"authorization_code": 2, "refresh_token": 2},
                       redirect_uri=redirect_uri)
    auth = {"type": "oauth2_authorization_code", "authorization_url": server.authorize_url,
            "token_url": server.token_url, "client_id": CLIENT_ID,
            "redirect_uri": redirect_uri, "scope": SCOPE}
    if not public:
        auth["client_secret"] = SECRET
    config_file = tmp_path / "iris.yaml"
    config_file.write_text(yaml.safe_dump(
        config_data(redis_server.url, stream_key, [destination(server, auth)]),
        allow_unicode=True), encoding="utf-8")
    stderr_file = tmp_path / "login.stderr"

    with stderr_file.open("wb") as stderr:
        login = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "iris", "auth", "login", "-c", str(config_file),
            "--destination", DEST, "--timeout", "30",
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=ROOT, env=dict(os.environ))
        try:
            url, head = await printed_url(login, 10)
            # The person: open the URL; Authlib consents for Ana and redirects to iris.
            async with aiohttp.ClientSession() as browser, browser.get(url) as page:
                page_text = await page.text()
                redirects = [(r.status, r.headers["Location"]) for r in page.history]
                landed = (page.status, str(page.url.with_query(None)), page_text)
            rest, _ = await asyncio.wait_for(login.communicate(), 10)
        finally:
            if login.returncode is None:
                login.kill()
                await login.wait()
    out = "\n".join(head) + "\n" + rest.decode()
    err = stderr_file.read_text(encoding="utf-8", errors="replace")
    assert login.returncode == 0, (out, err)

    [query] = server.authorize_queries
    state, challenge = query["state"], query["code_challenge"]
    assert query == {"response_type": "code", "client_id": CLIENT_ID,
                     "redirect_uri": redirect_uri, "state": state, "scope": SCOPE,
                     "code_challenge": challenge, "code_challenge_method": "S256"}
    assert url.startswith(server.authorize_url + "?")
    [code] = server.codes_issued
    assert redirects == [(302, f"{redirect_uri}?code={code}&state={state}")]
    assert landed == (200, redirect_uri, "iris is authorised. You may close this window.\n")

    [exchange] = server.calls_of("authorization_code")
    verifier = dict(exchange.pairs)["code_verifier"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,128}", verifier)
    assert create_s256_code_challenge(verifier) == challenge  # RFC 7636 §4.6, as Authlib did
    fields = [("grant_type", "authorization_code"), ("code", code),
              ("redirect_uri", redirect_uri), ("code_verifier", verifier)]
    fields += [("client_id", CLIENT_ID)] if public else []
    assert exchange == TokenCall(FORM_CONTENT_TYPE, "gzip", "" if public else "Basic",
                                 form(*fields), 200, None)
    assert server.codes == {}  # spent: Authlib deleted it
    assert server.presented_secrets == ([] if public else [SECRET])
    [issued] = server.issued_by("authorization_code")
    assert (issued.auth_method, issued.user, issued.scope, issued.expires_in) == (
        method, USERNAME, SCOPE, 2)
    assert issued.refresh_token is not None
    refresh_key = f"{stream_key}:auth:{DEST}:refresh"
    assert [line for line in out.splitlines() if line.startswith("Logged in:")] == [
        f"Logged in: destination {DEST} has a refresh token in Redis at {refresh_key} (not "
        "encrypted (set token_store.encryption_key)); its first access token lasts 2 s. "
        "Workers renew it from now on."]
    assert await stored_refresh_token(redis, stream_key) == issued.refresh_token
    for secret in (SECRET, code, verifier, issued.access_token, issued.refresh_token):
        assert secret not in out and secret not in err

    # Workers renew from the refresh token the login stored.
    feed = Feed(redis, stream_key)
    config = make_config(redis_server.url, stream_key, [destination(server, auth)])
    async with running(config):
        await feed.until(lambda: renewed(server, redis, stream_key, 1), 10,
                         "deliveries with a token refreshed from the login's", server)
        await feed.delivered(server)
    refreshed = server.issued_by("refresh_token")
    lineage = [issued.refresh_token] + [str(i.refresh_token) for i in refreshed]
    assert server.presented_refresh == lineage[:-1]
    assert server.calls_of("refresh_token") == [
        TokenCall(FORM_CONTENT_TYPE, "gzip", "" if public else "Basic",
                  form(*refresh_fields(token, method)), 200, None)
        for token in lineage[:-1]]
    assert {(i.auth_method, i.user, i.scope) for i in refreshed} == {(method, USERNAME, SCOPE)}
    assert_resource_saw_only(server, feed)
    assert f"Bearer {refreshed[0].access_token}" in server.resource_authorizations


# --------------------------------------------------------------------------- 4: JWT bearer

async def test_jwt_bearer_grant_delivers_end_to_end(
    authority: Callable[..., Authority], redis_server: RedisProcess, redis: aioredis.Redis,
    stream_key: str, secret_watch: SecretWatch,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    secret_watch.add(pem)
    # A client that has no secret: Authlib's JWTBearerGrant names the client by the
    # assertion's iss and authenticates none at the token endpoint.
    server = authority("", auth_method="none", grant_types={JWT_BEARER}, grants=[JwtGrant])
    server.jwt_key = RSAKey.import_key(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    auth = {"type": "jwt_bearer", "token_url": server.token_url, "private_key": pem,
            "issuer": CLIENT_ID, "subject": USERNAME, "audience": server.token_url,
            "key_id": "iris-2026-05", "scope": SCOPE}
    feed = Feed(redis, stream_key)
    async with running(make_config(redis_server.url, stream_key, [destination(server, auth)])):
        await feed.add(20)
        await feed.delivered(server)

    [(assertion, headers, claims)] = server.assertions
    assert server.calls == [TokenCall(
        FORM_CONTENT_TYPE, "gzip", "",
        form(("grant_type", JWT_BEARER), ("assertion", assertion), ("scope", SCOPE)),
        200, None)]
    assert headers == {"alg": "RS256", "typ": "JWT", "kid": "iris-2026-05"}
    assert sorted(claims) == ["aud", "exp", "iat", "iss", "jti", "sub"]
    assert (claims["iss"], claims["sub"], claims["aud"]) == (CLIENT_ID, USERNAME,
                                                             server.token_url)
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 30
    assert re.fullmatch(r"[0-9a-f]{32}", claims["jti"])
    assert server.presented_secrets == []
    [issued] = server.issued
    assert (issued.grant_type, issued.auth_method, issued.user, issued.scope,
            issued.refresh_token) == (JWT_BEARER, None, USERNAME, SCOPE, None)
    assert_resource_saw_only(server, feed)
    assert set(server.resource_authorizations) == {f"Bearer {issued.access_token}"}


# --------------------------------------------------------------------------- 5: client auth

@pytest.mark.parametrize(("auth_type", "method"), [
    pytest.param("oauth2_client_credentials", "client_secret_post", id="client_credentials-post"),
    pytest.param("oauth2_password", "client_secret_post", id="password-post"),
    pytest.param("oauth2_password", "none", id="password-none"),
])
async def test_client_authentication_methods(
    auth_type: str, method: str, authority: Callable[..., Authority],
) -> None:
    """Authlib's server accepts the one method a client registered (its
    ``token_endpoint_auth_method``): iris's ``client_auth`` must send exactly that."""
    public = method == "none"
    password = auth_type == "oauth2_password"
    grant_type = "password" if password else "client_credentials"
    server = authority("" if public else SECRET, auth_method=method, grant_types={grant_type},
                       grants=[CredentialsGrant, PasswordGrant])
    auth: dict[str, Any] = {"type": auth_type, "token_url": server.token_url,
                            "client_id": CLIENT_ID, "client_auth": method, "scope": SCOPE}
    if not public:
        auth["client_secret"] = SECRET
    if password:
        auth.update(username=USERNAME, password=PASSWORD)
    grant = await fetch_initial(server, auth)

    fields = [("grant_type", grant_type)]
    fields += [("username", USERNAME), ("password", PASSWORD)] if password else []
    fields += [("scope", SCOPE), ("client_id", CLIENT_ID)]
    fields += [] if public else [("client_secret", SECRET)]
    assert server.calls == [TokenCall(FORM_CONTENT_TYPE, "gzip", "", form(*fields), 200, None)]
    assert server.presented_secrets == ([] if public else [SECRET])
    assert server.logins == ([(USERNAME, PASSWORD)] if password else [])
    [issued] = server.issued
    assert (issued.grant_type, issued.auth_method, issued.scope) == (grant_type, method, SCOPE)
    assert (grant.access_token, grant.expires_in, grant.token_type) == (
        issued.access_token, 3600, "Bearer")
