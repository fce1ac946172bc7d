"""The strict test OAuth server, over real HTTP: it must accept exactly what the RFCs allow,
because iris's auth tests are only as good as the server they run against."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from iris_demo.partner import PartnerServer
from iris_demo.servers import LocalServer
from tests.helpers import basic_auth
from tests.oauth_server import (
    AUTHORIZATION_CODE,
    CLIENT_AUTH_METHODS,
    CLIENT_CREDENTIALS,
    IMS_JWT,
    JWT_BEARER,
    REFRESH_TOKEN,
    ClientAuth,
    OAuthServer,
    make_ec_key,
    make_rsa_key,
)

CLIENT_ID = "iris client:1"
SECRET = "s3+cr%41t: é x"  # + % : é and a space: only a §2.3.1-encoding client gets in
USER, USER_PASSWORD = "ada", "pä ss+word"
REDIRECT = "http://127.0.0.1:9/callback?keep=1"
FORM_TYPE = "application/x-www-form-urlencoded"
ISSUER, SUBJECT = "ORG123@AdobeOrg", "TECH456@techacct.adobe.com"
METASCOPE = "https://ims-na1.adobelogin.com/s/ent_dataservices_sdk"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 appendix B
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def basic(client_id: str = CLIENT_ID, secret: str = SECRET, *, encode: bool = True) -> str:
    """The Basic header of this module's client, unless told otherwise."""
    return basic_auth(client_id, secret, encode=encode)


def credentials(method: ClientAuth) -> tuple[str | None, dict[str, str]]:
    """(Authorization header, body fields) for one RFC 6749 §2.3 method."""
    if method == "client_secret_basic":
        return basic(), {}
    if method == "client_secret_post":
        return None, {"client_id": CLIENT_ID, "client_secret": SECRET}
    return None, {"client_id": CLIENT_ID}


@dataclass
class Answer:
    status: int
    doc: dict[str, Any]
    headers: CIMultiDictProxy[str]

    @property
    def error(self) -> str | None:
        return self.doc.get("error")


@dataclass
class Running:
    """A served OAuthServer and a client session to talk to it."""

    server: OAuthServer
    base: str
    session: aiohttp.ClientSession

    async def post(
        self, path: str, form: dict[str, str] | str, *, auth: str | None = None,
        content_type: str = FORM_TYPE, accept_encoding: str | None = None,
    ) -> Answer:  # fmt: skip
        headers = {"Content-Type": content_type}
        if auth is not None:
            headers["Authorization"] = auth
        if accept_encoding is not None:
            headers["Accept-Encoding"] = accept_encoding
        body = urlencode(form) if isinstance(form, dict) else form
        async with self.session.post(self.base + path, data=body, headers=headers) as resp:
            return Answer(resp.status, await resp.json(content_type=None), resp.headers)

    async def token(self, form: dict[str, str] | str, **kw: Any) -> Answer:
        return await self.post(self.server.path, form, **kw)

    async def ims(self, form: dict[str, str], **kw: Any) -> Answer:
        return await self.post(self.server.ims_path, form, **kw)

    async def authorize(self, **params: str) -> tuple[int, str | None]:
        """(status, Location) of a GET to the authorization endpoint, not following it."""
        url = self.base + self.server.authorize_path
        async with self.session.get(url, params=params, allow_redirects=False) as resp:
            return resp.status, resp.headers.get("Location")

    async def code(self, **params: str) -> str:
        """A fresh authorization code for REDIRECT (S256 challenge unless overridden; empty
        values are left out)."""
        query = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
                 "code_challenge": CHALLENGE, "code_challenge_method": "S256",
                 **params}  # fmt: skip
        status, location = await self.authorize(**{k: v for k, v in query.items() if v})
        assert status == 302 and location is not None
        return parse_qs(urlsplit(location).query)["code"][0]

    def assertion(self, key: str, *, alg: str = "RS256", **claims: Any) -> str:
        """A JWT for the token endpoint, valid unless ``claims`` says otherwise (None drops)."""
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": SUBJECT, "aud": self.base + self.server.path,
                   "exp": now + 300, "iat": now, **claims}  # fmt: skip
        return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=alg)


