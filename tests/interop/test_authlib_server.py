"""Interop: iris against Authlib, a real, well-kept OAuth 2 server, not only our own.

The token servers in ``iris_demo`` were written from the same reading of seed 000 and RFC 6749
as the client, so a misunderstanding shared by both would pass every other test. Here the token
endpoint is Authlib's ``AuthorizationServer`` with its ``ClientCredentialsGrant`` and the partner
endpoint is guarded by Authlib's ``ResourceProtector``: a token iris obtains and a request that
gets through prove the wire format against code we did not write.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Request, TokenMixin
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Flask, request
from werkzeug.serving import make_server

from iris.auth.exchange import Grant
from iris.auth.source import EndpointSource
from iris.config.auth import ClientCredentialsAuth
from iris.config.model import parse_config
from iris.errors import TokenError
from iris.http.token_endpoint import TokenEndpoint
from iris_demo.localredis import RedisProcess
from tests.conftest import SecretWatch, make_config, running, wait_for

EXPIRES_IN = 3600
# ':' splits id from secret in Basic; '+' and '%' are form-encoding's own metacharacters; 'é' is
# not ASCII. All must survive iris's RFC 6749 §2.3.1 encoding and Authlib's decoding.
CLIENT_ID = "iris:aam-é"
SECRET = "s3cr+et%2B:é/=wd"
SECRET_WITH_SPACE = "s3cr+et%2B:é wd"


# --------------------------------------------------------------------------- Authlib's side

@dataclass(eq=False)
class PartnerClient(ClientMixin):
    """The one confidential client the partner registered for iris."""

    client_id: str
    client_secret: str = field(repr=False)
    presented: Callable[[str], None] = field(repr=False)  # told every secret Authlib decoded

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope or "").split() if s == "segments")

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        self.presented(client_secret)
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic" and endpoint == "token"

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


@dataclass(eq=False)
class IssuedToken(TokenMixin):
    access_token: str = field(repr=False)
    client_id: str
    scope: str
    issued_at: float
    expires_in: int

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> None:
        return None


@dataclass(frozen=True)
class TokenRequest:
    content_type: str
    body: str
    accept_encoding: str


class AuthlibPartner:
    """A Flask app: Authlib's token endpoint at ``/oauth/token`` and, guarded by Authlib's
    ``ResourceProtector``, the partner endpoint ``/segments/aam``. All state is in memory."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self._lock = threading.Lock()
        self.client = PartnerClient(client_id, client_secret, self._presented)
        self.token_requests: list[TokenRequest] = []  # every request to the token endpoint
        self.presented_secrets: list[str] = []
        self.tokens: dict[str, IssuedToken] = {}
        self.issued: list[str] = []  # access tokens, in issue order
        self.resource_authorizations: list[str] = []  # Authorization of every resource request
        self.received: list[tuple[str, dict[str, Any]]] = []  # (token, JSON body) accepted
        self.app = self._build_app()

    def _presented(self, secret: str) -> None:
        with self._lock:
            self.presented_secrets.append(secret)

    def _query_client(self, client_id: str) -> PartnerClient | None:
        return self.client if client_id == self.client.client_id else None

    def _save_token(self, token: dict[str, Any], oauth_request: OAuth2Request) -> None:
        issued = IssuedToken(
            token["access_token"], oauth_request.client.get_client_id(),
            token.get("scope", ""), time.time(), int(token["expires_in"]),
        )
        with self._lock:
            self.tokens[issued.access_token] = issued
            self.issued.append(issued.access_token)

    def _build_app(self) -> Flask:
        app = Flask("authlib-partner")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": EXPIRES_IN}
        server = AuthorizationServer(app, query_client=self._query_client,
                                     save_token=self._save_token)
        server.register_grant(ClientCredentialsGrant)

        @app.post("/oauth/token")
        def token() -> Any:
            seen = TokenRequest(request.content_type or "", request.get_data(as_text=True),
                                request.headers.get("Accept-Encoding", ""))
            with self._lock:
                self.token_requests.append(seen)
            return server.create_token_response()

        add_segment_route(app, self.lookup, self._lock, self.resource_authorizations,
                          self.received)
        return app

    def lookup(self, access_token: str) -> IssuedToken | None:
        with self._lock:
            return self.tokens.get(access_token)

    def segment_changes(self) -> list[tuple[str, str]]:
        with self._lock:
            bodies = [body for _, body in self.received]
        return [(user["AAM_UUID"], seg["Segment_ID"])
                for body in bodies for user in body["Users"] for seg in user["Segments"]]


