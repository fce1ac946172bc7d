"""iris.auth.signing.Signer against known answers: published HMAC test vectors (RFC 4231 for
SHA-256, RFC 2202 for SHA-1 and MD5) and values computed with ``openssl dgst -hmac``; key
selection during a rotation with an injected clock; the headers it adds."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from iris.auth.signing import Signer
from iris.config.auth import SigningConfig
from iris.core.logs import redact


def b64_of_hex(hex_digest: str) -> str:
    """A published hex MAC as the base64 text iris must send."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def config(keys: list[dict[str, Any]] | None = None, **fields: Any) -> SigningConfig:
    return SigningConfig.model_validate({"keys": keys or [{"id": "k1", "secret": "Jefe"}],
                                         **fields})


JEFE = b"what do ya want for nothing?"
# RFC 4231 test case 2 (SHA-256) and RFC 2202 test case 2 (SHA-1, MD5): key "Jefe".
RFC_CASE_2 = {
    "sha256": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    "sha1": "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
    "md5": "750c783e6ab0b503eaa86e310a5db738",
}
# RFC 4231 / RFC 2202 test case 1: key 0x0b repeated (20 bytes; 16 for MD5), data "Hi There".
RFC_CASE_1 = {
    "sha256": ("\x0b" * 20, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    "sha1": ("\x0b" * 20, "b617318655057264e28bc0b6fb378c8ef146be00"),
    "md5": ("\x0b" * 16, "9294727a3638bb1c13f48ef8158bfc9d"),
}
# printf '%s' '{"Users":[{"AAM_UUID":"é"}]}' | openssl dgst -<alg> -hmac 'clé-secrète' -binary
#   | base64  — UTF-8 in both the secret and the body.
UTF8_BODY = '{"Users":[{"AAM_UUID":"é"}]}'.encode()
UTF8_SECRET = "clé-secrète"
UTF8_VECTORS = {
    "sha256": "w/H4bPe+tlo345IEUeDmx88mcwG6UFpfdFZnFIybGRY=",
    "sha1": "a6K6AtBqaqFdHTgKGX3FQSMBLr8=",
    "md5": "jhj26hCki8ziEZt4O4uRFg==",
}


def test_rfc4231_case_2_is_the_default():
    signer = Signer(config())  # sha256 in X-Signature unless told otherwise
    assert signer.headers(JEFE) == {
        "X-Signature": "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
    }
    assert b64_of_hex(RFC_CASE_2["sha256"]) == "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_published_vectors(algorithm):
    signer = Signer(config(algorithm=algorithm))
    assert signer.headers(JEFE) == {"X-Signature": b64_of_hex(RFC_CASE_2[algorithm])}
    secret, hex_digest = RFC_CASE_1[algorithm]
    signer = Signer(config([{"id": "k", "secret": secret}], algorithm=algorithm))
    assert signer.headers(b"Hi There") == {"X-Signature": b64_of_hex(hex_digest)}


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_utf8_secret_and_body_match_openssl(algorithm):
    signer = Signer(config([{"id": "k", "secret": UTF8_SECRET}], algorithm=algorithm))
    assert signer.headers(UTF8_BODY) == {"X-Signature": UTF8_VECTORS[algorithm]}


def test_signature_covers_every_byte():
    signer = Signer(config())
    body = b'{"User_count":"1"}'
    reference = signer.headers(body)["X-Signature"]
    assert signer.headers(body)["X-Signature"] == reference  # deterministic
    for changed in (b'{"User_count":"2"}', body + b"\n", b" " + body, body[:-1]):
        assert signer.headers(changed)["X-Signature"] != reference
    assert signer.headers(b"") == {  # openssl dgst -sha256 -hmac Jefe of nothing
        "X-Signature": b64_of_hex(
            "923598ca6d64af2a5dba79dcd021a8a0fe5c5f557519adaaf0ad532d4506dd30"
        )
    }


def test_custom_header_without_key_id_header():
    signer = Signer(config(header="X-Sig"))
    assert signer.headers(JEFE) == {"X-Sig": b64_of_hex(RFC_CASE_2["sha256"])}


def test_key_id_header_names_the_key_used():
    signer = Signer(config([{"id": "2024-q3", "secret": "Jefe"}], header="X-Sig",
                           key_id_header="X-Sig-Key"))
    assert signer.headers(JEFE) == {
        "X-Sig": b64_of_hex(RFC_CASE_2["sha256"]),
        "X-Sig-Key": "2024-q3",
    }


T = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rotation(new_from: datetime | None, old_from: datetime | None = None) -> SigningConfig:
    new: dict[str, Any] = {"id": "new", "secret": "Jefe"}
    old: dict[str, Any] = {"id": "old", "secret": "\x0b" * 20}
    if new_from is not None:
        new["active_from"] = new_from.isoformat()
    if old_from is not None:
        old["active_from"] = old_from.isoformat()
    return config([new, old], key_id_header="X-Key-Id")


def test_rotation_follows_the_clock():
    clock = Clock(T.timestamp() - 1)
    signer = Signer(rotation(T), clock=clock)
    old_mac = b64_of_hex(RFC_CASE_1["sha256"][1])
    new_mac = b64_of_hex(RFC_CASE_2["sha256"])
    assert signer.current().id == "old"
    assert signer.headers(b"Hi There") == {"X-Signature": old_mac, "X-Key-Id": "old"}
    clock.now = T.timestamp()  # active_from is inclusive
    assert signer.current().id == "new"
    assert signer.headers(JEFE) == {"X-Signature": new_mac, "X-Key-Id": "new"}
    clock.now = T.timestamp() + 86400
    assert signer.current().id == "new"
    clock.now = T.timestamp() - 0.001  # chosen per call, not once: a clock going back goes back
    assert signer.headers(b"Hi There") == {"X-Signature": old_mac, "X-Key-Id": "old"}


def test_rotation_with_time_zones():
    new_from = datetime(2026, 12, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))  # == T
    signer = Signer(rotation(new_from), clock=Clock(T.timestamp() - 1))
    assert signer.current().id == "old"
    signer = Signer(rotation(new_from), clock=Clock(T.timestamp()))
    assert signer.current().id == "new"


