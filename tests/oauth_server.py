"""A strict OAuth 2 authorization server for tests, written from the RFCs rather than from iris.

RFC 6749 (client authentication §2.3, authorization code §4.1, password §4.3, client
credentials §4.4, refresh §6, answers §5), RFC 7636 (PKCE, S256 only), RFC 7523 §2.1 (JWT
bearer grant) and Adobe IMS's server-to-server JWT exchange. It rejects what a picky real
server rejects, so a client that passes here is not relying on leniency. The form, Basic and
error plumbing is shared with ``iris_demo.token_server``; secrets are never recorded, and every
issued token, refresh token and code is kept so tests can validate and scan for leaks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip as gziplib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from iris_demo.token_server import (
    FORM_TYPE,
    OAuthError,
    TokenIssuer,
    accepts_gzip,
    decode_basic,
    error_response,
    parse_media_type,
    read_form,
    redacted_form,
    same_secret,
)

ClientAuth = Literal["client_secret_basic", "client_secret_post", "none"]
CLIENT_AUTH_METHODS: tuple[ClientAuth, ...] = ("client_secret_basic", "client_secret_post", "none")
CLIENT_CREDENTIALS = "client_credentials"
PASSWORD = "password"
REFRESH_TOKEN = "refresh_token"
AUTHORIZATION_CODE = "authorization_code"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
IMS_JWT = "ims_jwt"  # what ``grants_issued`` records for the IMS exchange, which has no grant_type
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 §4.1
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # unpadded base64url of 32 bytes

Responder = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


@dataclass
class Recorded:
    """One token or IMS request as the server saw it, minus every secret."""

    time: float  # monotonic
    path: str
    method: str
    headers: dict[str, str]  # without Authorization
    authorization_scheme: str | None
    content_type: str | None
    raw_body_length: int
    client_auth_method: ClientAuth | None = None  # None: no method, or not identifiable
    client_id_seen: str | None = None
    form: dict[str, str] = field(default_factory=dict)  # redacted
    grant_type: str | None = None
    ok: bool = False
    status: int = 0
    error: str | None = None
    gzipped: bool = False


@dataclass(frozen=True)
class _Credentials:
    """The §2.3 method a request used and what it carried."""

    method: ClientAuth
    client_id: str
    secret: str | None


@dataclass
class _Code:
    """An authorization code and what it was issued for (there is one client, so no client id)."""

    redirect_uri: str
    scope: str | None
    challenge: str | None
    expires: float  # monotonic
    used: bool = False
    tokens: list[str] = field(default_factory=list)  # issued from it; revoked on reuse


def make_rsa_key() -> tuple[str, str]:
    """A fresh RSA-2048 key pair as (private PKCS#8 PEM, public PEM), for RS256 assertions."""
    return _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def make_ec_key() -> tuple[str, str]:
    """A fresh P-256 key pair as (private PKCS#8 PEM, public PEM), for ES256 assertions."""
    return _pem_pair(ec.generate_private_key(ec.SECP256R1()))


def _pem_pair(key: PrivateKeyTypes) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode("ascii"), public.decode("ascii")


def _scheme_of(header: str | None) -> str | None:
    """The auth scheme as sent, with the two usual ones in canonical case (schemes are
    case-insensitive, RFC 7235 §2.1)."""
    scheme = (header or "").strip().partition(" ")[0]
    return {"basic": "Basic", "bearer": "Bearer"}.get(scheme.lower(), scheme) or None


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _redirect(uri: str, state: str | None, **params: str) -> web.Response:
    """RFC 6749 §4.1.2: add form-encoded parameters to the query, keeping the one already there."""
    if state is not None:
        params["state"] = state
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    location = urlunsplit(parts._replace(query=query))
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


class OAuthServer(TokenIssuer):
    """Token, authorization and IMS endpoints for one client, with fault knobs and records.

    Offers ``is_valid``/``is_expired`` so ``PartnerServer(tokens=OAuthServer(...))`` checks the
    bearer tokens issued here.
    """

    def __init__(
        self,
        *,
        client_id: str = "iris-test-client",
        client_secret: str | None = "iris-test-secret",
        client_auth: ClientAuth = "client_secret_basic",
        ttl: float | None = 3600,
        scope: str | None = None,
        users: dict[str, str] | None = None,
        issue_refresh_tokens: bool = True,
        rotate_refresh_tokens: bool = True,
        redirect_uris: Iterable[str] = (),
        require_pkce: bool = False,
        code_ttl: float = 60,
        jwt_public_key: str | None = None,
        jwt_algorithms: Iterable[str] = ("RS256",),
        jwt_issuer: str | None = None,
        jwt_subject: str | None = None,
        jwt_audience: str | None = None,
        jwt_required_claims: dict[str, object] | None = None,
        jwt_max_lifetime: float = 3600,
        gzip: bool = False,
        path: str = "/oauth2/token",
        authorize_path: str = "/oauth2/authorize",
        ims_path: str = "/ims/exchange/jwt",
    ) -> None:
        if client_auth not in CLIENT_AUTH_METHODS:
            raise ValueError(f"client_auth must be one of {CLIENT_AUTH_METHODS}")
        if client_secret is None and client_auth != "none":
            raise ValueError(f"{client_auth} needs a client_secret")
        self.client_id = client_id
        self._client_secret = client_secret
        self.client_auth = client_auth
        self.ttl = ttl
        self.hidden_ttl: float = 3600  # real lifetime when ttl is None (no expires_in sent)
        self.scope = scope
        self._users = dict(users or {})
        self.issue_refresh_tokens = issue_refresh_tokens
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.redirect_uris = list(redirect_uris)
        self.require_pkce = require_pkce
        self.code_ttl = code_ttl
        self.jwt_public_key = jwt_public_key
        self.jwt_algorithms = tuple(jwt_algorithms)
        self.jwt_issuer = jwt_issuer
        self.jwt_subject = jwt_subject
        self.jwt_audience = jwt_audience  # None: this server's own URL, as each flow expects
        self.jwt_required_claims = dict(jwt_required_claims or {})
        self.jwt_max_lifetime = jwt_max_lifetime
        self.gzip = gzip
        self.path = path
        self.authorize_path = authorize_path
        self.ims_path = ims_path
        # Fault knobs.
        self.refuse: str | None = None  # answer every token request with this §5.2 error
        self.responder: Responder | None = None  # awaited first; a non-None response wins
        self.delay: float = 0  # seconds before answering a token request
        # Records and state.
        self.requests: list[Recorded] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.issued: dict[str, float] = {}  # access token -> monotonic expiry
        self.grants_issued: list[str] = []
        self.refresh_tokens_used: list[str] = []
        self.reused_refresh_tokens = 0
        self._revoked: set[str] = set()
        self._refresh: dict[str, Literal["valid", "spent", "revoked"]] = {}
        self._codes: dict[str, _Code] = {}
        self._grants: dict[str, Callable[[web.Request, dict[str, str]], dict[str, object]]] = {
            CLIENT_CREDENTIALS: self._client_credentials,
            PASSWORD: self._password,
            REFRESH_TOKEN: self._refresh_token,
            AUTHORIZATION_CODE: self._authorization_code,
            JWT_BEARER: self._jwt_bearer,
        }

    def __repr__(self) -> str:  # never show the secret
        return (
            f"OAuthServer(client_id={self.client_id!r}, client_auth={self.client_auth!r}, "
            f"path={self.path!r}, ttl={self.ttl!r})"
        )

    # -- wiring -----------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", self.path, self.token),
            web.get(self.authorize_path, self.authorize),
            web.route("*", self.ims_path, self.ims),
        ]

    def all_tokens(self) -> list[str]:
        """Every access token, refresh token and code ever handed out, for leak scanners."""
        return [*self.issued, *self._refresh, *self._codes]

    def seed_refresh_token(self, value: str | None = None) -> str:
        """Register a valid refresh token, as if issued earlier, and return it."""
        token = value if value is not None else secrets.token_urlsafe(32)
        self._refresh[token] = "valid"
        return token

    # -- endpoints --------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._token)

    async def ims(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._ims)

    async def authorize(self, request: web.Request) -> web.Response:
        """RFC 6749 §4.1.1–4.1.2 with automatic consent. Errors about the client or the
        redirect URI are answered here, never redirected (§4.1.2.1)."""
        query = request.query
        self.authorize_requests.append(dict(query))
        if len(set(query)) != len(query):
            return error_response(OAuthError(400, "invalid_request", "a parameter is repeated"))
        redirect_uri, state = query.get("redirect_uri"), query.get("state")
        if (
            query.get("client_id") != self.client_id
            or redirect_uri is None
            or redirect_uri not in self.redirect_uris
        ):
            return error_response(
                OAuthError(400, "invalid_request", "unknown client_id or redirect_uri")
            )
        if query.get("response_type") != "code":
            return _redirect(redirect_uri, state, error="unsupported_response_type")
        challenge, method = query.get("code_challenge"), query.get("code_challenge_method")
        problem = None
        if challenge is None and (method is not None or self.require_pkce):
            problem = "an S256 code_challenge is required"
        elif challenge is not None and (
            method != "S256" or not _S256_CHALLENGE.fullmatch(challenge)
        ):  # RFC 7636 §4.3: an absent method means plain, which this server refuses
            problem = "only an S256 code_challenge is supported"
        if problem is not None:
            return _redirect(
                redirect_uri, state, error="invalid_request", error_description=problem
            )
        scope = query.get("scope")
        if self.scope is not None and scope != self.scope:
            return _redirect(redirect_uri, state, error="invalid_scope")
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(redirect_uri, scope, challenge, time.monotonic() + self.code_ttl)
        return _redirect(redirect_uri, state, code=code)

    # -- token request plumbing -------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        endpoint: Callable[[web.Request, dict[str, str], _Credentials | None], dict[str, object]],
    ) -> web.StreamResponse:
        """Record, apply the fault knobs, then answer §5.1 JSON or a §5.2 error."""
        header = request.headers.get("Authorization")
        rec = Recorded(
            time=time.monotonic(), path=request.path, method=request.method,
            headers={str(k): v for k, v in request.headers.items() if k.lower() != "authorization"},
            authorization_scheme=_scheme_of(header),
            content_type=request.headers.get("Content-Type"),
            raw_body_length=len(await request.read()),
        )  # fmt: skip
        custom = await self._record(request, rec)
        if custom is not None:
            return custom
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        try:
            if self.refuse is not None:
                with contextlib.suppress(OAuthError):  # still record what was sent
                    await self._inspect(request, rec)
                status = 401 if self.refuse == "invalid_client" else 400
                raise OAuthError(status, self.refuse, "refused by the test")
            doc = endpoint(request, *await self._inspect(request, rec))
        except OAuthError as e:
            rec.error, rec.status = e.error, e.status
            return error_response(e)
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = dict(NO_STORE)
        if self.gzip and accepts_gzip(request.headers.get("Accept-Encoding")):
            body = gziplib.compress(body)
            headers["Content-Encoding"] = "gzip"
            rec.gzipped = True
        rec.ok, rec.status = True, 200
        return web.Response(
            body=body, headers=headers, content_type="application/json", charset="utf-8"
        )

    async def _inspect(
        self, request: web.Request, rec: Recorded
    ) -> tuple[dict[str, str], _Credentials | None]:
        """Method, media type, form, then which client authentication was used."""
        if request.method != "POST":
            raise OAuthError(405, "invalid_request", "token requests must be POSTed")
        media, params = parse_media_type(rec.content_type)
        if media != FORM_TYPE or params.get("charset", "utf-8").lower() != "utf-8":
            raise OAuthError(400, "invalid_request", f"Content-Type must be {FORM_TYPE}")
        form = await read_form(request)
        rec.form, rec.grant_type = redacted_form(form), form.get("grant_type")
        return form, self._identify(request.headers.get("Authorization"), form, rec)

    def _identify(
        self, header: str | None, form: dict[str, str], rec: Recorded
    ) -> _Credentials | None:
        """RFC 6749 §2.3: Basic, body, or a bare client_id; more than one method is an error."""
        if header is not None:
            basic = decode_basic(header)
            if basic is None:
                raise OAuthError(401, "invalid_client", "Authorization must be Basic credentials")
            rec.client_id_seen = basic[0]
            if "client_secret" in form:
                raise OAuthError(400, "invalid_request", "client credentials sent by two methods")
            if form.get("client_id", basic[0]) != basic[0]:
                raise OAuthError(400, "invalid_request", "client_id differs from the Basic one")
            creds = _Credentials("client_secret_basic", *basic)
        elif "client_secret" in form:
            if "client_id" not in form:
                raise OAuthError(400, "invalid_request", "client_secret without client_id")
            creds = _Credentials("client_secret_post", form["client_id"], form["client_secret"])
        elif "client_id" in form:
            creds = _Credentials("none", form["client_id"], None)
        else:
            return None
        rec.client_auth_method, rec.client_id_seen = creds.method, creds.client_id
        return creds

    def _authenticate(
        self, creds: _Credentials | None, demanded: ClientAuth, *, optional: bool = False
    ) -> None:
        """The client used exactly the demanded method, with the right id (and secret)."""
        if creds is None:
            if optional:
                return
            raise OAuthError(401, "invalid_client", "client authentication is required")
        if creds.method != demanded:
            raise OAuthError(
                401, "invalid_client", f"this client must use {demanded}, not {creds.method}"
            )
        ok = same_secret(creds.client_id, self.client_id)
        if demanded != "none":
            ok &= self._client_secret is not None and same_secret(
                creds.secret or "", self._client_secret
            )
        if not ok:
            raise OAuthError(401, "invalid_client", "client authentication failed")

    def _token(
        self, request: web.Request, form: dict[str, str], creds: _Credentials | None
    ) -> dict[str, object]:
        grant = form.get("grant_type")
        if not grant:
            raise OAuthError(400, "invalid_request", "grant_type is missing")
        # RFC 7523 §3.1: client authentication is optional for the JWT bearer grant.
        self._authenticate(
            creds, self.client_auth, optional=grant == JWT_BEARER and self.client_auth == "none"
        )
        handler = self._grants.get(grant)
        if handler is None:
            raise OAuthError(400, "unsupported_grant_type", f"grant {grant!r} is not supported")
        return handler(request, form)

    def _scope(self, form: dict[str, str], *, optional: bool = False) -> str | None:
        """The requested scope, which must be exactly the configured one (when configured);
        ``optional`` for refresh, where omitting it means the scope granted before (§6)."""
        scope = form.get("scope")
        if self.scope is not None and scope != self.scope and not (optional and scope is None):
            raise OAuthError(400, "invalid_scope", "the requested scope is not allowed")
        return scope

    def _mint(self, grant: str) -> str:
        token = secrets.token_urlsafe(32)
        lifetime = self.ttl if self.ttl is not None else self.hidden_ttl
        self.issued[token] = time.monotonic() + lifetime
        self.grants_issued.append(grant)
        return token

    def _answer(self, grant: str, *, scope: str | None, refresh: bool) -> dict[str, object]:
        """RFC 6749 §5.1 success body with a fresh access (and maybe refresh) token."""
        doc: dict[str, object] = {"access_token": self._mint(grant), "token_type": "Bearer"}
        if self.ttl is not None:
            doc["expires_in"] = int(self.ttl)
        if refresh:
            doc["refresh_token"] = self.seed_refresh_token()
        if scope is not None:
            doc["scope"] = scope
        return doc

    # -- grants -----------------------------------------------------------------------------

    def _client_credentials(self, request: web.Request, form: dict[str, str]) -> dict[str, object]:
        if self.client_auth == "none":  # §4.4: confidential clients only
            raise OAuthError(400, "unauthorized_client", "a public client cannot use this grant")
        return self._answer(CLIENT_CREDENTIALS, scope=self._scope(form), refresh=False)

    def _password(self, request: web.Request, form: dict[str, str]) -> dict[str, object]:
        username, password = form.get("username"), form.get("password")
        if username is None or password is None:
            raise OAuthError(400, "invalid_request", "username and password are required")
        expected = self._users.get(username)
        if expected is None or not same_secret(password, expected):
            raise OAuthError(400, "invalid_grant", "wrong username or password")
        return self._answer(PASSWORD, scope=self._scope(form), refresh=self.issue_refresh_tokens)

    def _refresh_token(self, request: web.Request, form: dict[str, str]) -> dict[str, object]:
        """§6, rotating when asked: the used token is spent once its successor is issued."""
        token = form.get("refresh_token")
        if token is None:
            raise OAuthError(400, "invalid_request", "refresh_token is missing")
        self.refresh_tokens_used.append(token)
        state = self._refresh.get(token)
        if state == "spent":
            self.reused_refresh_tokens += 1
            raise OAuthError(400, "invalid_grant", "refresh token already used")
        if state != "valid":
            raise OAuthError(400, "invalid_grant", "unknown or revoked refresh token")
        rotate = self.issue_refresh_tokens and self.rotate_refresh_tokens
        doc = self._answer(REFRESH_TOKEN, scope=self._scope(form, optional=True), refresh=rotate)
        if rotate:
            self._refresh[token] = "spent"
        return doc

    def _authorization_code(self, request: web.Request, form: dict[str, str]) -> dict[str, object]:
        """§4.1.3 and RFC 7636 §4.6. The client id matches because this server knows one
        client and both endpoints authenticate it."""
        code = form.get("code")
        if code is None:
            raise OAuthError(400, "invalid_request", "code is missing")
        grant = self._codes.get(code)
        if grant is None:
            raise OAuthError(400, "invalid_grant", "unknown authorization code")
        if grant.used:  # §4.1.2: deny, and revoke what the first use obtained
            self._revoked.update(t for t in grant.tokens if t in self.issued)
            self._refresh.update({t: "revoked" for t in grant.tokens if t in self._refresh})
            raise OAuthError(400, "invalid_grant", "authorization code already used")
        grant.used = True  # any attempt consumes it: no guessing verifiers
        if time.monotonic() >= grant.expires:
            raise OAuthError(400, "invalid_grant", "authorization code expired")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError(400, "invalid_grant", "redirect_uri differs from the authorization")
        verifier = form.get("code_verifier")
        if grant.challenge is None and verifier is not None:  # RFC 9700 §2.1.1: no downgrade
            raise OAuthError(400, "invalid_grant", "code_verifier but no code_challenge")
        if grant.challenge is not None and not (
            verifier is not None
            and _VERIFIER.fullmatch(verifier)
            and hmac.compare_digest(_s256(verifier), grant.challenge)
        ):
            raise OAuthError(400, "invalid_grant", "PKCE verification failed")
        doc = self._answer(AUTHORIZATION_CODE, scope=grant.scope, refresh=self.issue_refresh_tokens)
        grant.tokens.extend(str(doc[k]) for k in ("access_token", "refresh_token") if k in doc)
        return doc

    def _jwt_bearer(self, request: web.Request, form: dict[str, str]) -> dict[str, object]:
        """RFC 7523 §2.1; by default the audience is this token endpoint's URL (§3)."""
        assertion = form.get("assertion")
        if assertion is None:
            raise OAuthError(400, "invalid_request", "assertion is missing")
        self._verify_jwt(assertion, self.jwt_audience or f"{request.url.origin()}{self.path}")
        return self._answer(JWT_BEARER, scope=self._scope(form), refresh=False)

    def _ims(
        self, request: web.Request, form: dict[str, str], creds: _Credentials | None
    ) -> dict[str, object]:
        """Adobe IMS JWT exchange: credentials and ``jwt_token`` in the body, ``aud`` is
        ``{base}/c/{client_id}``, ``expires_in`` in milliseconds, ``token_type`` lower case."""
        if "grant_type" in form:
            raise OAuthError(400, "invalid_request", "the IMS exchange takes no grant_type")
        self._authenticate(creds, "client_secret_post")
        assertion = form.get("jwt_token")
        if assertion is None:
            raise OAuthError(400, "invalid_request", "jwt_token is missing")
        audience = self.jwt_audience or f"{request.url.origin()}/c/{self.client_id}"
        self._verify_jwt(assertion, audience)
        doc: dict[str, object] = {"token_type": "bearer", "access_token": self._mint(IMS_JWT)}
        if self.ttl is not None:
            doc["expires_in"] = int(self.ttl * 1000)
        return doc

    def _verify_jwt(self, assertion: str, audience: str) -> None:
        """Signature, algorithm, exp/iss/sub/aud, expected claims and a bounded lifetime."""
        if self.jwt_public_key is None:
            raise OAuthError(400, "unsupported_grant_type", "this server has no JWT key")
        try:
            claims = jwt.decode(
                assertion, self.jwt_public_key, algorithms=list(self.jwt_algorithms),
                audience=audience, issuer=self.jwt_issuer,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )  # fmt: skip
        except jwt.PyJWTError as e:
            raise OAuthError(400, "invalid_grant", f"assertion rejected: {e}") from None
        if self.jwt_subject is not None and claims["sub"] != self.jwt_subject:
            raise OAuthError(400, "invalid_grant", "assertion has the wrong subject")
        if claims["exp"] - time.time() > self.jwt_max_lifetime:
            raise OAuthError(400, "invalid_grant", "assertion lives too long")
        for name, value in self.jwt_required_claims.items():
            # type() too: JSON true must not be satisfied by 1
            if name not in claims or claims[name] != value or type(claims[name]) is not type(value):
                raise OAuthError(400, "invalid_grant", f"assertion lacks claim {name!r}")
