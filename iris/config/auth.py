"""Settings of how iris authenticates to a destination (DESIGN 1.3 ``auth``), how it signs
requests, and where the tokens every replica shares are kept.

OAuth 2 grants follow RFC 6749 and seed 003 (client credentials, password, refresh token,
authorization code), JWT bearer follows RFC 7523 or Adobe IMS's exchange (seed 002), and any of
them can replace its token request with seed 003's templated ``accessTokenRequest``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, model_validator

from iris.config.base import IdText, Positive, SecretsFromFiles, Strict

# cryptography and Jinja2 are imported where a config uses them: a worker that needs neither
# does not carry them (about 11 MB of resident memory).


def _template(source: str) -> str:
    """Syntax only (the config sits below ``iris.auth``, whose environment renders these): a
    template that does not parse stops the config from loading."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment().parse(source)
    except TemplateError as exc:
        raise ValueError(f"template syntax error: {exc}") from None
    return source


Template = Annotated[str, AfterValidator(_template)]
ClientAuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]
ResponseField = Literal["accessToken", "expiresIn", "refreshToken", "tokenType"]


class Validation(Strict):
    """Seed 003's ``validations``: the rendered ``actual`` must equal the rendered ``expected``."""

    name: str = Field(min_length=1)
    actual: Template
    expected: Template


class TokenRequestTemplate(Strict):
    """Seed 003's ``accessTokenRequest``: every string is a template over ``authData`` (and
    ``response`` for ``response_fields`` and ``validations``)."""

    url: Template | None = None  # default: the auth's token_url
    method: Literal["POST", "PUT", "GET"] = "POST"
    content_type: str = "application/x-www-form-urlencoded"
    headers: dict[str, Template] = Field(default_factory=dict)
    body: Template = ""
    response_fields: dict[ResponseField, Template] = Field(default_factory=dict)
    validations: list[Validation] = Field(default_factory=list)


class NoAuth(Strict):
    type: Literal["none"] = "none"


class BasicAuth(SecretsFromFiles):
    type: Literal["basic"]
    username: str
    password: SecretStr


class BearerAuth(SecretsFromFiles):
    type: Literal["bearer"]
    token: SecretStr


class OAuth2Base(SecretsFromFiles):
    """What every token-issuing grant shares (seed 003's common inputs)."""

    token_url: str | None = None
    refresh_token_url: str | None = None  # default: token_url
    client_id: IdText | None = Field(None, min_length=1)
    client_secret: SecretStr | None = None
    client_auth: ClientAuthMethod | None = None  # default: basic with a secret, else none
    scope: str | list[str] | None = None
    params: dict[str, str] = Field(default_factory=dict)  # extra token request parameters
    default_expires_in: Positive = 3600  # when the answer has no expires_in (seed 003)
    data: dict[str, str] = Field(default_factory=dict)  # extra authData for templates
    token_request: TokenRequestTemplate | None = None

    needs_client_id: ClassVar[bool] = True  # a public client still names itself in the body
    confidential: ClassVar[bool] = False  # the grant is only for clients with a secret
    type: str

    @model_validator(mode="after")
    def _complete(self) -> OAuth2Base:
        if self.token_url is None and (self.token_request is None or not self.token_request.url):
            raise ValueError("token_url: required")
        if self.token_request is None:  # a template says itself what it sends
            if self.client_id is None and (self.method != "none" or self.needs_client_id):
                raise ValueError("client_id: required")
            if self.confidential and self.client_auth is None and self.client_secret is None:
                raise ValueError(f"client_secret: required by {self.type} (or set "
                                 "client_auth: none for a partner that wants no secret)")
            if self.method != "none" and self.client_secret is None:
                raise ValueError(f"client_secret: required by client_auth {self.method}")
        return self

    @property
    def method(self) -> ClientAuthMethod:
        """How the client authenticates at the token endpoint (RFC 6749 §2.3)."""
        if self.client_auth is not None:
            return self.client_auth
        return "client_secret_basic" if self.client_secret is not None else "none"

    @property
    def scope_text(self) -> str | None:
        """RFC 6749 §3.3: space-delimited; seed 003 writes scopes as a list."""
        if isinstance(self.scope, list):
            return " ".join(self.scope) or None
        return self.scope

    def urls(self) -> list[tuple[str, str]]:
        """(key, URL) of every endpoint iris will call, for the https check."""
        return [(key, url) for key in ("token_url", "refresh_token_url", "authorization_url")
                if isinstance(url := getattr(self, key, None), str)]