Start = Callable[..., Awaitable[Running]]


@pytest.fixture(scope="module")
def rsa_key() -> tuple[str, str]:
    return make_rsa_key()


@pytest.fixture(scope="module")
def other_rsa_key() -> tuple[str, str]:
    return make_rsa_key()


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Serve an OAuthServer (defaults: this file's client, user and redirect URI) on loopback."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def run(**kwargs: Any) -> Running:
            defaults: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": SECRET,
                                        "users": {USER: USER_PASSWORD},
                                        "redirect_uris": [REDIRECT]}  # fmt: skip
            server = OAuthServer(**{**defaults, **kwargs})
            local = await stack.enter_async_context(LocalServer())
            return Running(server, await local.start(server.app()), session)

        yield run


# -- client authentication ------------------------------------------------------------------


async def test_client_credentials_success_is_recorded_field_by_field(start: Start) -> None:
    run = await start()
    answer = await run.token({"grant_type": "client_credentials"}, auth=basic())
    assert answer.status == 200, answer.doc
    assert set(answer.doc) == {"access_token", "token_type", "expires_in"}
    assert answer.doc["token_type"] == "Bearer" and answer.doc["expires_in"] == 3600
    assert answer.headers["Cache-Control"] == "no-store" and answer.headers["Pragma"] == "no-cache"
    assert run.server.is_valid(answer.doc["access_token"])
    assert run.server.grants_issued == [CLIENT_CREDENTIALS] and run.server.ok_requests == 1
    (rec,) = run.server.requests
    expected = (run.server.path, "POST", 200, True, None)
    assert (rec.path, rec.method, rec.status, rec.ok, rec.error) == expected
    assert rec.authorization_scheme == "Basic"
    assert "authorization" not in map(str.lower, rec.headers)
    assert rec.client_auth_method == "client_secret_basic" and rec.client_id_seen == CLIENT_ID
    assert rec.content_type == FORM_TYPE
    assert rec.raw_body_length == len("grant_type=client_credentials")
    assert rec.form == {"grant_type": "client_credentials"} and rec.grant_type == CLIENT_CREDENTIALS


async def test_no_ttl_means_no_expires_in(start: Start) -> None:
    run = await start(ttl=None)
    answer = await run.token({"grant_type": "client_credentials"}, auth=basic())
    assert answer.status == 200 and "expires_in" not in answer.doc
    assert run.server.is_valid(answer.doc["access_token"])


@pytest.mark.parametrize("sent", CLIENT_AUTH_METHODS)
@pytest.mark.parametrize("demanded", CLIENT_AUTH_METHODS)
async def test_client_auth_method_accepted_only_when_demanded(
    start: Start, demanded: ClientAuth, sent: ClientAuth
) -> None:
    secret = None if demanded == "none" else SECRET
    run = await start(client_auth=demanded, client_secret=secret)
    auth, fields = credentials(sent)
    form = {"grant_type": "password", "username": USER, "password": USER_PASSWORD, **fields}
    answer = await run.token(form, auth=auth)
    assert run.server.requests[0].client_auth_method == sent
    if sent == demanded:
        assert answer.status == 200, answer.doc
    else:
        assert (answer.status, answer.error) == (401, "invalid_client")
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
        assert not run.server.issued


