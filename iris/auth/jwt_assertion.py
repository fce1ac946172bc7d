"""The signed JWT that a ``jwt_bearer`` destination exchanges for an access token.

RFC 7523 §3 claims (``iss``, ``sub``, ``aud``, ``exp``, plus ``iat`` and a unique ``jti``) and
any extra claims the partner asks for, such as Adobe IMS's metascope claims (seed 002). The
config refuses extra claims that collide with these, so nothing configured is overwritten here.

``iat`` is back-dated by ``leeway``: a token endpoint whose clock runs behind ours would
otherwise see an assertion issued in its future and refuse it (PyJWT and Authlib check ``iat``
with no leeway). ``exp`` is ``iat + lifetime``, so a server that caps ``exp - iat`` still sees
exactly the configured lifetime.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from iris.config.auth import JwtBearerAuth
from iris.core.logs import register_secret

SIGNING_KEYS = (RSAPrivateKey, EllipticCurvePrivateKey, Ed25519PrivateKey, Ed448PrivateKey)

class AssertionSigner:
    def __init__(self, auth: JwtBearerAuth) -> None:
        self._auth = auth
        pem = auth.private_key.get_secret_value()
        register_secret(pem)
        key = load_pem_private_key(pem.encode(), None)  # parsed once, checked at load
        if not isinstance(key, SIGNING_KEYS):
            raise ValueError(f"a {type(key).__name__} cannot sign a JWT assertion")
        self._key = key

    def assertion(self, now: float | None = None) -> str:
        auth = self._auth
        issued = int((time.time() if now is None else now) - auth.leeway)
        claims: dict[str, Any] = {
            **auth.claims,  # none of them is one of ours: refused at load
            "iss": auth.issuer,
            "aud": auth.audience,
            "iat": issued,
            "exp": issued + int(auth.lifetime),
            "jti": uuid.uuid4().hex,
        }
        if auth.subject is not None:
            claims["sub"] = auth.subject
        headers = {"kid": auth.key_id} if auth.key_id else None
        token = jwt.encode(claims, self._key, algorithm=auth.algorithm, headers=headers)
        register_secret(token, rotating=True)
        return token
