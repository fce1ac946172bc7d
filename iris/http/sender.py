"""Send one batch to one partner and report an ``Outcome``; never raises for partner trouble.

Per destination, its own TLS trust and connections: batches go out over ``transport``'s
kept-alive connections, or through aiohttp's session where a proxy applies or the URL carries
credentials (as do token requests); the session is replaced every ``DNS_CACHE_SECONDS`` so
that a partner's DNS change is followed under steady traffic (``transport``'s connections are
not reused past it either). Explicit timeouts; the destination's request rate, shared by every
replica; proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``; see
``egress``) or the destination's own ``proxy``. Redirects are never followed. A request that
fails only because the partner had closed the kept-alive connection it went out on is sent
again at once on a new one, without spending an attempt.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

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
from iris.http.transport import (
    DNS_CACHE_SECONDS,
    Answer,
    Connections,
    RequestFailed,
    host_port,
)

USER_AGENT = f"iris/{__version__}"
STALE = "connection_reused"  # the iris_requests_total code of a request lost to a closed
# keep-alive connection: counted apart, never an error of the partner's


_reused: ContextVar[bool] = ContextVar("iris_connection_reused", default=False)


class _ReuseNotingConnector(aiohttp.TCPConnector):
    """aiohttp's connector, noting in the requesting task's context whether the connection it
    hands out served an earlier request (kept alive). An aiohttp trace config would tell as
    much, at ~30 µs of CPU per request (measured): it builds and sends every trace signal."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._used: weakref.WeakSet[Any] = weakref.WeakSet()  # protocols that carried one

    async def connect(self, *args: Any, **kwargs: Any) -> aiohttp.connector.Connection:
        connection = await super().connect(*args, **kwargs)
        protocol = connection.protocol
        _reused.set(protocol in self._used)  # the request's task: awaited, not a new task
        self._used.add(protocol)
        return connection


def tls_context(dest: Destination) -> ssl.SSLContext | None:
    """The TLS trust of ``dest``'s requests: the system CAs and ``ca_file``; None where no URL of
    the destination is ``https``. Destinations that trust the same CAs share one context:
    loading the system CA store costs 35-55 ms of CPU, a worker with a hundred HTTPS
    destinations spent seconds of its start-up on it. Raises ``OSError`` and ``ssl.SSLError``
    for a ``ca_file`` that cannot be read or holds no certificate."""
    if not _uses_https(dest):
        return None
    if dest.ca_file is None:
        return _trusting(None, None)
    stat = dest.ca_file.stat()  # a CA file written anew is loaded anew
    return _trusting(str(dest.ca_file), (stat.st_mtime_ns, stat.st_size, stat.st_ino))