@pytest.mark.parametrize(
    ("auth", "fields"),
    [
        (basic(secret="wrong"), {}),
        (basic(client_id="someone else"), {}),
        (basic(encode=False), {}),  # raw secret: + and %41 decode to something else
        (None, {"client_id": CLIENT_ID, "client_secret": "wrong"}),
        (None, {}),
        ("Bearer abc", {}),
    ],
    ids=["wrong-secret", "wrong-id", "not-form-encoded", "wrong-post-secret", "none", "bearer"],
)
async def test_bad_client_credentials_are_invalid_client(
    start: Start, auth: str | None, fields: dict[str, str]
) -> None:
    run = await start()
    answer = await run.token({"grant_type": "client_credentials", **fields}, auth=auth)
    assert (answer.status, answer.error) == (401, "invalid_client")
    assert not run.server.issued


async def test_post_client_secret_is_decoded_from_the_form(start: Start) -> None:
    run = await start(client_auth="client_secret_post")
    _, fields = credentials("client_secret_post")
    answer = await run.token({"grant_type": "client_credentials", **fields})
    assert answer.status == 200, answer.doc
    assert run.server.requests[0].form["client_secret"] == "***"


@pytest.mark.parametrize(
    "fields",
    [{"client_id": CLIENT_ID, "client_secret": SECRET}, {"client_secret": SECRET},
     {"client_id": "someone else"}],
    ids=["basic-and-post", "basic-and-secret", "conflicting-id"],
)  # fmt: skip
async def test_credentials_by_two_methods_are_invalid_request(
    start: Start, fields: dict[str, str]
) -> None:
    run = await start()
    answer = await run.token({"grant_type": "client_credentials", **fields}, auth=basic())
    assert (answer.status, answer.error) == (400, "invalid_request")
    assert run.server.requests[0].client_auth_method is None


async def test_basic_with_the_same_client_id_in_the_body_is_fine(start: Start) -> None:
    run = await start()
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
    assert (await run.token(form, auth=basic())).status == 200


async def test_public_client_cannot_use_client_credentials(start: Start) -> None:
    run = await start(client_auth="none", client_secret=None)
    answer = await run.token({"grant_type": "client_credentials", "client_id": CLIENT_ID})
    assert (answer.status, answer.error) == (400, "unauthorized_client")


def test_constructor_rejects_inconsistent_client_auth() -> None:
    with pytest.raises(ValueError, match="client_secret"):
        OAuthServer(client_secret=None)
    with pytest.raises(ValueError, match="client_auth"):
        OAuthServer(client_auth="private_key_jwt")  # type: ignore[arg-type]


# -- request format -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "status", "error"),
    [
        (FORM_TYPE + "; charset=UTF-8", "grant_type=client_credentials", 200, None),
        (FORM_TYPE + ";charset=ISO-8859-1", "grant_type=client_credentials", 400,
         "invalid_request"),
        ("application/json", '{"grant_type": "client_credentials"}', 400, "invalid_request"),
        (FORM_TYPE, "grant_type=client_credentials&grant_type=client_credentials", 400,
         "invalid_request"),
        (FORM_TYPE, "scope=x", 400, "invalid_request"),
        (FORM_TYPE, "grant_type=implicit", 400, "unsupported_grant_type"),
        (FORM_TYPE, "grant_type=" + quote_plus(JWT_BEARER) + "&assertion=x", 400,
         "unsupported_grant_type"),  # no JWT key configured
    ],
    ids=["charset", "latin1", "json", "repeated", "no-grant", "implicit", "jwt-without-key"],
)  # fmt: skip
async def test_request_format(
    start: Start, content_type: str, body: str, status: int, error: str | None
) -> None:
    run = await start()
    answer = await run.token(body, auth=basic(), content_type=content_type)
    assert (answer.status, answer.error) == (status, error)


async def test_token_endpoint_is_post_only(start: Start) -> None:
    run = await start()
    async with run.session.get(run.base + run.server.path) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert run.server.requests[0].method == "GET"


async def test_gzip_when_accepted(start: Start) -> None:
    run = await start(gzip=True)
    form = {"grant_type": "client_credentials"}
    answer = await run.token(form, auth=basic(), accept_encoding="gzip")
    assert answer.status == 200 and answer.headers["Content-Encoding"] == "gzip"
    plain = await run.token(form, auth=basic(), accept_encoding="identity")
    assert "Content-Encoding" not in plain.headers
    assert [r.gzipped for r in run.server.requests] == [True, False]


