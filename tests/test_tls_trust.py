"""Destinations that trust the same CAs share one TLS context (loading the system CA store costs
tens of milliseconds of CPU each time); each keeps exactly the trust it names, checked by real
handshakes with an HTTPS server."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from iris.auth.exchange import TokenHttpRequest
from iris.config.model import Destination
from iris.errors import TokenError
from iris.http.sender import make_session, tls_context
from iris.http.token_endpoint import TokenEndpoint
from iris_demo.servers import LocalServer
from iris_demo.tls import TLSMaterial, make_tls


def destination(dest_id: str, url: str, ca_file: Path | None = None) -> Destination:
    data: dict[str, Any] = {"id": dest_id, "url": url, "user_dpid": "1", "client_id": "2"}
    if ca_file is not None:
        data["ca_file"] = str(ca_file)
    return Destination.model_validate(data)


async def handshake(port: int, context: ssl.SSLContext) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                              server_hostname="127.0.0.1")
    writer.close()
    await writer.wait_closed()


def test_destinations_with_the_same_trust_share_one_context(tls: TLSMaterial) -> None:
    a = tls_context(destination("901", "https://127.0.0.1:1/a", tls.ca_file))
    b = tls_context(destination("902", "https://127.0.0.1:1/b", tls.ca_file))
    system_only = tls_context(destination("903", "https://127.0.0.1:1/c"))
    assert a is not None and a is b
    assert system_only is not None and system_only is not a
    assert system_only is tls_context(destination("904", "https://127.0.0.1:1/d"))
    assert tls_context(destination("905", "http://127.0.0.1:1/e", tls.ca_file)) is None


async def test_each_destination_keeps_the_trust_it_names(tls: TLSMaterial,
                                                        tmp_path: Path) -> None:
    other = make_tls(tmp_path / "other")
    server = LocalServer()
    await server.start(web.Application(), ssl_context=tls.server_context())
    try:
        ours = tls_context(destination("901", server.url + "/a", tls.ca_file))
        theirs = tls_context(destination("902", server.url + "/b", other.ca_file))
        system_only = tls_context(destination("903", server.url + "/c"))
        assert ours is not None and theirs is not None and system_only is not None
        await handshake(server.port, ours)
        for context in (theirs, system_only):
            with pytest.raises(ssl.SSLCertVerificationError):
                await handshake(server.port, context)
        dest = destination("904", server.url + "/d", tls.ca_file)
        async with (make_session(dest, tls_context(dest)) as session,  # aiohttp's, shared
                    session.post(server.url + "/d") as answer):
            assert answer.status == 404
        for context in (ours, theirs, system_only):  # nothing loosened a shared context
            assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    finally:
        await server.stop()


async def test_a_ca_file_written_anew_is_loaded_anew(tls: TLSMaterial, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(make_tls(tmp_path / "old").ca_file.read_bytes())
    before = tls_context(destination("901", "https://127.0.0.1:1/a", ca_file))
    ca_file.write_bytes(tls.ca_file.read_bytes() + b"\n")  # the CA that signed the server's
    after = tls_context(destination("901", "https://127.0.0.1:1/a", ca_file))
    assert before is not None and after is not None and after is not before
    server = LocalServer()
    await server.start(web.Application(), ssl_context=tls.server_context())
    try:
        await handshake(server.port, after)
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(server.port, before)
    finally:
        await server.stop()


async def test_a_token_endpoint_whose_certificate_is_refused_says_so(tls: TLSMaterial) -> None:
    """Not "unreachable": the endpoint answered, its certificate was not trusted (signed by a
    CA the destination does not name). The operator is told which host and why."""
    server = LocalServer()
    await server.start(web.Application(), ssl_context=tls.server_context())
    try:
        async with aiohttp.ClientSession() as session:  # the system's CAs only
            with pytest.raises(TokenError) as refused:
                await TokenEndpoint(session, 5).send(TokenHttpRequest(server.url + "/token"))
        assert str(refused.value).startswith(
            f"token request failed: TLS certificate of 127.0.0.1:{server.port} refused: ")
        assert not refused.value.permanent  # retried: a CA file may be fixed meanwhile
    finally:
        await server.stop()