@functools.lru_cache(maxsize=64)
def _trusting(ca_file: str | None, version: tuple[int, int, int] | None) -> ssl.SSLContext:
    """A client context trusting the system CAs and ``ca_file`` (``version`` is only its key)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def make_session(dest: Destination, context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """An HTTP session for ``dest``, with ``tls_context``'s trust; it notes whether each request
    goes out on a reused connection."""
    connector = _ReuseNotingConnector(
        ssl=context or True, ttl_dns_cache=DNS_CACHE_SECONDS,
        limit=dest.limits.max_in_flight + 2,
    )
    timeout = aiohttp.ClientTimeout(
        total=dest.timeout, sock_connect=min(10.0, dest.timeout), sock_read=dest.timeout
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
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
    """The destination's connections: ``batches`` (``transport``) for its batches where no proxy
    applies and the URL carries no credentials, and aiohttp's ``current`` session, a new one
    every ``DNS_CACHE_SECONDS``, so that no connection outlives the DNS answer it was opened
    for. The old one is closed once the
    requests that use it are over (at most ``timeout`` later)."""

    def __init__(self, dest: Destination, clock: Any = time.monotonic) -> None:
        self._dest = dest
        self._clock = clock
        self._tls = tls_context(dest)
        self._session = make_session(dest, self._tls)
        self._born = clock()
        self._retiring: dict[aiohttp.ClientSession, asyncio.Task[None]] = {}
        self.batches: Connections | None = None
        if proxy_for(dest.url, dest.proxy) is None and "@" not in urlsplit(dest.url).netloc:
            # a URL with user:password@ keeps aiohttp, which sends them as Basic credentials
            self.batches = Connections(dest.url, self._tls, dest.limits.max_in_flight + 2,
                                       USER_AGENT)

    @property
    def current(self) -> aiohttp.ClientSession:
        if self._clock() - self._born >= DNS_CACHE_SECONDS:
            old, self._session = self._session, make_session(self._dest, self._tls)
            self._born = self._clock()
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
        if self.batches is not None:
            await self.batches.close()


def _uses_https(dest: Destination) -> bool:
    urls = [dest.url]
    if isinstance(dest.auth, OAuth2Base):
        urls += [url for _, url in dest.auth.urls()]
        template = dest.auth.token_request
        urls.append(template.url or "" if template is not None else "")
    return any(url.startswith("https:") for url in urls)


def _classified(url: str, status: int, header: Callable[[str], str | None],
                body: bytes) -> Outcome:
    """``classify`` of an answer; ``header(name)``: a header's value. A redirect's Location is
    resolved against the URL that answered it."""
    location = header("Location")
    return classify(status, retry_after=header("Retry-After"), body=body, now=time.time(),
                    location=urljoin(url, location) if location else None,
                    authenticate=header("WWW-Authenticate"))


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
        self._where = "{}:{}".format(*host_port(dest.url))  # for the timeout's error
        self._rate = rate
        self._requests = metrics.requests
        self._by_code: dict[str, Any] = {}
        self._duration = metrics.request_duration.labels(dest.id)
        self._in_flight = 0  # read when Prometheus scrapes: nothing to count per request
        metrics.inflight.labels(dest.id).set_function(lambda: self._in_flight)

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
        if outcome.action is Action.DELIVERED:
            self.auth.accepted(credential)
        elif outcome.action is Action.REFRESH and not await self.auth.refused(
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
        stale = False
        for _ in range(self.dest.limits.max_in_flight + 2):  # each stale one is dropped
            outcome, stale = await self._post_once(body, headers, again=stale)
            if not stale:
                return outcome
            self._count(STALE)
        return outcome

    async def _post_once(self, body: bytes, headers: dict[str, str], *,
                         again: bool) -> tuple[Outcome, bool]:
        """``again``: the request was lost to a stale connection, and goes out on a new one."""
        started = time.perf_counter()
        self._in_flight += 1
        try:
            if (connections := self._session.batches) is not None:
                return await self._post_direct(connections, body, headers, again)
            return await self._post_aiohttp(body, headers)
        except TimeoutError:
            return failure("timeout", f"no answer from {self._where} within "
                                      f"{self.dest.timeout:g} s"), False
        finally:
            self._in_flight -= 1
            self._duration.observe(time.perf_counter() - started)

    async def _post_direct(self, connections: Connections, body: bytes,
                           headers: dict[str, str], fresh: bool) -> tuple[Outcome, bool]:
        try:
            answer: Answer = await connections.post(body, headers, self.dest.timeout,
                                                    fresh=fresh)
        except RequestFailed as exc:
            return failure("connection_error", str(exc)), exc.stale
        lower = answer.headers
        return _classified(self.dest.url, answer.status, lambda name: lower.get(name.lower()),
                           answer.body), False

    async def _post_aiohttp(self, body: bytes, headers: dict[str, str]) -> tuple[Outcome, bool]:
        """Through aiohttp's client: a destination behind a proxy, or whose URL carries
        credentials (sent as Basic authentication)."""
        _reused.set(False)  # until the connector hands out a kept-alive connection
        try:
            async with self._session.current.post(
                self.dest.url, data=body, headers=headers, allow_redirects=False,
                proxy=self._proxy,
            ) as response:
                status = response.status
                reply = b"" if 200 <= status < 300 else await response.content.read(4096)
                return _classified(self.dest.url, status, response.headers.get, reply), False
        except aiohttp.ClientError as exc:
            stale = _reused.get() and is_stale_connection(exc)
            return failure("connection_error", describe(exc)), stale
