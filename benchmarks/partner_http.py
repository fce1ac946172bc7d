"""The bench partner's HTTP/1.1 server: kept-alive connections parsed by httptools (the parser
aiohttp and uvicorn use), one answer per request, in order.

On a 2-core machine the partner shares the cores with the pipeline it measures: served by
aiohttp's web framework it used ~140 us of CPU per request, a third of a core at the ~2,500
requests/s of 10-user batches, taken from the worker under test. Here a request costs what
parsing it and the handler cost. Requests may be pipelined, their bodies sized or chunked; a
request that does not parse, or asks for an upgrade, gets a 400 and the connection is closed;
a bug in a handler is logged and answered with a 500. ``Expect: 100-continue`` is not
answered (the benchmark's clients do not send it).
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

import httptools

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
SERVER = f"Python/{platform.python_version()} bench-partner"


@dataclass
class Request:
    """One request as the handler sees it (the path without its query)."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""


@dataclass
class Reply:
    """A handler's answer; ``Content-Length``, ``Date`` and ``Server`` are added."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Reply]


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.text = second, formatdate(second, usegmt=True)
        return cls.text


def _encoded(reply: Reply, keep_alive: bool) -> bytes:
    """The answer, with the headers aiohttp's web server sent for it before (``Date``,
    ``Server``, a ``Content-Type``): the clients under test parse what a partner sends."""
    head = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Content-Length: {len(reply.body)}", f"Date: {_Date.now()}", f"Server: {SERVER}"]
    if "Content-Type" not in reply.headers:
        head.append("Content-Type: application/octet-stream")
    head += [f"{name}: {value}" for name, value in reply.headers.items()]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body


class PartnerProtocol(asyncio.Protocol):
    """One client connection; ``handle`` answers each request."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request: Request | None = None
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # no upgrades here
            self._answer(Reply(400, b"bad request"), keep_alive=False)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._request = Request("", "")  # the method is known once the headers are
        self._body.clear()

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.path += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        self._request.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._request is not None
        self._request.method = self._parser.get_method().decode()

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY_BYTES:
            self._answer(Reply(413, b"too large"), keep_alive=False)

    def on_message_complete(self) -> None:
        request, self._request = self._request, None
        if request is None or self._transport is None or self._transport.is_closing():
            return
        request.path = request.path.partition("?")[0]
        request.body = bytes(self._body)
        keep_alive = self._parser.should_keep_alive()
        try:
            reply = self._handle(request)
        except Exception:  # a bug of the bench: said, and answered as one
            log.exception("the partner failed on %s %s", request.method, request.path)
            reply, keep_alive = Reply(500, b"partner error"), False
        self._answer(reply, keep_alive=keep_alive)

    def _answer(self, reply: Reply, *, keep_alive: bool) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(_encoded(reply, keep_alive))
        if not keep_alive:
            self._transport.close()
