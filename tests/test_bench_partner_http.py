"""The bench partner's HTTP/1.1 server over real sockets: requests pipelined in one write are
each answered, in order (the bug sanic#516 and cpp-httplib#1271 had), a request that arrives a
byte at a time is read whole, ``Connection: close`` closes, and garbage gets a 400 and the
connection is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from benchmarks.partner_http import PartnerProtocol, Reply, Request


def _echo(request: Request) -> Reply:
    if request.path == "/bug":
        raise RuntimeError("a bug in a handler")
    return Reply(201, f"{request.method} {request.path} {len(request.body)}".encode(),
                 {"X-Auth": request.headers.get("authorization", "-")})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: PartnerProtocol(_echo), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path}?q=1 HTTP/1.1", "Host: x", "Authorization: Bearer t",
            f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _answers(reader: asyncio.StreamReader, count: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        status = (await reader.readline()).decode().strip()
        length = 0
        while (line := (await reader.readline()).decode().strip()):
            name, _, value = line.partition(": ")
            if name == "Content-Length":
                length = int(value)
        out.append((status, await reader.readexactly(length)))
    return out


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/a", b"x" * 5) + _post("/b", b"") + _post("/c", b"y" * 70_000))
    answers = await asyncio.wait_for(_answers(reader, 3), 10)
    assert answers == [("HTTP/1.1 201 Created", b"POST /a 5"),
                       ("HTTP/1.1 201 Created", b"POST /b 0"),
                       ("HTTP/1.1 201 Created", b"POST /c 70000")]
    writer.close()


async def test_a_request_sent_a_byte_at_a_time_is_read_whole(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for byte in _post("/segments/901", b'{"Users":[]}'):
        writer.write(bytes([byte]))
        await writer.drain()
    assert await asyncio.wait_for(_answers(reader, 1), 10) == [
        ("HTTP/1.1 201 Created", b"POST /segments/901 12")]
    writer.close()


async def test_connection_close_is_honoured(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/a", b"", "Connection: close"))
    assert await asyncio.wait_for(_answers(reader, 1), 10) == [
        ("HTTP/1.1 201 Created", b"POST /a 0")]
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()


async def test_garbage_gets_a_400_and_the_connection_closes(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00\x01 not http\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in data
    writer.close()


async def test_an_upgrade_request_is_answered_and_the_connection_closed(port: int) -> None:
    """httptools raises HttpParserUpgrade after the request (not an HttpParserError): the
    request is answered, no upgrade follows, the connection closes (not a protocol crash)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert await asyncio.wait_for(_answers(reader, 1), 10) == [
        ("HTTP/1.1 201 Created", b"GET /u 0")]
    rest = await asyncio.wait_for(reader.read(), 10)  # then closed by the server
    assert rest.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close" in rest
    writer.close()


async def test_a_chunked_body_is_read_whole(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert await asyncio.wait_for(_answers(reader, 1), 10) == [
        ("HTTP/1.1 201 Created", b"POST /c 11")]
    writer.close()


async def test_a_handler_bug_is_a_500_and_logged(port: int,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/bug", b""))
    assert await asyncio.wait_for(_answers(reader, 1), 10) == [
        ("HTTP/1.1 500 Internal Server Error", b"partner error")]
    assert "the partner failed on POST /bug" in caplog.text
    writer.close()
