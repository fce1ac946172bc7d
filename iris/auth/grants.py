"""The standard token requests (RFC 6749, RFC 7523, Adobe IMS) and the standard answer (§5).

Each grant has an *initial* request (what it does with no refresh token) and, where the partner
issued a refresh token, a *refresh* request (RFC 6749 §6). Client authentication follows the
config: ``client_secret_basic`` (§2.3.1 encoding), ``client_secret_post``, or ``none``.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson

from iris.auth.exchange import Grant, TokenAnswer, TokenHttpRequest
from iris.auth.forms import form_url_encode
from iris.config.auth import (
    AuthorizationCodeAuth,
    ClientCredentialsAuth,
    JwtBearerAuth,
    OAuth2Base,
    PasswordAuth,
)
from iris.core.logs import redact, register_secret
from iris.errors import TokenError

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# RFC 6749 §5.2 errors that say "later": every other error object is a refusal, which
# retrying cannot cure, and pauses the destination until a person acts.
PASSING = frozenset({"server_error", "temporarily_unavailable", "slow_down"})  # §5.2, OIDC
MIN_LIFETIME = 1.0  # seconds: a shorter (positive) expires_in is read as this much
MAX_LIFETIME = 86400.0  # seconds: a longer one (or "never expires") as a day
FORM_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a form answer's field names


def client_basic_header(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic.

    A space is written as %20 rather than '+': RFC 6749 Appendix B decoders read both as a
    space, and so do servers that percent-decode only (Authlib), which read '+' literally.
    """
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def answer_json(answer: TokenAnswer) -> object:
    """The answer's JSON document, or None when it has none."""
    try:
        return orjson.loads(answer.body) if answer.body else None
    except orjson.JSONDecodeError:
        return None


def answer_fields(answer: TokenAnswer) -> dict[str, Any] | None:
    """The answer as fields, whatever its declared content type: a JSON object first, then a
    form (``access_token=...&expires_in=3600``, as some providers answer by default)."""
    data = answer_json(answer)
    if isinstance(data, dict):
        return data
    if data is not None:
        return None
    try:
        text = answer.body.decode()
    except UnicodeDecodeError:
        return None
    try:
        pairs = parse_qsl(text.strip(), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None
    return dict(pairs) if pairs and all(FORM_NAME.fullmatch(k) for k, _ in pairs) else None


def refusal(answer: TokenAnswer, data: object, what: str = "") -> TokenError:
    """The ``TokenError`` for an answer that gave no token: permanent for an OAuth 2 error
    object (RFC 6749 §5.2: a refusal whatever the status) and for 401/403, transient otherwise
    (5xx, proxies' error pages). The endpoint's ``error_description`` is kept: it often names
    the cause (a clock skew, an unknown key)."""
    status = answer.status
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, str) and error else None
    described = data.get("error_description") if isinstance(data, dict) else None
    detail = f" ({redact(error)[:60]})" if error else ""
    if isinstance(described, str) and described:
        detail += f": {redact(' '.join(described.split()))[:160]}"
    return TokenError(
        what or f"token endpoint answered {status}{detail}",
        permanent=(error is not None and error not in PASSING) or status in (401, 403),
        status=status, error=error,
    )


def parse_token_response(answer: TokenAnswer, default_expires_in: float,
                         expires_in_unit: float = 1.0) -> Grant:
    """RFC 6749 §5.1/§5.2: a ``Grant``, or a ``TokenError`` that names the problem. An error
    object is a refusal even with a 2xx; a 2xx without a usable token is a (transient) error."""
    data = answer_fields(answer)
    if not 200 <= answer.status < 300 or (data is not None and "error" in data):
        raise refusal(answer, data)
    if data is None:
        raise TokenError(f"token endpoint answered {answer.status} with neither a JSON object "
                         "nor form fields", status=answer.status)
    return make_grant(data.get("access_token"), data.get("expires_in"), data.get("token_type"),
                      data.get("refresh_token"), default_expires_in, expires_in_unit)


def token_lifetime(expires_in: object, default: float, unit: float = 1.0) -> float:
    """Seconds a token lives: ``expires_in`` (a number or a numeric string) in ``unit``s,
    clamped to [``MIN_LIFETIME``, ``MAX_LIFETIME``]; ``default`` when it is missing, 0 or
    negative (a partner saying "no expiry" gets a token refreshed daily)."""
    if expires_in in (None, "") or isinstance(expires_in, bool):
        return default
    try:
        seconds = float(expires_in) * unit  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TokenError("token response has a non-numeric expires_in") from None
    if not math.isfinite(seconds) or seconds <= 0:
        return default if seconds <= 0 else MAX_LIFETIME
    return min(MAX_LIFETIME, max(MIN_LIFETIME, seconds))


