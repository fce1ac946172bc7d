"""A partner endpoint that checks every field of every standard payload it receives.

The payload checker (``iris_demo.payload``) is written from DESIGN 1.2 and seed 000 and
deliberately shares no code with the iris payload builder: it is the second opinion that catches
builder bugs. Every violation answers 400 and lands in ``PartnerServer.problems`` (tests assert it
stays empty).

With a ``SignatureCheck`` the partner also verifies AAM's digitally signed requests: base64 of an
HMAC (SHA-256, SHA-1 or MD5) of the exact body bytes, in a header it names. That check is
written independently of ``iris.auth.signing`` for the same reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from iris_demo.payload import PayloadError, loads_strict, validate_payload
from iris_demo.token_server import TokenServer, parse_media_type, same_secret

Responder = Callable[[web.Request, bytes], Awaitable[web.StreamResponse | None]]


@dataclass
class ReceivedBatch:
    """One accepted POST, as received."""

    time: float
    payload: dict[str, Any]
    body: bytes
    idempotency_key: str | None
    token: str | None
    signed_by: str | None = None  # the key id whose HMAC matched (with a SignatureCheck)
    signature: str | None = None  # the signature header as received (with a SignatureCheck)


SIGNATURE_ALGORITHMS = frozenset({"sha256", "sha1", "md5"})


@dataclass(frozen=True)
class SignatureCheck:
    """What the partner expects of signed requests: ``header`` holds base64(HMAC(secret, body))
    for one of ``keys`` (key id -> secret). With ``key_id_header`` the request must name its key
    there and only that key is tried; without, any configured key may match."""

    keys: dict[str, str | bytes]
    header: str = "X-Signature"
    algorithm: str = "sha256"
    key_id_header: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in SIGNATURE_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(SIGNATURE_ALGORITHMS)}")
        if not self.keys:
            raise ValueError("at least one key is needed")

    def __repr__(self) -> str:  # never show the secrets
        return (f"SignatureCheck(header={self.header!r}, algorithm={self.algorithm!r}, "
                f"key_id_header={self.key_id_header!r}, keys={sorted(self.keys)!r})")

    def expected(self, key_id: str, body: bytes) -> bytes:
        """base64(HMAC(keys[key_id], body)), the value a correct header carries."""
        secret = self.keys[key_id]
        raw = secret.encode("utf-8") if isinstance(secret, str) else secret
        return base64.b64encode(hmac.new(raw, body, getattr(hashlib, self.algorithm)).digest())

    def verify(self, headers: Any, body: bytes) -> tuple[str | None, str]:
        """(the key id that verified ``body``, "") or (None, why not)."""
        value = headers.get(self.header)
        if value is None:
            return None, f"no {self.header} header"
        if self.key_id_header is not None:
            key_id = headers.get(self.key_id_header)
            if key_id is None:
                return None, f"no {self.key_id_header} header"
            if key_id not in self.keys:
                return None, f"unknown key id {key_id!r}"
            candidates = [key_id]
        else:
            candidates = list(self.keys)
        given = value.encode("utf-8", "surrogateescape")
        for key_id in candidates:
            if hmac.compare_digest(self.expected(key_id, body), given):
                return key_id, ""
        return None, "signature does not match the body"


@dataclass(frozen=True)
class SignatureRejection:
    """One request refused for its signature (401 invalid_signature)."""

    reason: str
    signature: str | None  # the header as received, None when absent
    key_id: str | None  # the key_id_header as received, if configured and present
    idempotency_key: str | None
    body: bytes = field(repr=False)


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(doc, status=status, headers=headers)


def _bearer_of(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of a plain RFC 7617 Basic header, or None (no form-decoding: that is
    only for OAuth client credentials, RFC 6749 §2.3.1, which applies it to each side)."""
    scheme, _, b64 = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(b64.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class PartnerServer:
    """The partner's segment endpoint: authenticates, validates strictly, records batches."""

    def __init__(
        self,
        *,
        destination_id: str,
        user_dpid: str,
        client_id: str,
        tokens: TokenServer | None = None,
        basic: tuple[str, str] | None = None,
        bearer: str | None = None,
        path: str = "/segments/aam",
        on_batch: Callable[[ReceivedBatch], None] | None = None,
        signature: SignatureCheck | None = None,
    ) -> None:
        self.destination_id = destination_id
        self.user_dpid = user_dpid
        self.client_id = client_id
        self.tokens = tokens
        self._basic = basic
        self._bearer = bearer
        self.path = path
        self.on_batch = on_batch
        self.signature = signature
        self.received: list[ReceivedBatch] = []
        self.problems: list[str] = []
        self.request_count = 0
        self.auth_failures = 0
        self.expired_token_requests = 0
        self.signature_failures = 0  # requests refused with 401 invalid_signature
        self.signature_rejections: list[SignatureRejection] = []
        # Fault hook, awaited after auth; a non-None response is returned as is, unrecorded.
        self.responder: Responder | None = None

    def __repr__(self) -> str:
        return f"PartnerServer(destination_id={self.destination_id!r}, path={self.path!r})"

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", self.path, self.handle)]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(self.routes())
        return app

    # -- helpers for tests ------------------------------------------------------------------

    def segment_changes(self) -> list[tuple[str, str, str, str]]:
        """(AAM_UUID, DataPartner_UUID, Segment_ID, Status) over all batches, in order."""
        return [
            (u["AAM_UUID"], u["DataPartner_UUID"], s["Segment_ID"], s["Status"])
            for batch in self.received
            for u in batch.payload["Users"]
            for s in u["Segments"]
        ]

    def users_received(self) -> list[dict[str, Any]]:
        """Every user object of every accepted batch, in order (a user may repeat across)."""
        return [u for batch in self.received for u in batch.payload["Users"]]

    # -- the endpoint -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.request_count += 1
        authorized, token = self._authenticate(request)
        if not authorized:
            self.auth_failures += 1
            return self._challenge()
        body = await request.read()
        signed_by, signature = None, None
        if self.signature is not None:
            signed_by, why = self.signature.verify(request.headers, body)
            signature = request.headers.get(self.signature.header)
            if signed_by is None:
                return self._bad_signature(request, body, why)
        if self.responder is not None:
            custom = await self.responder(request, body)
            if custom is not None:
                return custom
        try:
            payload = self._check_request(request, body)
        except PayloadError as e:
            self.problems.append(str(e))
            status = 405 if request.method != "POST" else 400
            return _json(status, {"error": "invalid_payload", "detail": str(e)})
        batch = ReceivedBatch(
            time=time.monotonic(), payload=payload, body=body,
            idempotency_key=request.headers.get("Idempotency-Key"), token=token,
            signed_by=signed_by, signature=signature,
        )  # fmt: skip
        self.received.append(batch)
        if self.on_batch is not None:
            self.on_batch(batch)
        return _json(200, {"status": "ok"})

    def _authenticate(self, request: web.Request) -> tuple[bool, str | None]:
        """Any configured scheme may succeed; with none configured, everyone is let in."""
        header = request.headers.get("Authorization")
        if self.tokens is None and self._basic is None and self._bearer is None:
            return True, None
        token = _bearer_of(header)
        if token is not None and self.tokens is not None:
            if self.tokens.is_valid(token):
                return True, token
            if self.tokens.is_expired(token):
                self.expired_token_requests += 1
        if token is not None and self._bearer is not None and same_secret(token, self._bearer):
            return True, token
        creds = basic_credentials(header)
        if creds is not None and self._basic is not None:
            ok = same_secret(creds[0], self._basic[0]) & same_secret(creds[1], self._basic[1])
            if ok:
                return True, None
        return False, None

    def _challenge(self) -> web.Response:
        headers: list[tuple[str, str]] = []
        if self.tokens is not None or self._bearer is not None:
            headers.append(("WWW-Authenticate", 'Bearer error="invalid_token"'))
        if self._basic is not None:
            headers.append(("WWW-Authenticate", 'Basic realm="partner"'))
        doc = {"error": "invalid_token", "detail": "missing, unknown or expired credentials"}
        resp = _json(401, doc)
        for name, value in headers:
            resp.headers.add(name, value)
        return resp

    def _bad_signature(self, request: web.Request, body: bytes, why: str) -> web.Response:
        """401 invalid_signature; counted and kept apart from ``received`` and ``problems``."""
        assert self.signature is not None
        key_id_header = self.signature.key_id_header
        self.signature_failures += 1
        self.signature_rejections.append(SignatureRejection(
            reason=why, signature=request.headers.get(self.signature.header),
            key_id=request.headers.get(key_id_header) if key_id_header else None,
            idempotency_key=request.headers.get("Idempotency-Key"), body=body,
        ))  # fmt: skip
        return _json(401, {"error": "invalid_signature"})

    def _check_request(self, request: web.Request, body: bytes) -> dict[str, Any]:
        """Method, Content-Type, then the payload itself; raise PayloadError on the first fault."""
        if request.method != "POST":
            raise PayloadError(f"method: expected POST, got {request.method}")
        media, params = parse_media_type(request.headers.get("Content-Type"))
        charset = params.pop("charset", "utf-8").lower()
        if media != "application/json" or params or charset != "utf-8":
            ctype = request.headers.get("Content-Type")
            raise PayloadError(f"Content-Type: expected application/json, got {ctype!r}")
        return validate_payload(
            loads_strict(body), destination_id=self.destination_id, user_dpid=self.user_dpid,
            client_id=self.client_id,
        )  # fmt: skip