def add_segment_route(
    app: Flask, lookup: Callable[[str], IssuedToken | None], lock: threading.Lock,
    authorizations: list[str], received: list[tuple[str, Any]], scope: str | None = None,
) -> None:
    """The partner's ``POST /segments/aam`` behind Authlib's ``ResourceProtector``: every
    Authorization header seen is kept, and each accepted body with the token that carried it."""

    class StoreValidator(BearerTokenValidator):
        def authenticate_token(self, token_string: str) -> IssuedToken | None:
            return lookup(token_string)

    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(StoreValidator())

    @app.post("/segments/aam")
    def segments() -> Any:
        with lock:
            authorizations.append(request.headers.get("Authorization", ""))
        with require_oauth.acquire([scope] if scope else None) as granted:
            body = request.get_json()
            with lock:
                received.append((granted.access_token, body))
        return {"status": "ok"}


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Serve ``app`` on a free loopback port from a background thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="authlib-partner", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class ServedPartner:
    partner: AuthlibPartner
    base_url: str

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth/token"

    @property
    def resource_url(self) -> str:
        return self.base_url + "/segments/aam"


@pytest.fixture
def authlib_partner(
    monkeypatch: pytest.MonkeyPatch, secret_watch: SecretWatch
) -> Iterator[Callable[[str], ServedPartner]]:
    """Start Authlib partners, one per client secret; all stop at teardown."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http, loopback only
    # Authlib logs every token it issues at DEBUG ("Issue token {...} to ..."). Those are the
    # partner's logs, not iris's: keep them out of the leak scan, which judges iris.
    authlib_log = logging.getLogger("authlib")
    old_level = authlib_log.level
    authlib_log.setLevel(logging.INFO)
    partners: list[AuthlibPartner] = []

    with ExitStack() as stack:

        def start(client_secret: str) -> ServedPartner:
            partner = AuthlibPartner(CLIENT_ID, client_secret)
            secret_watch.add(client_secret)
            partners.append(partner)
            return ServedPartner(partner, stack.enter_context(serving(partner.app)))

        try:
            yield start
        finally:
            authlib_log.setLevel(old_level)
    for partner in partners:  # the leak scan runs after this teardown
        secret_watch.add(*partner.issued)


def client_credentials_auth(token_url: str, client_secret: str) -> dict[str, Any]:
    return {"type": "oauth2_client_credentials", "token_url": token_url,
            "client_id": CLIENT_ID, "client_secret": client_secret}


def parsed_auth(token_url: str, client_secret: str) -> ClientCredentialsAuth:
    """The auth section exactly as iris's config loader builds it."""
    config = parse_config({"destinations": [{
        "id": "423", "url": token_url, "user_dpid": "12345", "client_id": "74323",
        "allow_http": True, "auth": client_credentials_auth(token_url, client_secret),
    }]}, env={})
    auth = config.destinations[0].auth
    assert isinstance(auth, ClientCredentialsAuth)
    return auth


async def fetch(token_url: str, client_secret: str) -> Grant:
    async with aiohttp.ClientSession() as session:
        source = EndpointSource("423", parsed_auth(token_url, client_secret),
                                TokenEndpoint(session, 10), allow_http=True)
        return await source.initial()


