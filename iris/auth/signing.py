"""Request signing as AAM's real-time outbound transfers do it: an HMAC of the exact body bytes
(SHA-256 by default; SHA-1 and MD5 for partners that ask for them), base64, in a header the
partner names. During a key rotation two keys may be configured, newest first: iris signs with
the newest key already active and, when ``key_id_header`` is set, says which key it used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

from iris.config.auth import SigningConfig, SigningKey
from iris.core.logs import register_secret


class Signer:
    def __init__(self, config: SigningConfig, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._digest = getattr(hashlib, config.algorithm)
        self._keys = [(key, key.secret.get_secret_value().encode()) for key in config.keys]
        for key in config.keys:
            register_secret(key.secret.get_secret_value())

    def current(self) -> SigningKey:
        return self._current()[0]

    def headers(self, body: bytes) -> dict[str, str]:
        key, secret = self._current()
        mac = hmac.new(secret, body, self._digest).digest()
        headers = {self._config.header: base64.b64encode(mac).decode()}
        if self._config.key_id_header:
            headers[self._config.key_id_header] = key.id
        return headers

    def _current(self) -> tuple[SigningKey, bytes]:
        """The first key (newest) whose ``active_from`` has come; else the oldest."""
        now = self._clock()
        for key, secret in self._keys:
            if key.active_from is None or key.active_from.timestamp() <= now:
                return key, secret
        return self._keys[-1]