def make_grant(access_token: object, expires_in: object, token_type: object,
               refresh_token: object, default_expires_in: float,
               expires_in_unit: float = 1.0) -> Grant:
    """Check and convert the four outputs of seed 003 (strings from templates are fine)."""
    if not isinstance(access_token, str) or not access_token:
        raise TokenError("token response has no access_token")
    register_secret(access_token, rotating=True)
    ttl = token_lifetime(expires_in, default_expires_in, expires_in_unit)
    refresh = refresh_token if isinstance(refresh_token, str) and refresh_token else None
    register_secret(refresh, rotating=True)
    return Grant(access_token, ttl, str(token_type or "Bearer"), refresh)


class StandardRequests:
    """Builds the token requests of one destination's grant, as RFC 6749 writes them."""

    def __init__(self, auth: OAuth2Base) -> None:
        self.auth = auth
        for secret in (auth.client_secret, getattr(auth, "password", None)):
            if secret is not None:
                register_secret(secret.get_secret_value())
        self._signer = None
        if isinstance(auth, JwtBearerAuth):
            from iris.auth.jwt_assertion import AssertionSigner  # PyJWT only where used

            self._signer = AssertionSigner(auth)
        ims = isinstance(auth, JwtBearerAuth) and auth.form == "adobe_ims"
        self._unit = 0.001 if ims else 1.0  # Adobe IMS gives expires_in in milliseconds

    @property
    def initial(self) -> Callable[[], TokenHttpRequest] | None:
        """The request that needs no refresh token, if this grant has one."""
        auth = self.auth
        if isinstance(auth, ClientCredentialsAuth):
            return lambda: self.request({"grant_type": "client_credentials"})
        if isinstance(auth, PasswordAuth):
            return lambda: self.request({"grant_type": "password", "username": auth.username,
                                         "password": auth.password.get_secret_value()})
        if isinstance(auth, JwtBearerAuth):
            return self._jwt
        return None  # refresh token and authorization code grants start from a refresh token

    def refresh(self, refresh_token: str) -> TokenHttpRequest:
        return self.request({"grant_type": "refresh_token", "refresh_token": refresh_token},
                            url=self.auth.refresh_token_url)

    def code(self, code: str, redirect_uri: str, verifier: str | None) -> TokenHttpRequest:
        """RFC 6749 §4.1.3 (with RFC 7636's code_verifier): what ``iris auth login`` sends."""
        assert isinstance(self.auth, AuthorizationCodeAuth)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if verifier is not None:
            form["code_verifier"] = verifier
        return self.request(form, scope=False)

    def parse(self, answer: TokenAnswer) -> Grant:
        return parse_token_response(answer, self.auth.default_expires_in, self._unit)

    def request(self, form: dict[str, str], *, url: str | None = None,
                scope: bool = True) -> TokenHttpRequest:
        """``form`` plus scope, extra parameters and the configured client authentication."""
        auth = self.auth
        form = dict(form)
        if scope and auth.scope_text:
            form["scope"] = auth.scope_text
        form.update(auth.params)
        headers = {}
        method, client_id = auth.method, auth.client_id or ""
        secret = auth.client_secret.get_secret_value() if auth.client_secret else ""
        if method == "client_secret_basic":
            headers["Authorization"] = client_basic_header(client_id, secret)
            register_secret(headers["Authorization"])
        elif method == "client_secret_post":
            form.update(client_id=client_id, client_secret=secret)
        elif client_id:
            form["client_id"] = client_id  # a public client names itself (§4.1.3, §3.2.1)
        return self._post(url, form, headers)

    def _post(self, url: str | None, form: dict[str, str],
              headers: dict[str, str] | None = None) -> TokenHttpRequest:
        target = url or self.auth.token_url
        assert target is not None  # checked when the config was loaded
        pairs = [item for pair in form.items() for item in pair]
        headers = {"Content-Type": FORM_CONTENT_TYPE, "Accept": "application/json",
                   "Accept-Encoding": "gzip", **(headers or {})}
        return TokenHttpRequest(target, "POST", headers, form_url_encode(*pairs).encode())

    def _jwt(self) -> TokenHttpRequest:
        auth = self.auth
        assert isinstance(auth, JwtBearerAuth) and self._signer is not None
        assertion = self._signer.assertion()
        if auth.form == "adobe_ims":  # seed 002: no grant_type, credentials in the body
            assert auth.client_id is not None and auth.client_secret is not None
            return self._post(None, {"client_id": auth.client_id,
                                     "client_secret": auth.client_secret.get_secret_value(),
                                     "jwt_token": assertion})
        return self.request({"grant_type": JWT_BEARER_GRANT, "assertion": assertion})