class ClientCredentialsAuth(OAuth2Base):
    """RFC 6749 §4.4 and seed 000."""

    type: Literal["oauth2_client_credentials"]

    confidential: ClassVar[bool] = True  # RFC 6749 §4.4


class PasswordAuth(OAuth2Base):
    """RFC 6749 §4.3: the resource owner's username and password."""

    type: Literal["oauth2_password"]
    username: str = Field(min_length=1)
    password: SecretStr


class RefreshTokenAuth(OAuth2Base):
    """RFC 6749 §6: a long-lived refresh token; a rotated one replaces it in the token store."""

    type: Literal["oauth2_refresh_token"]
    refresh_token: SecretStr | None = None  # None: it must already be in the token store


class AuthorizationCodeAuth(OAuth2Base):
    """RFC 6749 §4.1: a person authorises once with ``iris auth login``; workers then live on
    the refresh token it stored."""

    type: Literal["oauth2_authorization_code"]
    authorization_url: str
    redirect_uri: str = "http://127.0.0.1:8976/callback"
    pkce: bool = True  # RFC 7636 S256

    @model_validator(mode="after")
    def _loopback(self) -> AuthorizationCodeAuth:
        parts = urlsplit(self.redirect_uri)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("redirect_uri: must be an http:// loopback URL (RFC 8252 §7.3): "
                             "iris auth login listens there")
        if parts.port is None:
            raise ValueError("redirect_uri: needs an explicit port to listen on")
        return self


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                       "ES256", "ES384", "ES512"]
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}  # RFC 7518 §3.4
CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
MIN_RSA_BITS = 2048  # NIST SP 800-131A; PyJWT warns below it on every signature
# The claims iris sets in every assertion, and the key that sets each one.
RESERVED_CLAIMS = {"iss": "issuer", "sub": "subject", "aud": "audience", "iat": "leeway",
                   "nbf": "leeway", "exp": "lifetime", "jti": "a fresh value per assertion"}


class JwtBearerAuth(OAuth2Base):
    """A signed JWT exchanged for a token: RFC 7523 (``assertion``) or Adobe IMS (seed 002:
    ``client_id``, ``client_secret``, ``jwt_token``).

    Everything ``AssertionSigner`` will need is proven at load, by signing one assertion: a
    key that does not fit the algorithm must stop ``check-config``, not the first token request.
    """

    type: Literal["jwt_bearer"]
    form: Literal["rfc7523", "adobe_ims"] = "rfc7523"
    private_key: SecretStr  # PEM; give it as private_key_file
    algorithm: JwtAlgorithm = "RS256"
    key_id: IdText | None = None  # the JWT header's kid
    issuer: str = Field(min_length=1)
    subject: str | None = None
    audience: str = Field(min_length=1)
    lifetime: Annotated[float, Field(gt=0, le=86400)] = 300  # exp = iat + lifetime
    # iat = now - leeway: a token endpoint whose clock is behind ours by up to this much still
    # sees an assertion issued in its past (PyJWT and Authlib allow no leeway by default).
    leeway: Annotated[float, Field(ge=0, le=300)] = 5
    claims: dict[str, Any] = Field(default_factory=dict)  # extra claims, e.g. IMS metascopes

    needs_client_id: ClassVar[bool] = False  # RFC 7523: client authentication is optional

    @model_validator(mode="after")
    def _assertion(self) -> JwtBearerAuth:
        self._check_claims()
        self._check_key()
        if self.form == "adobe_ims" and (self.client_id is None or self.client_secret is None):
            raise ValueError("client_id: form adobe_ims sends client_id and client_secret")
        if self.form == "adobe_ims" and (self.scope or self.params or self.client_auth):
            raise ValueError("scope: form adobe_ims sends only client_id, client_secret and "
                             "jwt_token; give IMS metascopes as claims instead (scope, params "
                             "and client_auth do not apply)")
        return self

    def _check_claims(self) -> None:
        """A configured claim must never be silently replaced by iris's own, and must be
        JSON (YAML turns an unquoted date into a date, which no JWT can carry)."""
        if self.leeway >= self.lifetime:
            raise ValueError(f"leeway: must be less than lifetime ({self.lifetime:g} s), or "
                             "the assertion would be expired when it is made")
        for name, value in self.claims.items():
            if name in RESERVED_CLAIMS:
                raise ValueError(f"claims.{name}: iris sets {name} itself (from "
                                 f"{RESERVED_CLAIMS[name]}); remove it from claims")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(f"claims.{name}: not a JSON value ({type(value).__name__}): "
                                 "quote it") from None

    def _check_key(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(self.private_key.get_secret_value().encode(), None)
        except (ValueError, TypeError):
            raise ValueError("private_key: not an unencrypted PEM private key") from None
        algorithm = self.algorithm
        if algorithm in EC_CURVES:
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"private_key: {algorithm} needs an EC key")
            wanted = EC_CURVES[algorithm]
            if key.curve.name != wanted:
                raise ValueError(f"private_key: {algorithm} needs an EC key on curve "
                                 f"{CURVE_NAMES[wanted]}, not {key.curve.name}")
        elif not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"private_key: {algorithm} needs an RSA key")
        elif key.key_size < MIN_RSA_BITS:
            raise ValueError(f"private_key: {algorithm} needs an RSA key of at least "
                             f"{MIN_RSA_BITS} bits, not {key.key_size}")
        _sign_once(key, algorithm)


