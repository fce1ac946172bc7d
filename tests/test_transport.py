"""``iris.http.transport``: batch POSTs over kept-alive connections, against real servers: an
aiohttp partner (over HTTPS with the test CA too) and raw asyncio servers that answer exactly
the bytes a test needs (interim answers, bodies that end at close, cut-short and garbage
answers, connections closed or reset under a request)."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from iris.http import transport
from iris.http.errors import CUT_SHORT, SERVER_CLOSED
from iris.http.sender import PartnerSession
from iris.http.transport import Connections, RequestFailed
from iris_demo.servers import LocalServer
from iris_demo.tls import TLSMaterial
from tests.conftest import make_config
from tests.helpers import closed_port

BODY = b'{"Users":[]}'
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "k-1"}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server running ``handler`` per connection; yields its URL and a list that gets one
    entry per accepted connection."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/aam", accepted
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head and its body (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head, await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Answer the connection's requests with ``answers`` in turn."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if then_close:
            return
        await reader.read()  # until the client closes
    return handler


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_requests_share_one_kept_alive_connection_and_carry_the_exact_bytes() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(OK)

    async with raw_server(handler) as (url, accepted):
        connections = Connections(url + "?x=1", None, 4, "iris/test")
        answers = [await connections.post(BODY, HEADERS, 5) for _ in range(3)]
        await connections.close()
    assert [a.status for a in answers] == [200] * 3 and answers[0].body == b""  # 2xx: unread
    assert len(accepted) == 1
    port = url.split(":")[2].split("/")[0]
    assert seen[0] == (
        b"POST /aam?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nUser-Agent: iris/test\r\n"
        b"Accept: */*\r\nContent-Type: application/json\r\nIdempotency-Key: k-1\r\n"
        b"Content-Length: 12\r\n\r\n" % port.encode(), BODY)
    assert seen == [seen[0]] * 3


async def test_a_refusal_body_is_kept_decompressed_and_chunked_answers_end_right(
        tls: TLSMaterial) -> None:
    """An aiohttp partner over HTTPS: a gzip-compressed, chunked 503 with Retry-After, then a
    200 on the same connection."""
    answers = iter([503, 200])

    async def aam(request: web.Request) -> web.StreamResponse:
        await request.read()
        status = next(answers)
        response = web.StreamResponse(status=status, headers={"Retry-After": "7"})
        if status == 503:
            response.enable_compression(web.ContentCoding.gzip)
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"error": "busy", "detail": "' + b"x" * 5000 + b'"}')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/aam", aam)
    server = LocalServer()
    base = await server.start(app, ssl_context=tls.server_context())
    connections = Connections(f"{base}/aam", tls.client_context(), 2, "iris/test")
    try:
        refused = await connections.post(BODY, HEADERS, 5)
        ok = await connections.post(BODY, HEADERS, 5)
    finally:
        await connections.close()
        await server.stop()
    assert base.startswith("https://")
    assert refused.status == 503 and refused.headers["retry-after"] == "7"
    assert refused.headers["content-encoding"] == "gzip"
    assert refused.body == (b'{"error": "busy", "detail": "' + b"x" * 5000)[:4096]
    assert ok.status == 200 and ok.body == b""


async def test_an_answer_that_ends_at_close_and_an_interim_answer() -> None:
    close_delimited = b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nserver fault"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    async with raw_server(answering(close_delimited, then_close=True)) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        first = await connections.post(BODY, HEADERS, 5)
        await connections.close()
    assert (first.status, first.body) == (500, b"server fault")
    async with raw_server(answering(interim, OK)) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        answers = [await connections.post(BODY, HEADERS, 5) for _ in range(2)]
        await connections.close()
    assert [a.status for a in answers] == [200, 200] and len(accepted) == 1


async def test_a_closed_kept_alive_connection_is_stale_and_a_fresh_one_is_not() -> None:
    """The partner answers once, then closes the connection when the next request comes
    (an idle-timeout race made certain): stale. A new connection closed the same way is a
    failure of its own."""
    async with raw_server(answering(OK, then_close=True)) as (url, _):
        connections = Connections(url, None, 2, "iris/test")
        assert (await connections.post(BODY, HEADERS, 5)).status == 200
        with pytest.raises(RequestFailed) as stale:
            await connections.post(BODY, HEADERS, 5)

        async def close_at_once(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
            await read_request(reader)

        async with raw_server(close_at_once) as (fresh_url, _):
            fresh = Connections(fresh_url, None, 2, "iris/test")
            with pytest.raises(RequestFailed) as closed:
                await fresh.post(BODY, HEADERS, 5)
            await fresh.close()
        await connections.close()
    assert stale.value.stale and str(stale.value) == SERVER_CLOSED
    assert not closed.value.stale and str(closed.value) == SERVER_CLOSED


async def test_reset_cut_short_and_garbage_answers_name_their_cause() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    cut = answering(b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\nhalf", then_close=True)
    garbage = answering(b"SMTP ready\r\n\r\n", then_close=True)
    causes = []
    for handler in (reset, cut, garbage):
        async with raw_server(handler) as (url, _):
            connections = Connections(url, None, 2, "iris/test")
            with pytest.raises(RequestFailed) as failed:
                await connections.post(BODY, HEADERS, 5)
            await connections.close()
            causes.append((str(failed.value), failed.value.stale))
    assert causes[0] == ("connection reset", False)
    assert causes[1] == (CUT_SHORT, False)
    assert causes[2][0].startswith("the answer of 127.0.0.1:") and not causes[2][1]
    assert "is not valid HTTP/1.1 (" in causes[2][0]


async def test_a_2xx_is_the_outcome_once_its_headers_came() -> None:
    """As with aiohttp's client: a 2xx whose body is slow or cut short is a delivery (a retry
    would deliver the batch twice); its connection is not kept."""
    slow_body = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
    async with raw_server(slow_body) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        answers = [await connections.post(BODY, HEADERS, 5) for _ in range(2)]
        await connections.close()
    assert [a.status for a in answers] == [200, 200] and len(accepted) == 2


async def test_trailers_and_repeated_fields_do_not_override_the_answers_headers() -> None:
    """A chunked answer's trailer never overrides a header (RFC 9110 §6.5.1), and of a repeated
    field the first counts, as aiohttp's ``headers.get`` gave."""
    chunked = (b"HTTP/1.1 429 Slow\r\nRetry-After: 5\r\nWWW-Authenticate: Bearer a\r\n"
               b"WWW-Authenticate: Bearer b\r\nTransfer-Encoding: Chunked\r\n\r\n"
               b"2\r\nno\r\n0\r\nRetry-After: 3600\r\n\r\n")
    async with raw_server(answering(chunked)) as (url, _):
        connections = Connections(url, None, 2, "iris/test")
        answer = await connections.post(BODY, HEADERS, 5)
        await connections.close()
    assert (answer.status, answer.body) == (429, b"no")
    assert answer.headers["retry-after"] == "5"
    assert answer.headers["www-authenticate"] == "Bearer a"


