"""Auth, signing and token-store settings: every grant loads, and each mistake is one line that
names its key path and never shows the secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iris.auth.forms import form_url_encode
from iris.auth.jwt_assertion import AssertionSigner
from iris.auth.templating import REQUEST_TEMPLATES, is_empty
from iris.config.auth import JwtBearerAuth, OAuth2Base
from iris.config.model import parse_config
from iris.config.redaction import fingerprint, redacted
from tests.oauth_server import make_ec_key, make_rsa_key
from tests.test_config import cc_auth, config, dest, error_lines


def auth_of(raw_auth: dict[str, Any], **top: Any) -> OAuth2Base:
    auth = parse_config(config(dest(auth=raw_auth), **top), env={}).destinations[0].auth
    assert isinstance(auth, OAuth2Base)
    return auth


def test_every_grant_loads(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text(make_rsa_key()[0])
    assert auth_of(cc_auth(type="oauth2_password", username="u", password="p")).method == (
        "client_secret_basic")
    assert auth_of(cc_auth(type="oauth2_refresh_token", refresh_token="r")).type == (
        "oauth2_refresh_token")
    code = auth_of(cc_auth(type="oauth2_authorization_code",
                           authorization_url="https://partner.example/authorize"))
    assert code.pkce and code.redirect_uri == "http://127.0.0.1:8976/callback"  # type: ignore
    jwt = auth_of({"type": "jwt_bearer", "token_url": "https://partner.example/token",
                   "private_key_file": str(key), "issuer": "org", "audience": "aud"})
    assert isinstance(jwt, JwtBearerAuth) and jwt.method == "none" and jwt.algorithm == "RS256"
    assert auth_of(cc_auth(scope=["read", "write"])).scope_text == "read write"
    assert auth_of(cc_auth(client_auth="client_secret_post")).method == "client_secret_post"


@pytest.mark.parametrize(("auth", "line"), [
    ({**cc_auth(), "client_secret": None, "client_auth": "client_secret_post"},
     "auth.client_secret: required by client_auth client_secret_post"),
    ({k: v for k, v in cc_auth().items() if k != "client_secret"},
     "auth.client_secret: required by oauth2_client_credentials (or set client_auth: none for "
     "a partner that wants no secret)"),
    ({"type": "oauth2_client_credentials", "token_url": "https://p.example/t",
      "client_auth": "none"}, "auth.client_id: required"),
    (cc_auth(type="oauth2_password", username="u"), "auth.password: required"),
    (cc_auth(type="oauth2_authorization_code", authorization_url="https://p.example/a",
             redirect_uri="https://p.example/cb"),
     "auth.redirect_uri: must be an http:// loopback URL (RFC 8252 §7.3): iris auth login "
     "listens there"),
    (cc_auth(token_request={"body": "{{ formUrlEncode('a', 'b' }}"}),
     "auth.token_request.body: template syntax error: unexpected '}', expected ')'"),
    (cc_auth(token_request={"response_fields": {"token": "x"}}),
     "auth.token_request.response_fields.token.[key]: input should be 'accessToken', "
     "'expiresIn', 'refreshToken' or 'tokenType'"),
    (cc_auth(type="jwt_bearer", private_key="not a key", issuer="i", audience="a"),
     "auth.private_key: not an unencrypted PEM private key"),
])
def test_auth_mistakes_name_their_key(auth: dict[str, Any], line: str) -> None:
    assert line in [x.removeprefix("destinations[0].") for x in error_lines(config(dest(
        auth=auth)))]


def test_jwt_key_must_match_the_algorithm_and_ims_needs_client_credentials() -> None:
    ec_key = make_ec_key()[0]
    base = {"type": "jwt_bearer", "token_url": "https://p.example/t", "issuer": "i",
            "audience": "a"}
    assert error_lines(config(dest(auth={**base, "private_key": ec_key}))) == [
        "destinations[0].auth.private_key: RS256 needs an RSA key"]
    assert auth_of({**base, "private_key": ec_key, "algorithm": "ES256"}).type == "jwt_bearer"
    assert error_lines(config(dest(auth={**base, "private_key": make_rsa_key()[0],
                                         "form": "adobe_ims"}))) == [
        "destinations[0].auth.client_id: form adobe_ims sends client_id and client_secret"]
    ims = {**base, "private_key": make_rsa_key()[0], "form": "adobe_ims", "client_id": "c",
           "client_secret": "s"}
    assert auth_of(ims).type == "jwt_bearer"
    assert error_lines(config(dest(auth={**ims, "scope": "openid"})))[0].startswith(
        "destinations[0].auth.scope: form adobe_ims sends only client_id, client_secret")


def test_http_token_endpoints_are_refused_like_partner_urls() -> None:
    lines = error_lines(config(dest(auth=cc_auth(
        type="oauth2_refresh_token", refresh_token="r",
        refresh_token_url="http://partner.example/refresh"))))
    assert lines == ["destinations[0].auth.refresh_token_url: http:// is refused: use https://, "
                     "or set allow_http: true for local testing"]
    lines = error_lines(config(dest(auth=cc_auth(token_request={
        "url": "http://{{ authData.tenant }}.partner.example/token"}))))
    assert lines[0].startswith("destinations[0].auth.token_request.url: http:// is refused")


def test_signing_and_token_store_settings(tmp_path: Path) -> None:
    secret = tmp_path / "sign"
    secret.write_text("hmac-secret\n")
    raw = config(dest(signing={"keys": [
        {"id": "new", "secret_file": str(secret), "active_from": "2030-01-01T00:00:00Z"},
        {"id": "old", "secret": "old-secret"}]}),
        token_store={"encryption_key": Fernet.generate_key().decode()})
    loaded = parse_config(raw, env={})
    signing = loaded.destinations[0].signing
    assert signing is not None and signing.keys[0].secret.get_secret_value() == "hmac-secret"
    shown = redacted(loaded)
    key = raw["token_store"]["encryption_key"]
    assert shown["token_store"]["encryption_key"] == fingerprint(key) and key not in str(shown)
    assert shown["destinations"][0]["signing"]["keys"][0]["secret"] == fingerprint("hmac-secret")
    assert shown["destinations"][0]["signing"]["keys"][1]["secret"] == fingerprint("old-secret")
    assert error_lines(config(dest(signing={"keys": []}))) == [
        "destinations[0].signing.keys: must not be empty"]
    assert error_lines(config(dest(signing={"keys": [{"id": "k", "secret": "s",
                                                      "active_from": "2030-01-01T00:00:00"}]})))
    lines = error_lines(config(dest(), token_store={"encryption_key": "short-and-wrong"}))
    assert lines == ["token_store.encryption_key: not a Fernet key (32 url-safe base64-encoded "
                     "bytes; make one with Fernet.generate_key())"]
    assert "short-and-wrong" not in " ".join(lines)
    assert error_lines(config(dest(), token_store={"refusal_pause": 10})) == [
        "token_store.refusal_pause: must be >= 60.0"]


def test_template_helpers() -> None:
    assert form_url_encode("grant_type", "client_credentials", "client_secret", "a b+c/é") == (
        "grant_type=client_credentials&client_secret=a%20b%2Bc%2F%C3%A9")
    with pytest.raises(Exception, match="name/value pairs"):
        form_url_encode("a")
    assert [is_empty(v) for v in (None, "", [], {}, "x", 0)] == [True] * 4 + [False] * 2
    render = REQUEST_TEMPLATES.from_string
    assert render("{{ authData.x is empty }}").render(authData={"x": ""}) == "true"
    assert render("{{ formUrlEncode('a', authData.b) | raw }}").render(
        authData={"b": "<&>"}) == "a=%3C%26%3E"
    with pytest.raises(Exception, match=r"unsafe|not safely|access"):  # the sandbox holds
        render("{{ ''.__class__.__mro__ }}").render()


@pytest.mark.parametrize(("signing", "line"), [
    ({"header": "X-Sig", "key_id_header": "x-sig"},
     "signing.key_id_header: must differ from header"),
    ({"header": "Authorization"},
     "signing.header: iris sets Authorization itself; choose another header"),
    ({"key_id_header": "Content-Type"},
     "signing.key_id_header: iris sets Content-Type itself; choose another header"),
    ({"header": "X Sig"}, "signing.header: string should match pattern "
                          "'^[!#$%&'*+.^_`|~0-9A-Za-z-]+$'"),
    ({"header": "Idempotency-Key"},
     "signing: its headers must differ from idempotency_header (Idempotency-Key)"),
    ({"keys": [{"id": "k", "secret": "a"}, {"id": "k", "secret": "b"}]},
     "signing.keys: each key needs its own id"),
])
def test_signing_headers_cannot_collide(signing: dict[str, Any], line: str) -> None:
    raw = {"keys": [{"id": "k", "secret": "s"}], **signing}
    assert error_lines(config(dest(signing=raw))) == [f"destinations[0].{line}"]


# --------------------------------------------------------------------------- JWT bearer

JWT_BASE = {"type": "jwt_bearer", "token_url": "https://p.example/t", "issuer": "i",
            "audience": "a"}


def pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def jwt_lines(**auth: Any) -> list[str]:
    return error_lines(config(dest(auth={**JWT_BASE, **auth})))


@pytest.mark.parametrize(("algorithm", "curve", "line"), [
    ("ES256", ec.SECP384R1(), "ES256 needs an EC key on curve P-256, not secp384r1"),
    ("ES384", ec.SECP256R1(), "ES384 needs an EC key on curve P-384, not secp256r1"),
    ("ES512", ec.SECP384R1(), "ES512 needs an EC key on curve P-521, not secp384r1"),
    ("ES256", ec.SECP256K1(), "ES256 needs an EC key on curve P-256, not secp256k1"),
])
def test_an_ec_key_on_the_wrong_curve_is_refused_at_load(algorithm: str, curve: Any,
                                                          line: str) -> None:
    key = pem(ec.generate_private_key(curve))
    assert jwt_lines(private_key=key, algorithm=algorithm) == [
        f"destinations[0].auth.private_key: {line}"]


@pytest.mark.parametrize(("algorithm", "curve"), [
    ("ES256", ec.SECP256R1()), ("ES384", ec.SECP384R1()), ("ES512", ec.SECP521R1())])
def test_an_ec_key_on_its_curve_loads(algorithm: str, curve: Any) -> None:
    auth = auth_of({**JWT_BASE, "private_key": pem(ec.generate_private_key(curve)),
                    "algorithm": algorithm})
    assert isinstance(auth, JwtBearerAuth) and auth.algorithm == algorithm


def test_rsa_keys_fit_their_algorithms() -> None:
    short = pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    assert jwt_lines(private_key=short, algorithm="PS256") == [
        "destinations[0].auth.private_key: PS256 needs an RSA key of at least 2048 bits, "
        "not 1024"]
    assert jwt_lines(private_key=make_rsa_key()[0], algorithm="ES256") == [
        "destinations[0].auth.private_key: ES256 needs an EC key"]


def test_a_key_file_that_is_not_a_private_key(tmp_path: Path) -> None:
    public = tmp_path / "key.pub"
    public.write_text(make_rsa_key()[1])
    assert jwt_lines(private_key_file=str(public)) == [
        "destinations[0].auth.private_key: not an unencrypted PEM private key"]


@pytest.mark.parametrize(("claim", "source"), [
    ("iss", "issuer"), ("sub", "subject"), ("aud", "audience"), ("iat", "leeway"),
    ("nbf", "leeway"), ("exp", "lifetime"), ("jti", "a fresh value per assertion")])
def test_claims_iris_sets_cannot_be_configured(claim: str, source: str) -> None:
    assert jwt_lines(private_key=make_rsa_key()[0], claims={"tenant": "x", claim: 1}) == [
        f"destinations[0].auth.claims.{claim}: iris sets {claim} itself (from {source}); "
        "remove it from claims"]


def test_claims_must_be_json() -> None:
    import datetime

    assert jwt_lines(private_key=make_rsa_key()[0],
                     claims={"since": datetime.date(2026, 1, 1)}) == [
        "destinations[0].auth.claims.since: not a JSON value (date): quote it"]


def test_leeway_default_and_bounds() -> None:
    key = make_rsa_key()[0]
    auth = auth_of({**JWT_BASE, "private_key": key})
    assert isinstance(auth, JwtBearerAuth) and (auth.leeway, auth.lifetime) == (5, 300)
    assert jwt_lines(private_key=key, leeway=60, lifetime=60) == [
        "destinations[0].auth.leeway: must be less than lifetime (60 s), or the assertion "
        "would be expired when it is made"]
    assert jwt_lines(private_key=key, leeway=301) == [
        "destinations[0].auth.leeway: must be <= 300.0"]
    assert jwt_lines(private_key=key, leeway=-1) == ["destinations[0].auth.leeway: must be >= 0.0"]


@pytest.mark.parametrize(("leeway", "iat"), [(None, 1_799_999_995), (0, 1_800_000_000),
                                              (30, 1_799_999_970), (2.5, 1_799_999_998)])
def test_the_assertion_is_back_dated_by_the_leeway(leeway: float | None, iat: int) -> None:
    private, public = make_rsa_key()
    settings = {**JWT_BASE, "private_key": private, "subject": "s", "lifetime": 120,
                "claims": {"tenant": "acme"}, "key_id": 7}
    if leeway is not None:
        settings["leeway"] = leeway
    auth = auth_of(settings)
    assert isinstance(auth, JwtBearerAuth)
    token = AssertionSigner(auth).assertion(now=1_800_000_000.9)
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="a",
                        options={"verify_exp": False, "verify_iat": False})
    assert jwt.get_unverified_header(token)["kid"] == "7"
    assert {k: v for k, v in claims.items() if k != "jti"} == {
        "tenant": "acme", "iss": "i", "sub": "s", "aud": "a", "iat": iat, "exp": iat + 120}