def _sign_once(key: Any, algorithm: str) -> None:
    """Sign one throw-away assertion, so that whatever PyJWT would refuse is refused now."""
    import jwt

    try:
        jwt.encode({"iss": "check-config"}, key, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"private_key: cannot sign {algorithm} with this key "
                         f"({type(exc).__name__})") from None


AuthConfig = Annotated[
    NoAuth | BasicAuth | BearerAuth | ClientCredentialsAuth | PasswordAuth | RefreshTokenAuth
    | AuthorizationCodeAuth | JwtBearerAuth,
    Field(discriminator="type"),
]
AUTH_TYPES = ("none", "basic", "bearer", "oauth2_client_credentials", "oauth2_password",
              "oauth2_refresh_token", "oauth2_authorization_code", "jwt_bearer")


class SigningKey(SecretsFromFiles):
    id: IdText = Field(min_length=1)  # told to the partner in key_id_header
    secret: SecretStr
    active_from: datetime | None = None  # signs from this instant on (a rotation cut-over)

    @model_validator(mode="after")
    def _aware(self) -> SigningKey:
        if self.active_from is not None and self.active_from.tzinfo is None:
            raise ValueError("active_from: give a time zone, e.g. 2026-12-01T00:00:00Z")
        return self


HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]  # RFC 9110 token
RESERVED_HEADERS = frozenset({"authorization", "content-type", "content-length", "host",
                              "accept-encoding", "user-agent"})


class SigningConfig(Strict):
    """AAM's digitally signed requests: an HMAC of the exact body, base64, in ``header``."""

    header: HeaderName = "X-Signature"
    algorithm: Literal["sha256", "sha1", "md5"] = "sha256"
    key_id_header: HeaderName | None = None
    keys: list[SigningKey] = Field(min_length=1, max_length=2)  # newest first

    @model_validator(mode="after")
    def _distinct(self) -> SigningConfig:
        names = [self.header] + ([self.key_id_header] if self.key_id_header else [])
        for key, name in zip(("header", "key_id_header"), names, strict=False):
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{key}: iris sets {name} itself; choose another header")
        if len({n.lower() for n in names}) < len(names):
            raise ValueError("key_id_header: must differ from header")
        if len({k.id for k in self.keys}) < len(self.keys):
            raise ValueError("keys: each key needs its own id")
        return self


class TokenStoreConfig(SecretsFromFiles):
    """Tokens shared by all replicas, in the same Redis as the streams."""

    key_prefix: str = ""  # default: <stream.key>:auth
    encryption_key: SecretStr | None = None  # a Fernet key: tokens encrypted at rest
    refusal_pause: Annotated[float, Field(ge=60)] = 60  # first pause after a refusal
    fresh_token_age: Annotated[float, Field(ge=0, le=300)] = 5  # a 401 on a younger token
    # is the partner refusing tokens, not an expired one: no new token for it at once

    @model_validator(mode="after")
    def _fernet(self) -> TokenStoreConfig:
        if self.encryption_key is not None:
            from cryptography.fernet import Fernet

            try:
                Fernet(self.encryption_key.get_secret_value())
            except (ValueError, TypeError):
                raise ValueError("encryption_key: not a Fernet key (32 url-safe base64-encoded "
                                 "bytes; make one with Fernet.generate_key())") from None
        return self
