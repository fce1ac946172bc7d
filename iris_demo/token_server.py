"""An OAuth 2 token endpoint (client-credentials grant) as AAM's seed 000 describes it.

Written from seed 000 and RFC 6749 §2.3.1 (client id and secret are form-urlencoded, then
sent as HTTP Basic), §4.4 (client credentials grant) and §5.1–5.2 (JSON success and error
bodies). It is strict on purpose: a client that passes here passes a picky real partner.
Secrets and Authorization values are never recorded; issued tokens are kept for validation.
"""

from __future__ import annotations

import base64
import binascii
import gzip as gziplib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

FORM_TYPE = "application/x-www-form-urlencoded"
REDACTED_FORM_KEYS = frozenset(
    {"client_secret", "password", "refresh_token", "assertion", "jwt_token", "code",
     "code_verifier"}
)


@dataclass
class TokenRequest:
    """What one token request looked like (no secret, no Authorization value)."""

    time: float
    method: str
    content_type: str | None
    accept_encoding: str | None
    form: dict[str, str] = field(default_factory=dict)
    client_id_seen: str | None = None
    ok: bool = False
    error: str | None = None
    status: int = 0
    gzipped: bool = False


class OAuthError(Exception):
    """One RFC 6749 §5.2 error answer."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def parse_media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Split ``type/sub ; k=v`` case-insensitively, tolerating blanks around ``;`` and ``=``."""
    if not value:
        return "", {}
    head, *rest = value.split(";")
    params: dict[str, str] = {}
    for part in rest:
        key, sep, val = part.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return head.strip().lower(), params


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when Accept-Encoding lists gzip (or ``*``) with a non-zero q value."""
    for item in (accept_encoding or "").split(","):
        coding, params = parse_media_type(item)
        if coding in ("gzip", "x-gzip", "*"):
            try:
                if float(params.get("q", "1")) > 0:
                    return True
            except ValueError:
                continue
    return False


def decode_basic(header: str | None) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1 Basic: base64, split at the first ``:``, form-decode each side."""
    if not header:
        return None
    scheme, _, b64 = header.strip().partition(" ")
    if scheme.lower() != "basic" or not b64.strip():
        return None
    try:
        raw = base64.b64decode(b64.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    if not sep:
        return None
    return unquote_plus(user), unquote_plus(password)


def same_secret(a: str, b: str) -> bool:
    """Constant-time comparison that also works for non-ASCII strings."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class TokenIssuer:
    """What a partner asks of the server that issued its clients' tokens, and what tests count.

    Subclasses fill ``requests`` (records with an ``ok`` flag) and ``issued`` (token ->
    monotonic expiry), and serve ``routes()``.
    """

    requests: list[Any]
    issued: dict[str, float]
    _revoked: set[str]
    # Fault hook: awaited before validation; a non-None response is returned as is.
    responder: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None

    async def _record(self, request: web.Request, rec: Any) -> web.StreamResponse | None:
        """Keep ``rec``; the fault hook's answer, recorded as such, if it gives one."""
        self.requests.append(rec)
        if self.responder is None:
            return None
        custom = await self.responder(request)
        if custom is not None:
            rec.error, rec.status = "responder", custom.status
        return custom

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(self.routes())
        return app

    @property
    def ok_requests(self) -> int:
        return sum(1 for r in self.requests if r.ok)

    def is_valid(self, token: str) -> bool:
        expiry = self.issued.get(token)
        return expiry is not None and token not in self._revoked and time.monotonic() < expiry

    def is_expired(self, token: str) -> bool:
        """Issued by us, but past its lifetime (as opposed to unknown or revoked)."""
        expiry = self.issued.get(token)
        return expiry is not None and time.monotonic() >= expiry

    def is_revoked(self, token: str) -> bool:
        return token in self._revoked

    def revoke_all(self) -> None:
        """Invalidate every access token issued so far; tokens issued later are valid."""
        self._revoked.update(self.issued)


class TokenServer(TokenIssuer):
    """Issues random bearer tokens to one client and remembers them for the partner to check."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        ttl: float | None = 3600,
        gzip: bool = False,
        scope: str | None = None,
        path: str = "/oauth2/token",
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.ttl = ttl
        self.hidden_ttl: float = 3600  # real lifetime when ttl is None (no expires_in sent)
        self.gzip = gzip
        self.scope = scope
        self.path = path
        self.requests: list[TokenRequest] = []
        self.issued: dict[str, float] = {}  # token -> monotonic expiry
        self.issued_wall: dict[str, float] = {}  # token -> time.time() expiry
        self._revoked: set[str] = set()
        # Fault hook: awaited before validation; a non-None response is returned as is.
        self.responder: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"TokenServer(client_id={self.client_id!r}, path={self.path!r}, ttl={self.ttl!r})"

    # -- wiring -----------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", self.path, self.handle)]

    def all_tokens(self) -> list[str]:
        return list(self.issued)

    # -- the endpoint -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rec = TokenRequest(
            time=time.monotonic(),
            method=request.method,
            content_type=request.headers.get("Content-Type"),
            accept_encoding=request.headers.get("Accept-Encoding"),
        )
        custom = await self._record(request, rec)
        if custom is not None:
            return custom
        try:
            await self._validate(request, rec)
        except OAuthError as e:
            rec.error, rec.status = e.error, e.status
            return error_response(e)
        return self._issue(rec)

    async def _validate(self, request: web.Request, rec: TokenRequest) -> None:
        """Raise OAuthError for the first problem, in the order a careful server checks."""
        if request.method != "POST":
            raise OAuthError(405, "invalid_request", "the token endpoint accepts POST only")
        media, params = parse_media_type(rec.content_type)
        if media != FORM_TYPE or params.get("charset", "").lower() != "utf-8":
            raise OAuthError(
                400, "invalid_request", f"Content-Type must be {FORM_TYPE};charset=UTF-8"
            )
        creds = decode_basic(request.headers.get("Authorization"))
        if creds is not None:
            rec.client_id_seen = creds[0]
        if creds is None or not (
            same_secret(creds[0], self.client_id) & same_secret(creds[1], self._client_secret)
        ):
            raise OAuthError(401, "invalid_client", "client authentication failed")
        rec.form = redacted_form(await read_form(request))
        grant = rec.form.get("grant_type")
        if not grant:
            raise OAuthError(400, "invalid_request", "grant_type is missing")
        if grant != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", "only client_credentials is supported")
        if self.scope is not None and rec.form.get("scope") != self.scope:
            raise OAuthError(400, "invalid_scope", "the requested scope is not allowed")

    def _issue(self, rec: TokenRequest) -> web.Response:
        """RFC 6749 §5.1 success: a fresh token, optionally gzip-encoded as in seed 000."""
        token = secrets.token_urlsafe(32)  # 43 url-safe chars
        lifetime = self.ttl if self.ttl is not None else self.hidden_ttl
        self.issued[token] = time.monotonic() + lifetime
        self.issued_wall[token] = time.time() + lifetime
        doc: dict[str, object] = {"token_type": "Bearer", "access_token": token}
        if self.ttl is not None:
            doc["expires_in"] = int(self.ttl)
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if self.gzip and accepts_gzip(rec.accept_encoding):
            body = gziplib.compress(body)
            headers["Content-Encoding"] = "gzip"
            rec.gzipped = True
        rec.ok, rec.status = True, 200
        return web.Response(
            body=body, status=200, headers=headers, content_type="application/json",
            charset="utf-8",
        )  # fmt: skip


async def read_form(request: web.Request) -> dict[str, str]:
    """Parse the body as UTF-8 form data; repeated parameters are an error (RFC 6749 §3.2)."""
    try:
        text = (await request.read()).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError) as e:
        raise OAuthError(400, "invalid_request", "the body is not UTF-8 form data") from e
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise OAuthError(400, "invalid_request", f"parameter {key!r} is repeated")
        form[key] = value
    return form


def redacted_form(form: dict[str, str]) -> dict[str, str]:
    """The form as it may be recorded: secret-bearing parameters replaced by ``***``."""
    return {k: "***" if k in REDACTED_FORM_KEYS else v for k, v in form.items()}


def error_response(e: OAuthError) -> web.Response:
    """RFC 6749 §5.2 error body; 401 carries the Basic challenge."""
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if e.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="token"'
    if e.status == 405:
        headers["Allow"] = "POST"
    body = json.dumps({"error": e.error, "error_description": e.description})
    return web.Response(
        text=body, status=e.status, headers=headers, content_type="application/json"
    )
