"""The standard token requests (RFC 6749, RFC 7523, Adobe IMS) and the standard answer (§5).

Each grant has an *initial* request (what it does with no refresh token) and, where the partner
issued a refresh token, a *refresh* request (RFC 6749 §6). Client authentication follows the
config: ``client_secret_basic`` (§2.3.1 encoding), ``client_secret_post``, or ``none``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import quote

import orjson

from iris.auth.endpoint import TokenAnswer, TokenHttpRequest
from iris.auth.tokens import Grant
from iris.auth_config import (
    AuthorizationCodeAuth,
    ClientCredentialsAuth,
    JwtBearerAuth,
    OAuth2Base,
    PasswordAuth,
)
from iris.errors import TokenError
from iris.logs import redact, register_secret
from iris.urlforms import form_url_encode

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# RFC 6749 §5.2 errors that retrying cannot cure: the destination pauses until a person acts.
REFUSALS = frozenset({"invalid_client", "unauthorized_client", "invalid_grant", "invalid_scope",
                      "unsupported_grant_type", "invalid_request"})


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


def refusal(answer: TokenAnswer, data: object, what: str = "") -> TokenError:
    """The ``TokenError`` for an answer that gave no token: permanent for RFC 6749 §5.2
    refusals (and 401/403), transient otherwise (5xx, proxies' error pages)."""
    status = answer.status
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, str) else None
    detail = f" ({redact(error)[:60]})" if error else ""
    return TokenError(
        what or f"token endpoint answered {status}{detail}",
        permanent=400 <= status < 500 and (error in REFUSALS or status in (401, 403)),
        status=status, error=error,
    )


def parse_token_response(answer: TokenAnswer, default_expires_in: float,
                         expires_in_unit: float = 1.0) -> Grant:
    """RFC 6749 §5.1/§5.2: a ``Grant``, or a ``TokenError`` that names the problem."""
    data = answer_json(answer)
    if not 200 <= answer.status < 300:
        raise refusal(answer, data)
    if not isinstance(data, dict):
        raise TokenError(f"token endpoint answered {answer.status} without a JSON object",
                         status=answer.status)
    return make_grant(data.get("access_token"), data.get("expires_in"), data.get("token_type"),
                      data.get("refresh_token"), default_expires_in, expires_in_unit)


def make_grant(access_token: object, expires_in: object, token_type: object,
               refresh_token: object, default_expires_in: float,
               expires_in_unit: float = 1.0) -> Grant:
    """Check and convert the four outputs of seed 003 (strings from templates are fine)."""
    if not isinstance(access_token, str) or not access_token:
        raise TokenError("token response has no access_token")
    register_secret(access_token, rotating=True)
    try:
        ttl = float(expires_in) * expires_in_unit if expires_in not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise TokenError("token response has a non-numeric expires_in") from None
    refresh = refresh_token if isinstance(refresh_token, str) and refresh_token else None
    register_secret(refresh, rotating=True)
    return Grant(access_token, ttl if ttl > 0 else default_expires_in,
                 str(token_type or "Bearer"), refresh)


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
