"""The OAuth 2 client-credentials grant exactly as seed 000 and RFC 6749 §4.4 describe it."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from iris.auth.tokens import Grant
from iris.config import ClientCredentialsAuth
from iris.errors import TokenError
from iris.logs import redact, register_secret

log = logging.getLogger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"
# RFC 6749 §5.2 errors that retrying cannot cure.
PERMANENT_ERRORS = frozenset(
    {"invalid_client", "unauthorized_client", "invalid_grant", "invalid_scope",
     "unsupported_grant_type", "invalid_request"}
)
TOKEN_ATTEMPTS = 3


def client_basic_header(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic.

    A space is written as %20 rather than '+': RFC 6749 Appendix B decoders read both as a
    space, and so do servers that percent-decode only (Authlib), which read '+' literally.
    """
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def parse_token_response(status: int, body: bytes, default_expires_in: float) -> Grant:
    """Turn the endpoint's answer into a ``Grant`` or a ``TokenError`` that names the problem."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if status >= 400 or status < 200:
        error = data.get("error") if isinstance(data, dict) else None
        detail = f" ({redact(str(error))[:60]})" if error else ""
        raise TokenError(
            f"token endpoint answered {status}{detail}",
            permanent=400 <= status < 500 and (error in PERMANENT_ERRORS or status in (401, 403)),
            status=status,
        )
    if not isinstance(data, dict):
        raise TokenError(f"token endpoint answered {status} without a JSON object", status=status)
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError("token response has no access_token", status=status)
    register_secret(token)
    expires_in = data.get("expires_in")
    try:
        ttl = float(expires_in) if expires_in not in (None, "") else default_expires_in
    except (TypeError, ValueError):
        raise TokenError("token response has a non-numeric expires_in", status=status) from None
    if ttl <= 0:
        ttl = default_expires_in
    return Grant(token, ttl, str(data.get("token_type") or "Bearer"))


class ClientCredentials:
    """Fetches tokens for one destination; transient failures are retried a bounded number of
    times with jittered backoff, permanent refusals at once raise."""

    def __init__(
        self, config: ClientCredentialsAuth, session: aiohttp.ClientSession, timeout: float,
        on_request: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._config = config
        self._on_request = on_request  # told "success" or "error" for every HTTP request
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        secret = config.client_secret.get_secret_value()
        register_secret(secret)
        self._authorization = client_basic_header(config.client_id, secret)
        register_secret(self._authorization)
        form = {"grant_type": "client_credentials"}
        if config.scope:
            form["scope"] = config.scope
        self._body = urlencode(form)

    async def fetch(self) -> Grant:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(TOKEN_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception(lambda e: isinstance(e, TokenError) and not e.permanent),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    grant = await self._request()
                except TokenError:
                    self._on_request("error")
                    raise
                self._on_request("success")
                return grant
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(self) -> Grant:
        headers = {
            "Authorization": self._authorization,
            "Content-Type": FORM_CONTENT_TYPE,
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
        }
        try:
            async with self._session.post(
                self._config.token_url, data=self._body.encode(), headers=headers,
                timeout=self._timeout,
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:
            raise TokenError("token endpoint timed out") from None
        except (aiohttp.ClientError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise TokenError(f"token endpoint unreachable: {type(exc).__name__}") from None
        return parse_token_response(status, body, self._config.default_expires_in)