# -- password and refresh -------------------------------------------------------------------


async def test_password_grant(start: Start) -> None:
    run = await start()
    form = {"grant_type": "password", "username": USER, "password": USER_PASSWORD}
    answer = await run.token(form, auth=basic())
    assert answer.status == 200, answer.doc
    refresh = answer.doc["refresh_token"]
    assert refresh in run.server.all_tokens() and not run.server.is_valid(refresh)
    assert run.server.requests[0].form["password"] == "***"
    for bad, error in [({"password": "nope"}, "invalid_grant"),
                       ({"username": "eve"}, "invalid_grant"),
                       ({"password": None}, "invalid_request")]:  # fmt: skip
        sent = {k: v for k, v in {**form, **bad}.items() if v is not None}
        assert (await run.token(sent, auth=basic())).error == error


async def test_refresh_tokens_rotate_and_reuse_is_caught(start: Start) -> None:
    run = await start()
    first = run.server.seed_refresh_token()
    answer = await run.token({"grant_type": "refresh_token", "refresh_token": first}, auth=basic())
    assert answer.status == 200, answer.doc
    second = answer.doc["refresh_token"]
    assert second != first and "scope" not in answer.doc
    reuse = await run.token({"grant_type": "refresh_token", "refresh_token": first}, auth=basic())
    assert (reuse.status, reuse.error) == (400, "invalid_grant")
    assert run.server.reused_refresh_tokens == 1
    again = await run.token({"grant_type": "refresh_token", "refresh_token": second}, auth=basic())
    assert again.status == 200
    unknown = await run.token({"grant_type": "refresh_token", "refresh_token": "x"}, auth=basic())
    assert unknown.error == "invalid_grant" and run.server.reused_refresh_tokens == 1
    assert run.server.refresh_tokens_used == [first, first, second, "x"]
    assert run.server.grants_issued == [REFRESH_TOKEN, REFRESH_TOKEN]


async def test_without_rotation_the_refresh_token_stays(start: Start) -> None:
    run = await start(rotate_refresh_tokens=False)
    token = run.server.seed_refresh_token("my-refresh")
    for _ in range(2):
        answer = await run.token(
            {"grant_type": "refresh_token", "refresh_token": token}, auth=basic()
        )
        assert answer.status == 200 and "refresh_token" not in answer.doc


async def test_refresh_tokens_can_be_switched_off(start: Start) -> None:
    run = await start(issue_refresh_tokens=False)
    form = {"grant_type": "password", "username": USER, "password": USER_PASSWORD}
    answer = await run.token(form, auth=basic())
    assert answer.status == 200 and "refresh_token" not in answer.doc


async def test_scope_must_be_exactly_the_configured_one(start: Start) -> None:
    run = await start(scope="segments:write")
    for scope, status in [(None, 400), ("segments:write extra", 400), ("segments:write", 200)]:
        form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        answer = await run.token(form, auth=basic())
        assert answer.status == status
        assert answer.doc.get("scope" if status == 200 else "error") == (
            scope if status == 200 else "invalid_scope"
        )
    refresh = {"grant_type": "refresh_token", "refresh_token": run.server.seed_refresh_token()}
    assert (await run.token({**refresh, "scope": "other"}, auth=basic())).error == "invalid_scope"
    assert (await run.token(refresh, auth=basic())).status == 200  # omitted: as granted before


# -- authorization code and PKCE ------------------------------------------------------------