def test_newest_key_without_active_from_signs_at_once():
    signer = Signer(rotation(None), clock=Clock(0))
    assert signer.current().id == "new"


def test_no_key_active_yet_falls_back_to_the_oldest():
    later = T + timedelta(days=30)
    signer = Signer(rotation(later, old_from=T), clock=Clock(T.timestamp() - 60))
    assert signer.current().id == "old"
    assert signer.headers(b"Hi There")["X-Key-Id"] == "old"
    signer = Signer(rotation(later, old_from=T), clock=Clock(T.timestamp() + 60))
    assert signer.current().id == "old"
    signer = Signer(rotation(later, old_from=T), clock=Clock(later.timestamp()))
    assert signer.current().id == "new"


def test_single_key_with_future_active_from_still_signs():
    cfg = config([{"id": "only", "secret": "Jefe", "active_from": T.isoformat()}])
    signer = Signer(cfg, clock=Clock(0))
    assert signer.current().id == "only"
    assert signer.headers(JEFE) == {"X-Signature": b64_of_hex(RFC_CASE_2["sha256"])}


def test_secrets_are_registered_for_redaction():
    secret = "sig-secret-4f1c9a"
    Signer(config([{"id": "k", "secret": secret}]))
    assert secret not in redact(f"oops {secret} in a log line")


def test_secret_file(tmp_path: Path):
    path = tmp_path / "signing.key"
    path.write_text("Jefe\n", encoding="utf-8")  # a trailing newline is not part of it
    signer = Signer(config([{"id": "k", "secret_file": str(path)}]))
    assert signer.headers(JEFE) == {"X-Signature": b64_of_hex(RFC_CASE_2["sha256"])}


@pytest.mark.parametrize("bad", [
    {"keys": []},
    {"keys": [{"id": "a", "secret": "x"}] * 3},
    {"keys": [{"id": "a", "secret": "x", "active_from": "2026-12-01T00:00:00"}]},  # naive
    {"keys": [{"id": "a", "secret": "x"}], "algorithm": "sha512"},
    {"keys": [{"id": "", "secret": "x"}]},
])
def test_config_refuses(bad):
    with pytest.raises(ValidationError):
        SigningConfig.model_validate(bad)
