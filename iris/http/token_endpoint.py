"""One exchange with a token endpoint: send, read, and retry what retrying can cure.

Transient failures (5xx, timeouts, connection errors, unreadable answers) are retried a bounded
number of times with jittered backoff; refusals (RFC 6749 §5.2 errors such as invalid_client)
and redirects (never followed: a token request carries the client's secret) are raised at once
as permanent. Every HTTP request is counted as ``success`` or ``error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urljoin

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from iris.auth.exchange import Grant, TokenAnswer, TokenHttpRequest
from iris.core.logs import without_secrets
from iris.errors import TokenError
from iris.http.egress import proxy_for
from iris.http.errors import describe

TOKEN_ATTEMPTS = 3
MAX_BACKOFF = 5.0
MAX_ANSWER_BYTES = 1 << 20


def longest_exchange(timeout: float) -> float:
    """Seconds one ``exchange`` may take at most: the lease a cross-process lock needs."""
    return TOKEN_ATTEMPTS * timeout + (TOKEN_ATTEMPTS - 1) * MAX_BACKOFF


class Sessions(Protocol):
    """Where the current HTTP session comes from (a destination replaces it now and then)."""

    @property
    def current(self) -> aiohttp.ClientSession: ...


SessionSource = aiohttp.ClientSession | Sessions  # one session (a command), or a worker's


class TokenEndpoint:
    def __init__(self, session: SessionSource, timeout: float, *, proxy: str | None = None,
                 on_request: Callable[[str], None] = lambda outcome: None) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._proxy = proxy
        self._on_request = on_request  # told "success" or "error" for every HTTP request

    async def exchange(self, build: Callable[[], TokenHttpRequest],
                       parse: Callable[[TokenAnswer], Grant]) -> Grant:
        """``build`` a request (again for each attempt: a JWT must be fresh), send, ``parse``."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(TOKEN_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.5, max=MAX_BACKOFF),
            retry=retry_if_exception(lambda e: isinstance(e, TokenError) and not e.permanent),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    grant = parse(await self.send(build()))
                except TokenError:
                    self._on_request("error")
                    raise
                self._on_request("success")
                return grant
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, request: TokenHttpRequest) -> TokenAnswer:
        try:
            session = self._session
            if not isinstance(session, aiohttp.ClientSession):
                session = session.current
            async with session.request(
                request.method, request.url, data=request.body or None,
                headers=dict(request.headers), timeout=self._timeout, allow_redirects=False,
                proxy=proxy_for(request.url, self._proxy),
            ) as response:
                if 300 <= response.status < 400:
                    raise _redirected(request.url, response)
                body = await _read_limited(response)
                headers: dict[str, list[str]] = {}
                for name, value in response.headers.items():
                    headers.setdefault(name.lower(), []).append(value)
                return TokenAnswer(response.status, headers, body, response.content_type)
        except TimeoutError:
            raise TokenError("token endpoint timed out") from None
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientError as exc:
            raise TokenError(f"token request failed: {describe(exc)}") from None


def _redirected(url: str, response: aiohttp.ClientResponse) -> TokenError:
    location = response.headers.get("Location")
    target = without_secrets(urljoin(url, location)) if location else "nowhere (no Location)"
    return TokenError(f"token endpoint redirected (HTTP {response.status}) to {target}: "
                      "redirects are not followed, since a token request carries the client's "
                      "credentials; set token_url to the endpoint itself", permanent=True,
                      status=response.status, error="redirected")


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise TokenError(f"token endpoint answered more than {MAX_ANSWER_BYTES} bytes",
                             status=response.status)
    return bytes(body)