async def test_authorization_code_with_pkce(start: Start) -> None:
    run = await start()
    state = "a b&c=d/é?#+%"
    status, location = await run.authorize(
        response_type="code", client_id=CLIENT_ID, redirect_uri=REDIRECT, state=state,
        scope="read", code_challenge=CHALLENGE, code_challenge_method="S256",
    )  # fmt: skip
    assert status == 302 and location is not None
    target = urlsplit(location)
    assert location.startswith("http://127.0.0.1:9/callback?keep=1&")
    query = parse_qs(target.query)
    assert query["state"] == [state] and query["keep"] == ["1"]
    assert run.server.authorize_requests[0]["state"] == state
    form = {"grant_type": "authorization_code", "code": query["code"][0],
            "redirect_uri": REDIRECT, "code_verifier": VERIFIER}  # fmt: skip
    answer = await run.token(form, auth=basic())
    assert answer.status == 200, answer.doc
    assert answer.doc["scope"] == "read" and "refresh_token" in answer.doc
    assert run.server.requests[0].form["code"] == "***"
    reuse = await run.token(form, auth=basic())
    assert (reuse.status, reuse.error) == (400, "invalid_grant")
    # RFC 6749 §4.1.2: what the first use obtained is revoked.
    assert run.server.is_revoked(answer.doc["access_token"])
    refresh = {"grant_type": "refresh_token", "refresh_token": answer.doc["refresh_token"]}
    assert (await run.token(refresh, auth=basic())).error == "invalid_grant"
    assert run.server.grants_issued == [AUTHORIZATION_CODE]


async def test_public_client_exchanges_a_code(start: Start) -> None:
    run = await start(client_auth="none", client_secret=None, require_pkce=True)
    form = {"grant_type": "authorization_code", "code": await run.code(), "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT, "code_verifier": VERIFIER}  # fmt: skip
    assert (await run.token(form)).status == 200


@pytest.mark.parametrize(
    "change",
    [{"code_verifier": VERIFIER[:-1] + "A"}, {"code_verifier": None}, {"code_verifier": "short"},
     {"redirect_uri": REDIRECT + "&x=1"}, {"redirect_uri": None}, {"code": "made-up"}],
    ids=["pkce-mismatch", "no-verifier", "bad-verifier", "other-redirect", "no-redirect",
         "unknown-code"],
)  # fmt: skip
async def test_code_exchange_rejections(start: Start, change: dict[str, str | None]) -> None:
    run = await start()
    form = {"grant_type": "authorization_code", "code": await run.code(),
            "redirect_uri": REDIRECT, "code_verifier": VERIFIER, **change}  # fmt: skip
    answer = await run.token({k: v for k, v in form.items() if v is not None}, auth=basic())
    assert (answer.status, answer.error) == (400, "invalid_grant")
    assert not run.server.issued


async def test_verifier_without_challenge_is_a_downgrade(start: Start) -> None:
    run = await start()
    code = await run.code(code_challenge="", code_challenge_method="")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    assert (await run.token({**form, "code_verifier": VERIFIER}, auth=basic())).error == (
        "invalid_grant"
    )
    assert (await run.token(form, auth=basic())).error == "invalid_grant"  # consumed anyway


async def test_codes_expire(start: Start) -> None:
    run = await start(code_ttl=0)
    form = {"grant_type": "authorization_code", "code": await run.code(),
            "redirect_uri": REDIRECT, "code_verifier": VERIFIER}  # fmt: skip
    assert (await run.token(form, auth=basic())).error == "invalid_grant"


@pytest.mark.parametrize(
    "query",
    [{"redirect_uri": "http://127.0.0.1:9/elsewhere"}, {"redirect_uri": None},
     {"client_id": "someone else"}],
    ids=["unregistered-redirect", "no-redirect", "unknown-client"],
)  # fmt: skip
async def test_authorize_does_not_redirect_to_unknown_places(
    start: Start, query: dict[str, str | None]
) -> None:
    run = await start()
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
              "state": "s", **query}  # fmt: skip
    status, location = await run.authorize(**{k: v for k, v in params.items() if v is not None})
    assert (status, location) == (400, None)
    assert not run.server.all_tokens()