async def test_a_408_from_an_idle_timer_on_a_kept_alive_connection_is_stale() -> None:
    """What a partner's idle timer writes before it closes a kept-alive connection (408,
    Connection: close) is read as the next request's answer when the two cross: stale."""
    timed_out = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(answering(OK, timed_out, then_close=True)) as (url, _):
        connections = Connections(url, None, 2, "iris/test")
        assert (await connections.post(BODY, HEADERS, 5)).status == 200
        with pytest.raises(RequestFailed) as stale:
            await connections.post(BODY, HEADERS, 5)
        await connections.close()
    assert stale.value.stale


async def test_idle_connections_are_closed_after_the_keep_alive_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "KEEPALIVE_SECONDS", 0.1)
    closed = asyncio.Event()

    async def until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await reader.read()  # b"" once the client closes
        closed.set()

    async with raw_server(until_closed) as (url, _):
        connections = Connections(url, None, 2, "iris/test")
        assert (await connections.post(BODY, HEADERS, 5)).status == 200
        await asyncio.wait_for(closed.wait(), 5)  # no request came: iris closed it itself
        await connections.close()


async def test_a_timed_out_request_never_lends_its_connection_to_the_next() -> None:
    """The first request gets no answer in time; its late answer must not be taken for the
    second request's: that one goes out on a new connection."""
    answered = asyncio.Event()

    async def late_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if not answered.is_set():
            answered.set()
            await asyncio.sleep(0.5)
            writer.write(b"HTTP/1.1 409 Late\r\nContent-Length: 0\r\n\r\n")
            await reader.read()
            return
        writer.write(OK)
        await reader.read()

    async with raw_server(late_then_ok) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        with pytest.raises(TimeoutError):
            await connections.post(BODY, HEADERS, 0.2)
        second = await connections.post(BODY, HEADERS, 5)
        await connections.close()
    assert second.status == 200 and len(accepted) == 2


