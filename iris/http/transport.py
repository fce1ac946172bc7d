"""POST a batch over a kept-alive HTTP/1.1 connection: asyncio's transports (TLS included) carry
it, httptools (llhttp, the parser of Node.js) reads the answer (RFC 9112).

Why not aiohttp's ``ClientSession``, which iris uses for everything else (token requests,
proxies): it spends ~190 µs of CPU per POST, this ~60 µs (measured, ``docs/performance.md``),
and at 10-user batches the POST is the largest part of iris's work. The sender uses this where
no proxy applies and the URL carries no credentials.

Per destination, a pool of at most ``limit`` connections. A connection carries one request at
a time; it goes back to the pool only after a whole answer that lets it stay open, and is not
taken again once idle for ``KEEPALIVE_SECONDS`` (partners close idle connections; losing that
race is the stale-connection case, ``RequestFailed.stale``) or ``DNS_CACHE_SECONDS`` after it
opened, so that a partner's DNS change is followed under steady traffic (the host name is
resolved for each new connection). A request that times out or is cancelled closes its
connection: an answer that comes late can never be read as another request's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import httptools
from yarl import URL

from iris.http.errors import (
    CUT_SHORT,
    SERVER_CLOSED,
    cannot_connect,
    certificate_refused,
    dns_failed,
    handshake_failed,
    socket_cause,
)

KEEPALIVE_SECONDS = 15.0  # as aiohttp's connector
DNS_CACHE_SECONDS = 30.0
CONNECT_SECONDS = 10.0  # at most; less when the destination's timeout is shorter
ANSWER_MAX_BYTES = 4096  # of a refusal's body, kept for its error text (seed 004's bodies)
_RAW_MAX_BYTES = 65536  # of a compressed refusal's body
_NO_BODY = (204, 304)


def host_port(url: str) -> tuple[str, int]:
    """The host and port a URL's requests go to (its scheme's port when it names none)."""
    parsed = URL(url)
    return parsed.raw_host or "", parsed.port or (443 if parsed.scheme == "https" else 80)


class RequestFailed(Exception):
    """The request got no whole answer. ``str()`` says why in an operator's words; ``stale``:
    it went out on a kept-alive connection the partner had already closed (nothing of an answer
    came, or only the 408 of the partner's idle timer), so sending it again on a new connection
    costs no attempt."""

    def __init__(self, description: str, *, stale: bool = False) -> None:
        super().__init__(description)
        self.stale = stale


@dataclass(frozen=True, slots=True)
class Answer:
    """A partner's answer: its status, its headers (names in lower case; the last of repeated
    ones) and, for a status outside 2xx, up to ``ANSWER_MAX_BYTES`` of its body, decompressed."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection and the answer it waits for (httptools calls the ``on_*`` methods)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str) -> None:
        self._loop = loop
        self._where = where  # host:port, for the errors
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Answer] | None = None
        self._reused = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._keep_body = False
        self._until_close = False  # the body ends when the partner closes (no length given)
        self._started = False  # a byte of the answer came
        self._in_headers = False  # header fields now are the answer's (not a chunked trailer)
        self._early = False  # a 2xx given as soon as its headers came: its body still comes
        self._keep_alive = False  # the last answer lets the connection carry another request
        self.lost = False
        self.opened = loop.time()
        self.idle_since = self.opened

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # bytes no request asked for: never trust this connection
            self.close()
            return
        self._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RequestFailed(f"the answer of {self._where} is not valid HTTP/1.1 "
                                     f"({exc})"))
            self.close()
            return
        if 200 <= self._status < 300 and not self._answer.done():
            # a 2xx is the outcome once its headers came (as with aiohttp's client): a slow or
            # cut-short body must not turn a delivered batch into a retry; the connection then
            # ends with this answer
            self._early = True
            self._complete()

    def eof_received(self) -> bool:
        return False  # close: a half-closed connection is of no further use

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._answer is None or self._answer.done():
            return
        if exc is None and self._until_close:
            self._complete()
        elif isinstance(exc, OSError):
            self._fail(RequestFailed(socket_cause(exc)))
        elif self._started:
            self._fail(RequestFailed(CUT_SHORT))
        else:
            self._fail(RequestFailed(SERVER_CLOSED, stale=self._reused))

    # httptools

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():  # a second answer to one request
            self.close()
        self._headers = {}
        self._body.clear()
        self._in_headers = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_headers:  # a chunked answer's trailer fields never count (RFC 9110 §6.5.1)
            # the first of a repeated field, as aiohttp's ``headers.get`` gave
            self._headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._in_headers = False
        status = self._status = self._parser.get_status_code()
        self._keep_body = not 200 <= status < 300
        framing = self._headers.get("transfer-encoding", "").lower()
        self._until_close = (status >= 200 and status not in _NO_BODY
                             and "content-length" not in self._headers
                             and "chunked" not in framing)

    def on_body(self, body: bytes) -> None:
        if self._keep_body and len(self._body) < _RAW_MAX_BYTES:
            self._body += body[:_RAW_MAX_BYTES - len(self._body)]

    def on_message_complete(self) -> None:
        if self._status < 200:  # 100 Continue and other interim answers: the answer follows
            return
        self._until_close = False
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it after this
        if self._reused and self._status == 408 and not self._keep_alive:
            # what a partner's idle timer writes before it closes a kept-alive connection,
            # read as this request's answer: the stale case (Go's net/http does the same)
            self._fail(RequestFailed(SERVER_CLOSED, stale=True))
            return
        self._complete()

    # the request

    async def exchange(self, request: bytes, *, reused: bool, deadline: float) -> Answer:
        """Send ``request``; its answer by ``deadline`` (loop time). Raises ``RequestFailed`` and
        ``TimeoutError``. (A timer of its own: ``asyncio.timeout`` cost ~1.5 % of the worker's
        CPU at 10-user batches.)"""
        assert self.transport is not None
        if self.transport.is_closing():
            raise RequestFailed(SERVER_CLOSED, stale=reused)
        self._reused, self._started, self._status, self._keep_alive = reused, False, 0, False
        self._early = self._until_close = False
        answer: asyncio.Future[Answer] = self._loop.create_future()
        self._answer = answer
        timer = self._loop.call_at(deadline, self._expire, answer)
        try:
            self.transport.write(request)
            return await answer
        finally:
            timer.cancel()
            self._answer = None
            self.idle_since = self._loop.time()

    @staticmethod
    def _expire(answer: asyncio.Future[Answer]) -> None:
        if not answer.done():
            answer.set_exception(TimeoutError())

    def reusable(self, now: float) -> bool:
        """Whether the connection may carry another request now."""
        return (not self.lost and self.transport is not None and not self.transport.is_closing()
                and self._keep_alive and not self._early
                and not self.transport.get_write_buffer_size()  # answered before all was sent
                and now - self.idle_since < KEEPALIVE_SECONDS
                and now - self.opened < DNS_CACHE_SECONDS)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _complete(self) -> None:
        assert self._answer is not None
        if not self._answer.done():
            body = _decoded(bytes(self._body), self._headers.get("content-encoding", ""))
            self._answer.set_result(Answer(self._status, self._headers, body))

    def _fail(self, exc: RequestFailed) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)