# --------------------------------------------------------------------------- A: the client

async def test_client_gets_a_token_from_authlib(
    authlib_partner: Callable[[str], ServedPartner],
) -> None:
    served = authlib_partner(SECRET)
    grant = await fetch(served.token_url, SECRET)

    partner = served.partner
    assert partner.issued == [grant.access_token]
    assert grant.expires_in == EXPIRES_IN
    assert grant.token_type.lower() == "bearer"
    assert partner.presented_secrets == [SECRET]  # Authlib decoded exactly our secret
    assert partner.tokens[grant.access_token].client_id == CLIENT_ID
    assert partner.token_requests == [TokenRequest(
        "application/x-www-form-urlencoded;charset=UTF-8", "grant_type=client_credentials",
        "gzip",
    )]


async def test_wrong_secret_is_a_permanent_error_that_hides_the_secret(
    authlib_partner: Callable[[str], ServedPartner], secret_watch: SecretWatch
) -> None:
    served = authlib_partner(SECRET)
    wrong = "wr0ng+secret:é"
    secret_watch.add(wrong)
    with pytest.raises(TokenError) as caught:
        await fetch(served.token_url, wrong)

    assert caught.value.permanent is True
    assert caught.value.status == 401  # Authlib: invalid_client, 401 for client_secret_basic
    assert "invalid_client" in str(caught.value)
    for secret in (wrong, SECRET):
        assert secret not in str(caught.value) and secret not in repr(caught.value)
    assert len(served.partner.token_requests) == 1  # permanent: not retried
    assert served.partner.presented_secrets == [wrong]
    assert served.partner.issued == []


async def test_secret_with_a_space(authlib_partner: Callable[[str], ServedPartner]) -> None:
    """Authlib 1.9 decodes Basic credentials with ``unquote`` (a '+' stays a '+'), where RFC 6749
    Appendix B decoders turn '+' into a space. iris encodes a space as %20, which both read as a
    space, so a secret with a space works against either kind of server."""
    served = authlib_partner(SECRET_WITH_SPACE)
    grant = await fetch(served.token_url, SECRET_WITH_SPACE)
    assert served.partner.presented_secrets == [SECRET_WITH_SPACE]
    assert served.partner.issued == [grant.access_token]


# --------------------------------------------------------------------------- B: end to end

@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


async def test_worker_delivers_through_authlib(
    authlib_partner: Callable[[str], ServedPartner], private_redis: RedisProcess
) -> None:
    served = authlib_partner(SECRET)
    partner = served.partner
    stream_key = f"interop-{time.monotonic_ns()}:events"
    config = make_config(private_redis.url, stream_key, [{
        "id": "423",
        "url": served.resource_url,
        "user_dpid": "12345",
        "client_id": "74323",
        "allow_http": True,
        "auth": client_credentials_auth(served.token_url, SECRET),
        "batch": {"max_wait": 0.05},
    }])
    expected = Counter((f"user{i:02d}", f"s{i % 3}") for i in range(30))

    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        async with running(config):
            for uuid, segment in expected:
                await client.xadd(stream_key, {"uuid": uuid, "segment": segment,
                                               "dpuuid": f"dp-{uuid}"})
            await wait_for(lambda: len(partner.segment_changes()) >= len(expected), 20,
                           "all 30 segment changes at the Authlib-protected resource")
    finally:
        await client.aclose()

    assert len(partner.token_requests) == 1
    assert len(partner.issued) == 1
    assert partner.resource_authorizations  # every one carried a token Authlib issued
    assert all(auth == f"Bearer {partner.issued[0]}" for auth in partner.resource_authorizations)
    assert len(partner.received) == len(partner.resource_authorizations)  # none refused
    assert Counter(partner.segment_changes()) == expected
    for _, body in partner.received:
        assert (body["User_DPID"], body["Client_ID"], body["AAM_Destination_Id"]) == (
            "12345", "74323", "423")
