"""Send one batch to one partner and report an ``Outcome``; never raises for partner trouble.

One aiohttp session per destination (its own TLS trust, connection pool and DNS cache of at most
30 s), explicit timeouts, and the destination's request rate limit.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import aiohttp
from asyncio_throttle import Throttler

from iris import __version__
from iris.auth import Auth
from iris.auth.signing import Signer
from iris.auth_config import OAuth2Base
from iris.config import Destination
from iris.errors import TokenError
from iris.metrics import Metrics
from iris.retry import Action, Outcome, classify, failure, paused

USER_AGENT = f"iris/{__version__}"
DNS_CACHE_SECONDS = 30


def make_session(dest: Destination) -> aiohttp.ClientSession:
    """The destination's HTTP session: trusts ``ca_file`` in addition to the system CAs."""
    context: ssl.SSLContext | bool = True
    if _uses_https(dest):  # loading the system CA store costs ~35 ms: only where it is used
        context = ssl.create_default_context()
        if dest.ca_file is not None:
            context.load_verify_locations(cafile=str(dest.ca_file))
    connector = aiohttp.TCPConnector(
        ssl=context, ttl_dns_cache=DNS_CACHE_SECONDS, limit=dest.limits.max_in_flight + 2,
    )
    timeout = aiohttp.ClientTimeout(
        total=dest.timeout, sock_connect=min(10.0, dest.timeout), sock_read=dest.timeout
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
    )


def _uses_https(dest: Destination) -> bool:
    urls = [dest.url]
    if isinstance(dest.auth, OAuth2Base):
        urls += [url for _, url in dest.auth.urls()]
        template = dest.auth.token_request
        urls.append(template.url or "" if template is not None else "")
    return any(url.startswith("https:") for url in urls)


def make_throttler(requests_per_second: float) -> Throttler:
    rate = max(1, round(requests_per_second))
    return Throttler(rate_limit=rate, period=rate / requests_per_second)


class Sender:
    """POSTs exact bytes with the current credential (and their signature, where the partner
    asks for one); a 401 drops that credential."""

    def __init__(
        self, dest: Destination, auth: Auth, session: aiohttp.ClientSession, metrics: Metrics
    ) -> None:
        self.dest = dest
        self.auth = auth
        self._signer = Signer(dest.signing) if dest.signing is not None else None
        self._session = session
        self._throttler = make_throttler(dest.limits.requests_per_second)
        self._requests = metrics.requests
        self._duration = metrics.request_duration.labels(dest.id)
        self._inflight = metrics.inflight.labels(dest.id)

    async def send(self, body: bytes, idempotency_key: str) -> Outcome:
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "gzip",
            self.dest.idempotency_header: idempotency_key,
        }
        if self._signer is not None:
            headers.update(self._signer.headers(body))
        async with self._throttler:
            try:  # only once the rate limit admits us: a queued request must not age its token
                credential = await self.auth.credential()
            except TokenError as exc:
                if exc.permanent:  # refused: the destination pauses; no request, no attempt
                    return paused(str(exc), exc.retry_in)
                return failure("token_error", str(exc))
            if credential is not None:
                headers["Authorization"] = credential.header
            outcome = await self._post(body, headers)
        if outcome.action is Action.REFRESH:
            self.auth.refused(credential)
        self._requests.labels(self.dest.id, outcome.code).inc()
        return outcome

    async def _post(self, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.perf_counter()
        self._inflight.inc()
        try:
            async with self._session.post(self.dest.url, data=body, headers=headers) as response:
                status = response.status
                reply = b"" if 200 <= status < 300 else await response.content.read(4096)
                retry_after = response.headers.get("Retry-After")
            return classify(status, retry_after=retry_after, body=reply, now=time.time())
        except TimeoutError:
            return failure("timeout", f"no answer within {self.dest.timeout:g} s")
        except aiohttp.ClientError as exc:
            return failure("connection_error", f"{type(exc).__name__}")
        except asyncio.CancelledError:
            raise
        finally:
            self._inflight.dec()
            self._duration.observe(time.perf_counter() - started)