def _decoded(body: bytes, encoding: str) -> bytes:
    """A refusal's body, gzip or deflate undone (we ask for gzip); as it came if it does not
    decompress."""
    encoding = encoding.strip().lower()
    if not body or encoding not in ("gzip", "x-gzip", "deflate"):
        return body[:ANSWER_MAX_BYTES]
    # gzip; deflate with its zlib wrapper (RFC 9110 §8.4.1.2), or raw as some servers send it
    for wbits in ((16 + zlib.MAX_WBITS,) if encoding != "deflate"
                  else (zlib.MAX_WBITS, -zlib.MAX_WBITS)):
        try:
            return zlib.decompressobj(wbits).decompress(body, ANSWER_MAX_BYTES)
        except zlib.error:
            continue
    return body[:ANSWER_MAX_BYTES]


class Connections:
    """The kept-alive connections to one partner URL (``http`` or ``https``, no proxy)."""

    def __init__(self, url: str, context: ssl.SSLContext | None, limit: int,
                 user_agent: str) -> None:
        parsed = URL(url)
        self._host, self._port = host_port(url)
        self._tls = context if parsed.scheme == "https" else None
        self._server_name = self._host.rstrip(".") if self._tls is not None else None
        self._head = (f"POST {parsed.raw_path_qs} HTTP/1.1\r\n"
                      f"Host: {parsed.host_port_subcomponent}\r\n"
                      f"User-Agent: {user_agent}\r\nAccept: */*\r\n").encode()
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None  # closes connections left idle

    async def post(self, body: bytes, headers: Mapping[str, str], timeout: float, *,
                   fresh: bool = False) -> Answer:
        """POST ``body`` with ``headers``; the answer within ``timeout`` seconds (waiting for a
        free connection and opening one included); ``fresh``: on a new connection (a request
        sent again after a stale one). Raises ``RequestFailed`` (a header that holds a line
        break included) and ``TimeoutError``."""
        request = self._request(body, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._slots.locked():  # all connections busy: wait for one, within the deadline
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()  # at once
        try:
            connect_by = min(deadline, loop.time() + CONNECT_SECONDS)
            connection, reused = await self._connection(connect_by, fresh)
            try:
                answer = await connection.exchange(request, reused=reused, deadline=deadline)
            except BaseException:
                self._forget(connection)  # an answer may still come: never for another request
                raise
            if connection.reusable(loop.time()):
                self._idle.append(connection)
                self._sweep_later(loop)
            else:
                self._forget(connection)
            return answer
        finally:
            self._slots.release()

    def _sweep_later(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweep is None:
            self._sweep = loop.call_later(KEEPALIVE_SECONDS, self._close_idle, loop)

    def _close_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the idle connections that may not be taken again (as aiohttp's connector
        does): a pool that traffic left holds no sockets for long."""
        self._sweep = None
        now = loop.time()
        for connection in [c for c in self._idle if not c.reusable(now)]:
            self._idle.remove(connection)
            self._forget(connection)
        if self._idle:
            self._sweep_later(loop)

    async def close(self) -> None:
        """Close every connection."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in self._open:
            connection.close()
        self._idle.clear()
        self._open.clear()
        await asyncio.sleep(0)  # the transports' close callbacks run

    def _request(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        for name, value in headers.items():  # a line break would smuggle in a header
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise RequestFailed(f"request header {name[:40]!r} holds a line break")
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        try:
            head = lines.encode()
        except UnicodeEncodeError:
            raise RequestFailed("a request header is not valid UTF-8") from None
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (self._head, head, len(body),
                                                      body)

    async def _connection(self, connect_by: float, fresh: bool) -> tuple[_Connection, bool]:
        """A kept-alive connection (True) or, with ``fresh`` or none left, a new one (False),
        opened by ``connect_by`` (loop time)."""
        now = asyncio.get_running_loop().time()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.reusable(now):
                return connection, True
            self._forget(connection)
        async with asyncio.timeout_at(connect_by):
            connection = await self._connect()
        self._open.add(connection)
        return connection, False

    def _forget(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if self._tls is not None:
            extra = {"ssl": self._tls, "server_hostname": self._server_name}
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(loop, f"{self._host}:{self._port}"), self._host, self._port,
                **extra)
        except ssl.SSLCertVerificationError as exc:
            raise RequestFailed(certificate_refused(self._host, self._port, exc)) from None
        except ssl.SSLError as exc:
            raise RequestFailed(handshake_failed(self._host, self._port, exc)) from None
        except socket.gaierror:
            raise RequestFailed(dns_failed(self._host)) from None
        except OSError as exc:
            raise RequestFailed(cannot_connect(self._host, self._port, exc)) from None
        return connection
