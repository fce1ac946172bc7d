"""Send one batch to one partner and report an ``Outcome``; never raises for partner trouble.

One HTTP session per destination (its own TLS trust, connection pool and DNS cache), replaced
every ``DNS_CACHE_SECONDS`` so that a partner's DNS change is followed under steady traffic;
explicit timeouts; the destination's request rate, shared by every replica; proxies from the
environment
(``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``; see ``egress``) or the destination's own
``proxy``. Redirects are
never followed. A request that fails only because the partner had closed the kept-alive
connection it went out on is sent again at once on a new one, without spending an attempt.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from types import SimpleNamespace
from typing import Any, Protocol
from urllib.parse import urljoin

import aiohttp
from prometheus_client import Counter, Gauge, Histogram

from iris import __version__
from iris.auth.base import Auth
from iris.auth.signing import Signer
from iris.config.auth import OAuth2Base
from iris.config.model import Destination
from iris.core.retry import Action, Outcome, classify, failure, paused
from iris.errors import TokenError
from iris.http.egress import proxy_for
from iris.http.errors import describe, is_stale_connection

USER_AGENT = f"iris/{__version__}"
DNS_CACHE_SECONDS = 30
STALE = "connection_reused"  # the iris_requests_total code of a request lost to a closed
# keep-alive connection: counted apart, never an error of the partner's


async def _note_reuse(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
    """aiohttp's trace hook: this request goes out on a kept-alive connection."""
    if isinstance(ctx.trace_request_ctx, dict):
        ctx.trace_request_ctx["reused"] = True


def make_session(dest: Destination) -> aiohttp.ClientSession:
    """An HTTP session for ``dest``: trusts ``ca_file`` in addition to the system CAs, and marks
    requests that go out on a reused connection."""
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
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_reuseconn.append(_note_reuse)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT},
        raise_for_status=False, trace_configs=[tracing],
    )


class RequestMetrics(Protocol):
    """The request metrics a sender keeps (``iris_requests_total``, ``..._duration_seconds``,
    ``iris_requests_in_flight``), labelled by destination."""

    requests: Counter
    request_duration: Histogram
    inflight: Gauge


class RateLimit(Protocol):
    """A destination's ``limits.requests_per_second``: ``acquire`` waits for a request slot."""

    async def acquire(self) -> None: ...


class PartnerSession:
    """The destination's current session; a new one every ``DNS_CACHE_SECONDS``, so that no
    connection outlives the DNS answer it was opened for. The old one is closed once the
    requests that use it are over (at most ``timeout`` later)."""

    def __init__(self, dest: Destination, clock: Any = time.monotonic) -> None:
        self._dest = dest
        self._clock = clock
        self._session = make_session(dest)
        self._born = clock()
        self._retiring: dict[aiohttp.ClientSession, asyncio.Task[None]] = {}

    @property
    def current(self) -> aiohttp.ClientSession:
        if self._clock() - self._born >= DNS_CACHE_SECONDS:
            old, self._session, self._born = self._session, make_session(self._dest), self._clock()
            self._retiring[old] = asyncio.get_running_loop().create_task(self._retire(old))
        return self._session

    async def _retire(self, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(self._dest.timeout + 1)  # the requests under way are over
        del self._retiring[session]
        await session.close()

    async def close(self) -> None:
        for task in self._retiring.values():
            task.cancel()
        await asyncio.gather(*self._retiring.values(), return_exceptions=True)
        for session in [*self._retiring, self._session]:
            await session.close()
        self._retiring.clear()


def _uses_https(dest: Destination) -> bool:
    urls = [dest.url]
    if isinstance(dest.auth, OAuth2Base):
        urls += [url for _, url in dest.auth.urls()]
        template = dest.auth.token_request
        urls.append(template.url or "" if template is not None else "")
    return any(url.startswith("https:") for url in urls)


def _absolute(url: str, headers: Any) -> str | None:
    """A redirect's Location, resolved against the URL that answered it."""
    location = headers.get("Location")
    return urljoin(url, location) if location else None


class Sender:
    """POSTs exact bytes with the current credential (and their signature, where the partner
    asks for one); a 401 tells the auth scheme, which decides between a new token and a pause."""

    def __init__(
        self, dest: Destination, auth: Auth, session: PartnerSession, metrics: RequestMetrics,
        rate: RateLimit,
    ) -> None:
        self.dest = dest
        self.auth = auth
        self._signer = Signer(dest.signing) if dest.signing is not None else None
        self._session = session
        self._proxy = proxy_for(dest.url, dest.proxy)
        self._rate = rate
        self._requests = metrics.requests
        self._by_code: dict[str, Any] = {}
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
        await self._rate.acquire()
        try:  # only once the rate limit admits us: a queued request must not age its token
            credential = await self.auth.credential()
        except TokenError as exc:  # token trouble of any kind: wait, spend nothing
            return paused(str(exc), exc.retry_in)
        if credential is not None:
            headers["Authorization"] = credential.header
        outcome = await self._post(body, headers)
        self._count(outcome.code)
        if outcome.action is Action.REFRESH and not await self.auth.refused(
                credential, blames_token=outcome.blames_token):
            return paused(f"{outcome.error}; waiting for a new token", None)
        return outcome

    def _count(self, code: str) -> None:
        """``iris_requests_total{destination, code}`` + 1 (each code's child looked up once)."""
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._requests.labels(self.dest.id, code)
        child.inc()

    async def _post(self, body: bytes, headers: dict[str, str]) -> Outcome:
        """One request; a kept-alive connection the partner had closed costs nothing but a
        count (``connection_reused``): the request goes out again on a new one."""
        for _ in range(self.dest.limits.max_in_flight + 2):  # each stale one is dropped
            outcome, stale = await self._post_once(body, headers)
            if not stale:
                return outcome
            self._count(STALE)
        return outcome

    async def _post_once(self, body: bytes, headers: dict[str, str]) -> tuple[Outcome, bool]:
        started = time.perf_counter()
        self._inflight.inc()
        trace: dict[str, bool] = {}
        try:
            async with self._session.current.post(
                self.dest.url, data=body, headers=headers, allow_redirects=False,
                proxy=self._proxy, trace_request_ctx=trace,
            ) as response:
                status = response.status
                reply = b"" if 200 <= status < 300 else await response.content.read(4096)
                return classify(status, retry_after=response.headers.get("Retry-After"),
                                body=reply, now=time.time(),
                                location=_absolute(self.dest.url, response.headers),
                                authenticate=response.headers.get("WWW-Authenticate")), False
        except TimeoutError:
            return failure("timeout", f"no answer within {self.dest.timeout:g} s"), False
        except aiohttp.ClientError as exc:
            stale = trace.get("reused", False) and is_stale_connection(exc)
            return failure("connection_error", describe(exc)), stale
        except asyncio.CancelledError:
            raise
        finally:
            self._inflight.dec()
            self._duration.observe(time.perf_counter() - started)