@pytest.mark.parametrize(
    ("query", "error"),
    [({"code_challenge_method": "plain"}, "invalid_request"),
     ({"code_challenge_method": ""}, "invalid_request"),  # absent method means plain
     ({"code_challenge": "too-short"}, "invalid_request"),
     ({"code_challenge": "", "code_challenge_method": ""}, "invalid_request"),  # require_pkce
     ({"response_type": "token"}, "unsupported_response_type")],
    ids=["plain", "default-plain", "malformed", "pkce-required", "implicit"],
)  # fmt: skip
async def test_authorize_errors_are_redirected_with_state(
    start: Start, query: dict[str, str], error: str
) -> None:
    run = await start(require_pkce=True)
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
              "state": "xyz", "code_challenge": CHALLENGE, "code_challenge_method": "S256",
              **query}  # fmt: skip
    status, location = await run.authorize(**{k: v for k, v in params.items() if v})
    assert status == 302 and location is not None
    got = parse_qs(urlsplit(location).query)
    assert got["error"] == [error] and got["state"] == ["xyz"] and "code" not in got


# -- JWT bearer (RFC 7523) ------------------------------------------------------------------


def jwt_options(public: str, **more: Any) -> dict[str, Any]:
    return {"jwt_public_key": public, "jwt_issuer": ISSUER, "jwt_subject": SUBJECT, **more}


async def test_jwt_bearer_grant(start: Start, rsa_key: tuple[str, str]) -> None:
    run = await start(**jwt_options(rsa_key[1]))
    form = {"grant_type": JWT_BEARER, "assertion": run.assertion(rsa_key[0])}
    answer = await run.token(form, auth=basic())
    assert answer.status == 200, answer.doc
    assert "refresh_token" not in answer.doc and run.server.grants_issued == [JWT_BEARER]
    assert run.server.requests[0].form["assertion"] == "***"


async def test_jwt_bearer_needs_no_client_when_none_is_demanded(
    start: Start, rsa_key: tuple[str, str]
) -> None:
    run = await start(client_auth="none", client_secret=None, **jwt_options(rsa_key[1]))
    answer = await run.token({"grant_type": JWT_BEARER, "assertion": run.assertion(rsa_key[0])})
    assert answer.status == 200, answer.doc
    assert run.server.requests[0].client_auth_method is None


async def test_es256_assertion(start: Start) -> None:
    private, public = make_ec_key()
    run = await start(**jwt_options(public, jwt_algorithms=("ES256",)))
    form = {"grant_type": JWT_BEARER, "assertion": run.assertion(private, alg="ES256")}
    assert (await run.token(form, auth=basic())).status == 200


@pytest.mark.parametrize(
    "claims",
    [{"exp": -10}, {"aud": "https://elsewhere/token"}, {"sub": "someone"}, {"iss": "other"},
     {"exp": None}, {"sub": None}, {"exp": 7200}, {METASCOPE: None}, {METASCOPE: 1},
     {"key": "other"}],
    ids=["expired", "wrong-aud", "wrong-sub", "wrong-iss", "no-exp", "no-sub", "too-long",
         "no-metascope", "metascope-not-bool", "bad-signature"],
)  # fmt: skip
async def test_jwt_rejections(
    start: Start, rsa_key: tuple[str, str], other_rsa_key: tuple[str, str],
    claims: dict[str, Any],
) -> None:  # fmt: skip
    run = await start(**jwt_options(rsa_key[1], jwt_required_claims={METASCOPE: True}))
    claims = dict(claims)
    key = other_rsa_key[0] if claims.pop("key", None) else rsa_key[0]
    if isinstance(claims.get("exp"), int):
        claims["exp"] += int(time.time())
    assertion = run.assertion(key, **{METASCOPE: True, **claims})
    answer = await run.token({"grant_type": JWT_BEARER, "assertion": assertion}, auth=basic())
    assert (answer.status, answer.error) == (400, "invalid_grant")
    assert not run.server.issued