async def test_at_most_limit_connections_and_failures_to_connect_are_named(
        tls: TLSMaterial) -> None:
    open_now, most = 0, 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await read_request(reader)
                await asyncio.sleep(0.05)
                writer.write(OK)
        finally:
            open_now -= 1

    async with raw_server(slow) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        answers = await asyncio.gather(*(connections.post(BODY, HEADERS, 5) for _ in range(6)))
        await connections.close()
    assert [a.status for a in answers] == [200] * 6
    assert most == 2 and len(accepted) == 2

    with closed_port() as port:
        refused = Connections(f"http://127.0.0.1:{port}/aam", None, 2, "iris/test")
        with pytest.raises(RequestFailed, match=f"cannot connect to 127.0.0.1:{port}: "
                                                "connection refused"):
            await refused.post(BODY, HEADERS, 5)

    server = LocalServer()  # a certificate from a CA this client does not trust
    app = web.Application()
    base = await server.start(app, ssl_context=tls.server_context())
    untrusting = Connections(f"{base}/aam", ssl.create_default_context(), 2, "iris/test")
    try:
        with pytest.raises(RequestFailed, match=f"TLS certificate of 127.0.0.1:{server.port} "
                                                "refused: .*local issuer"):
            await untrusting.post(BODY, HEADERS, 5)
    finally:
        await server.stop()


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with raw_server(answering(OK)) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        with pytest.raises(RequestFailed, match="request header 'Authorization' holds a line"):
            await connections.post(BODY, {"Authorization": "Bearer x\r\nX-Evil: 1"}, 5)
        await connections.close()
    assert accepted == []


async def test_connections_are_not_kept_past_the_dns_cache_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection opened more than ``DNS_CACHE_SECONDS`` ago is not taken again, so that a
    partner's DNS change is followed under steady traffic (0 here: every request opens one)."""
    monkeypatch.setattr(transport, "DNS_CACHE_SECONDS", 0.0)
    async with raw_server(answering(OK, OK)) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        for _ in range(3):
            assert (await connections.post(BODY, HEADERS, 5)).status == 200
        await connections.close()
    assert len(accepted) == 3


async def test_a_request_sent_again_after_a_stale_connection_takes_a_new_one() -> None:
    """``fresh``: the pool's other kept-alive connections may be as stale as the one just lost
    (a partner that closed them all at once)."""
    async with raw_server(answering(OK, OK, OK)) as (url, accepted):
        connections = Connections(url, None, 2, "iris/test")
        assert (await connections.post(BODY, HEADERS, 5)).status == 200
        assert (await connections.post(BODY, HEADERS, 5, fresh=True)).status == 200
        assert (await connections.post(BODY, HEADERS, 5)).status == 200  # kept alive again
        await connections.close()
    assert len(accepted) == 2


def test_gzip_and_deflate_refusals_are_decoded_and_odd_ones_kept_as_they_came() -> None:
    text = b'{"error": "invalid_request"}'
    assert transport._decoded(gzip.compress(text), "gzip") == text
    assert transport._decoded(zlib.compress(text), "deflate") == text
    assert transport._decoded(b"not gzip", "gzip") == b"not gzip"
    assert transport._decoded(b"x" * 5000, "br") == b"x" * 4096
    assert transport._decoded(gzip.compress(text), " GZIP") == text
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert transport._decoded(raw.compress(text) + raw.flush(), "deflate") == text


@asynccontextmanager
async def aiohttp_partner(handler: Callable[[web.Request], Awaitable[web.Response]],
                          keepalive_timeout: float = 75.0,
                          ) -> AsyncIterator[tuple[str, list[object]]]:
    """A real aiohttp partner; yields its URL and the transports of the requests it served."""
    transports: list[object] = []

    async def counted(request: web.Request) -> web.Response:
        transports.append(request.transport)
        return await handler(request)

    app = web.Application()
    app.router.add_post("/aam", counted)
    app_runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               keepalive_timeout=keepalive_timeout)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    port = app_runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/aam", transports
    finally:
        await app_runner.cleanup()


async def post_all(connections: Connections, count: int, gap: float,
                   body: bytes = BODY) -> tuple[int, int, int]:
    """``count`` POSTs ``gap`` s apart: (answered, failed as stale, failed as reset); any other
    failure raises."""
    answered = stale = reset = 0
    for _ in range(count):
        try:
            await connections.post(body, HEADERS, 5)
            answered += 1
        except RequestFailed as exc:
            if exc.stale:
                stale += 1
            elif str(exc) == "connection reset":
                reset += 1
            else:
                raise
        await asyncio.sleep(gap)
    return answered, stale, reset


async def test_a_partner_keep_alive_timeout_never_fails_a_request_for_good() -> None:
    """aiohttp#2682, #9138, #13283: a client reusing a connection just as the server's
    keep-alive timer closes it gets a connection error. Here such a loss is ``stale`` (the
    connection ended: sent again for free by the sender) or, where the server's close met the
    request unread, a reset (retried like any connection error, as with aiohttp's client):
    nothing else, and a connection the server closed while idle is not taken again at all."""
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async with aiohttp_partner(ok, keepalive_timeout=0.05) as (url, transports):
        connections = Connections(url, None, 2, "iris/test")
        near = await post_all(connections, 40, 0.05)  # at the timer: races happen
        await asyncio.sleep(0.3)
        idle = await post_all(connections, 5, 0.3)  # past it: the close is seen first
        await connections.close()
    assert sum(near) == 40 and near[0] >= 1
    assert idle == (5, 0, 0) and len(set(map(id, transports[-5:]))) == 5