async def test_jwt_algorithm_must_be_allowed(start: Start, rsa_key: tuple[str, str]) -> None:
    private, _ = make_ec_key()
    run = await start(**jwt_options(rsa_key[1]))
    form = {"grant_type": JWT_BEARER, "assertion": run.assertion(private, alg="ES256")}
    assert (await run.token(form, auth=basic())).error == "invalid_grant"


# -- Adobe IMS exchange ---------------------------------------------------------------------


def ims_jwt(run: Running, key: str, **claims: Any) -> str:
    return run.assertion(key, **{"aud": f"{run.base}/c/{CLIENT_ID}", METASCOPE: True, **claims})


async def test_ims_exchange_answers_in_milliseconds(start: Start, rsa_key: tuple[str, str]) -> None:
    options = jwt_options(rsa_key[1], jwt_required_claims={METASCOPE: True})
    run = await start(ttl=86399.999, **options)
    form = {"client_id": CLIENT_ID, "client_secret": SECRET, "jwt_token": ims_jwt(run, rsa_key[0])}
    answer = await run.ims(form)
    assert answer.status == 200, answer.doc
    assert set(answer.doc) == {"token_type", "access_token", "expires_in"}
    assert answer.doc["token_type"] == "bearer" and answer.doc["expires_in"] == 86399999
    assert run.server.is_valid(answer.doc["access_token"])
    assert run.server.grants_issued == [IMS_JWT]
    rec = run.server.requests[0]
    assert rec.path == run.server.ims_path and rec.client_auth_method == "client_secret_post"
    assert rec.form["jwt_token"] == "***" and rec.form["client_secret"] == "***"


@pytest.mark.parametrize(
    ("change", "auth", "status", "error"),
    [({"client_secret": "wrong"}, None, 401, "invalid_client"),
     ({"client_secret": None}, basic(), 401, "invalid_client"),
     ({}, basic(), 400, "invalid_request"),
     ({"grant_type": "client_credentials"}, None, 400, "invalid_request"),
     ({"jwt_token": None}, None, 400, "invalid_request"),
     ({"aud": "token-endpoint"}, None, 400, "invalid_grant"),
     ({METASCOPE: None}, None, 400, "invalid_grant")],
    ids=["wrong-secret", "basic", "basic-and-post", "grant-type", "no-jwt", "wrong-aud",
         "no-metascope"],
)  # fmt: skip
async def test_ims_rejections(
    start: Start, rsa_key: tuple[str, str], change: dict[str, Any], auth: str | None,
    status: int, error: str,
) -> None:  # fmt: skip
    run = await start(**jwt_options(rsa_key[1], jwt_required_claims={METASCOPE: True}))
    change = dict(change)
    claims = {k: change.pop(k) for k in ("aud", METASCOPE) if k in change}
    if claims.get("aud") == "token-endpoint":
        claims["aud"] = run.base + run.server.path
    form = {"client_id": CLIENT_ID, "client_secret": SECRET,
            "jwt_token": ims_jwt(run, rsa_key[0], **claims), **change}  # fmt: skip
    answer = await run.ims({k: v for k, v in form.items() if v is not None}, auth=auth)
    assert (answer.status, answer.error) == (status, error)
    assert not run.server.issued


# -- fault knobs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    ["invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope",
     "unsupported_grant_type"],
)  # fmt: skip
async def test_refuse_answers_every_token_request(
    start: Start, rsa_key: tuple[str, str], error: str
) -> None:
    run = await start(**jwt_options(rsa_key[1]))
    run.server.refuse = error
    status = 401 if error == "invalid_client" else 400
    token = await run.token({"grant_type": "client_credentials"}, auth=basic())
    form = {"client_id": CLIENT_ID, "client_secret": SECRET, "jwt_token": ims_jwt(run, rsa_key[0])}
    ims = await run.ims(form)
    assert (token.status, token.error) == (ims.status, ims.error) == (status, error)
    assert not run.server.issued and not run.server.grants_issued
    assert [r.error for r in run.server.requests] == [error, error]
    assert run.server.requests[0].client_auth_method == "client_secret_basic"  # still recorded