async def test_a_partner_that_answers_without_reading_the_body() -> None:
    """aiohttp#3597, http4s#4348: a server that answers before reading a large body, then
    drops the connection: the next request on it fails as stale or reset at worst (never
    anything else), and never reads the unread body's place as its answer."""
    async def hasty(request: web.Request) -> web.Response:
        return web.Response(status=401, text="no")

    big = b"[" + b"0," * 200_000 + b"0]"
    async with aiohttp_partner(hasty) as (url, transports):
        connections = Connections(url, None, 2, "iris/test")
        first = await connections.post(big, HEADERS, 5)
        answered, stale, reset = await post_all(connections, 10, 0.0, big)
        await connections.close()
    assert first.status == 401 and first.body == b"no"
    assert answered + stale + reset == 10 and len(transports) == 1 + answered


@pytest.mark.parametrize("test", [
    test_requests_share_one_kept_alive_connection_and_carry_the_exact_bytes,
    test_an_answer_that_ends_at_close_and_an_interim_answer,
    test_a_closed_kept_alive_connection_is_stale_and_a_fresh_one_is_not,
    test_reset_cut_short_and_garbage_answers_name_their_cause,
    test_a_timed_out_request_never_lends_its_connection_to_the_next,
    test_a_header_with_a_line_break_is_refused_before_anything_is_sent,
    test_a_2xx_is_the_outcome_once_its_headers_came,
    test_trailers_and_repeated_fields_do_not_override_the_answers_headers,
    test_a_408_from_an_idle_timer_on_a_kept_alive_connection_is_stale,
    test_a_request_sent_again_after_a_stale_connection_takes_a_new_one,
    test_a_partner_keep_alive_timeout_never_fails_a_request_for_good,
    test_a_partner_that_answers_without_reading_the_body,
], ids=lambda test: test.__name__.removeprefix("test_")[:40])
def test_on_uvloop_too(test: Callable[[], Awaitable[None]]) -> None:
    """The worker runs on uvloop where it is installed, and uvloop's transports differ from
    asyncio's (no ``happy_eyeballs_delay``; not ``asyncio.Transport`` subclasses)."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test())


def test_tls_on_uvloop_too(tls: TLSMaterial) -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test_a_refusal_body_is_kept_decompressed_and_chunked_answers_end_right(tls))
    uvloop.run(test_at_most_limit_connections_and_failures_to_connect_are_named(tls))


async def test_a_partner_on_pythons_http_server() -> None:
    """A real peer of another make: the standard library's ``http.server`` (what many partner
    mocks and small services run), HTTP/1.0 by default: it closes after each answer and sends
    a refusal's body without a length. Every answer is read whole, no connection is reused."""
    received: list[bytes] = []
    ports: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            ports.append(self.client_address[1])
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            if len(received) % 2:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            else:
                self.send_response(503)
                self.send_header("Retry-After", "2")
                self.end_headers()
                self.wfile.write(b'{"error": "busy"}')  # no length: ends at the close

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        connections = Connections(f"http://127.0.0.1:{server.server_port}/aam", None, 2,
                                  "iris/test")
        answers = [await connections.post(BODY, HEADERS, 5) for _ in range(4)]
        await connections.close()
    finally:
        server.shutdown()
        server.server_close()
    assert [(a.status, a.body) for a in answers] == [
        (200, b""), (503, b'{"error": "busy"}'), (200, b""), (503, b'{"error": "busy"}')]
    assert answers[1].headers["retry-after"] == "2" and received == [BODY] * 4
    assert len(set(ports)) == 4  # a connection each


async def test_a_partner_url_with_credentials_keeps_aiohttps_basic_authentication() -> None:
    """``https://user:password@host/`` was sent as Basic credentials by aiohttp's client; such a
    destination keeps that path (and so does one behind a proxy), the others take this one."""
    def session(url: str, **dest: object) -> PartnerSession:
        config = make_config("redis://127.0.0.1:1", "events", [{
            "id": "1", "url": url, "user_dpid": "1", "client_id": "2", **dest}])
        return PartnerSession(config.destinations[0])

    sessions = [session("https://partner.example/aam"),
                session("https://u:p@partner.example/aam"),
                session("https://partner.example/aam", proxy="http://proxy.example:3128")]
    try:
        assert [s.batches is not None for s in sessions] == [True, False, False]
    finally:
        for s in sessions:
            await s.close()