async def test_responder_and_delay(start: Start) -> None:
    run = await start()

    async def unavailable(request: web.Request) -> web.StreamResponse | None:
        return web.json_response({"error": "maintenance"}, status=503)

    run.server.responder = unavailable
    assert (await run.token({"grant_type": "client_credentials"}, auth=basic())).status == 503
    run.server.responder, run.server.delay = None, 0.05
    began = time.monotonic()
    assert (await run.token({"grant_type": "client_credentials"}, auth=basic())).status == 200
    assert time.monotonic() - began >= 0.05
    assert [(r.status, r.error) for r in run.server.requests] == [(503, "responder"), (200, None)]


# -- as the partner's token authority -------------------------------------------------------


async def test_partner_checks_tokens_issued_here(start: Start) -> None:
    run = await start()
    partner = PartnerServer(destination_id="1", user_dpid="2", client_id="3", tokens=run.server)
    async with LocalServer() as local:
        url = await local.start(partner.app()) + partner.path

        async def status_with(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            async with run.session.post(url, data="{}", headers=headers) as resp:
                return resp.status

        form = {"grant_type": "password", "username": USER, "password": USER_PASSWORD}
        answer = await run.token(form, auth=basic())
        assert await status_with(answer.doc["access_token"]) == 400  # authenticated; bad payload
        assert await status_with(answer.doc["refresh_token"]) == 401  # not a bearer token
        run.server.revoke_all()
        assert await status_with(answer.doc["access_token"]) == 401
        assert partner.auth_failures == 2 and partner.problems
    run.server.ttl = 0
    expired = (await run.token({"grant_type": "client_credentials"}, auth=basic())).doc
    assert run.server.is_expired(expired["access_token"])
    assert not run.server.is_valid(expired["access_token"])


# -- secrets --------------------------------------------------------------------------------


async def test_records_hold_no_secret(start: Start, rsa_key: tuple[str, str]) -> None:
    run = await start(**jwt_options(rsa_key[1]))
    assertion, ims_token = run.assertion(rsa_key[0]), ims_jwt(run, rsa_key[0])
    code = await run.code()
    seeded = run.server.seed_refresh_token()
    requests: list[tuple[dict[str, str], str | None]] = [
        ({"grant_type": "client_credentials"}, basic()),
        ({"grant_type": "client_credentials", "client_secret": SECRET}, basic()),
        ({"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET},
         None),
        ({"grant_type": "password", "username": USER, "password": USER_PASSWORD}, basic()),
        ({"grant_type": "refresh_token", "refresh_token": seeded}, basic()),
        ({"grant_type": "refresh_token", "refresh_token": seeded}, basic()),
        ({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
          "code_verifier": VERIFIER}, basic()),
        ({"grant_type": JWT_BEARER, "assertion": assertion}, basic()),
    ]  # fmt: skip
    for form, auth in requests:
        await run.token(form, auth=auth)
    await run.ims({"client_id": CLIENT_ID, "client_secret": SECRET, "jwt_token": ims_token})
    assert run.server.ok_requests == 6
    values = [SECRET, quote_plus(SECRET), USER_PASSWORD, VERIFIER, assertion, ims_token,
              basic().split()[1], *run.server.all_tokens()]  # fmt: skip
    assert len(run.server.all_tokens()) == 11  # 6 access, 4 refresh (1 seeded), 1 code
    for text in [repr(run.server), *map(repr, run.server.requests)]:
        leaked = [v[:6] for v in values if v in text]
        assert not leaked, f"{leaked} in {text[:200]}"
