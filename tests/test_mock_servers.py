"""The demo's token endpoint and partner endpoint, exercised over real HTTP(S) with aiohttp."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp import web

from iris_demo.partner import PartnerServer, ReceivedBatch
from iris_demo.servers import LocalServer
from iris_demo.tls import make_tls
from iris_demo.token_server import TokenServer
from tests.helpers import basic_auth

CLIENT_ID = "iris client:1"
SECRET = "s3+cr%41t: é x"  # + % : é and a space: only a §2.3.1-encoding client gets in
FORM_CT = "application/x-www-form-urlencoded;charset=UTF-8"
GRANT = b"grant_type=client_credentials"

SEED_PAYLOAD: dict[str, Any] = {
    "ProcessTime": "Wed Jul 27 16:17:42 UTC 2016",
    "User_DPID": "12345",
    "Client_ID": "74323",
    "AAM_Destination_Id": "423",
    "User_count": "1",
    "Users": [
        {
            "AAM_UUID": "19393572368547369350319949416899715727",
            "DataPartner_UUID": "4250948725049857",
            "Segments": [
                {"Segment_ID": "14356", "Status": "1", "DateTime": "Wed Jul 27 16:17:22 UTC 2016"}
            ],
        }
    ],
}


def seed_headers(**override: str) -> dict[str, str]:
    """The token request headers exactly as seed 000 shows them."""
    headers = {
        "Authorization": basic_auth(CLIENT_ID, SECRET),
        "Content-Type": FORM_CT,
        "Accept-Encoding": "gzip",
        "User-Agent": "Adobe Audience Manager Iris",
    }
    headers.update(override)
    return headers


async def poll(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``cond`` with a deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@contextlib.asynccontextmanager
async def serve(app: web.Application, **kw: Any) -> AsyncIterator[tuple[LocalServer, str]]:
    server = LocalServer()
    url = await server.start(app, **kw)
    try:
        yield server, url
    finally:
        await server.stop()


@pytest.fixture
async def token_srv() -> AsyncIterator[tuple[TokenServer, str]]:
    ts = TokenServer(client_id=CLIENT_ID, client_secret=SECRET, gzip=True)
    async with serve(ts.app()) as (_, url):
        yield ts, url + ts.path


async def get_token(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(url, data=GRANT, headers=seed_headers()) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


# -- TokenServer ----------------------------------------------------------------------------


async def test_token_seed_request_accepted(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession
) -> None:
    ts, url = token_srv
    async with session.post(url, data=GRANT, headers=seed_headers()) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Content-Encoding"] == "gzip"
        doc = await resp.json()
    assert set(doc) == {"token_type", "access_token", "expires_in"}
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 3600
    token = doc["access_token"]
    assert len(token) >= 40 and ts.is_valid(token) and not ts.is_expired(token)
    assert ts.all_tokens() == [token] and ts.ok_requests == 1
    (rec,) = ts.requests
    assert rec.ok and rec.method == "POST" and rec.content_type == FORM_CT
    assert rec.accept_encoding == "gzip" and rec.gzipped
    assert rec.form == {"grant_type": "client_credentials"}
    assert rec.client_id_seen == CLIENT_ID
    assert SECRET not in repr(ts.requests) and quote_plus(SECRET) not in repr(ts.requests)
    assert basic_auth(CLIENT_ID, SECRET).split()[1] not in repr(ts.requests)


async def test_token_gzip_body_is_really_gzip(token_srv: tuple[TokenServer, str]) -> None:
    _, url = token_srv
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.post(url, data=GRANT, headers=seed_headers()) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        doc = json.loads(gzip.decompress(await resp.read()))
    assert doc["token_type"] == "Bearer"


async def test_token_plain_when_client_does_not_accept_gzip(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession
) -> None:
    ts, url = token_srv
    headers = seed_headers(**{"Accept-Encoding": "identity"})
    async with session.post(url, data=GRANT, headers=headers) as resp:
        assert resp.status == 200 and "Content-Encoding" not in resp.headers
    assert ts.requests[-1].accept_encoding == "identity" and not ts.requests[-1].gzipped


@pytest.mark.parametrize(
    "ctype",
    [
        "application/x-www-form-urlencoded ; charset=UTF-8",
        "Application/X-WWW-Form-Urlencoded; Charset=utf-8",
        'application/x-www-form-urlencoded;charset="UTF-8"',
    ],
)
async def test_token_content_type_variants_accepted(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession, ctype: str
) -> None:
    _, url = token_srv
    async with session.post(url, data=GRANT, headers=seed_headers(**{"Content-Type": ctype})) as r:
        assert r.status == 200


async def expect_error(
    session: aiohttp.ClientSession, url: str, status: int, error: str, **kw: Any
) -> aiohttp.ClientResponse:
    kw.setdefault("data", GRANT)
    kw.setdefault("headers", seed_headers())
    async with session.request(kw.pop("method", "POST"), url, **kw) as resp:
        assert resp.status == status, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/json")
        assert (await resp.json())["error"] == error
        return resp


async def test_token_wrong_secret_is_invalid_client(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession
) -> None:
    ts, url = token_srv
    headers = seed_headers(Authorization=basic_auth(CLIENT_ID, "nope"))
    resp = await expect_error(session, url, 401, "invalid_client", headers=headers)
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="token"'
    rec = ts.requests[-1]
    assert not rec.ok and rec.error == "invalid_client" and rec.client_id_seen == CLIENT_ID
    assert ts.all_tokens() == [] and ts.ok_requests == 0


async def test_token_unencoded_credentials_are_refused(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession
) -> None:
    """Skipping the §2.3.1 form-encoding turns '+' into ' ' and '%41' into 'A': refused."""
    _, url = token_srv
    headers = seed_headers(Authorization=basic_auth(CLIENT_ID, SECRET, encode=False))
    await expect_error(session, url, 401, "invalid_client", headers=headers)


@pytest.mark.parametrize("auth", [None, "Bearer abc", "Basic !!!notbase64", "Basic " + "eA=="])
async def test_token_missing_or_garbled_auth(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession, auth: str | None
) -> None:
    _, url = token_srv
    headers = seed_headers()
    if auth is None:
        del headers["Authorization"]
    else:
        headers["Authorization"] = auth
    await expect_error(session, url, 401, "invalid_client", headers=headers)


async def test_token_wrong_grant(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession
) -> None:
    ts, url = token_srv
    await expect_error(session, url, 400, "unsupported_grant_type", data=b"grant_type=password")
    assert ts.requests[-1].error == "unsupported_grant_type"
    await expect_error(session, url, 400, "invalid_request", data=b"")
    await expect_error(
        session, url, 400, "invalid_request", data=GRANT + b"&grant_type=client_credentials"
    )


@pytest.mark.parametrize(
    "ctype", ["application/json", "application/x-www-form-urlencoded", "text/plain;charset=UTF-8"]
)
async def test_token_wrong_content_type(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession, ctype: str
) -> None:
    _, url = token_srv
    headers = seed_headers(**{"Content-Type": ctype})
    await expect_error(session, url, 400, "invalid_request", headers=headers)


async def test_token_get_is_405(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession
) -> None:
    ts, url = token_srv
    resp = await expect_error(session, url, 405, "invalid_request", method="GET", data=None)
    assert resp.headers["Allow"] == "POST" and ts.requests[-1].method == "GET"


async def test_token_scope(session: aiohttp.ClientSession) -> None:
    ts = TokenServer(client_id=CLIENT_ID, client_secret=SECRET, scope="segments")
    async with serve(ts.app()) as (_, base):
        url = base + ts.path
        await expect_error(session, url, 400, "invalid_scope")
        await expect_error(session, url, 400, "invalid_scope", data=GRANT + b"&scope=other")
        async with session.post(url, data=GRANT + b"&scope=segments", headers=seed_headers()) as r:
            assert r.status == 200
        assert ts.requests[-1].form["scope"] == "segments"


async def test_token_without_expires_in_still_expires(session: aiohttp.ClientSession) -> None:
    ts = TokenServer(client_id=CLIENT_ID, client_secret=SECRET, ttl=None)
    ts.hidden_ttl = 0.2
    async with serve(ts.app()) as (_, base):
        async with session.post(base + ts.path, data=GRANT, headers=seed_headers()) as resp:
            doc = await resp.json()
        assert "expires_in" not in doc and "Content-Encoding" not in resp.headers
        token = doc["access_token"]
        assert ts.is_valid(token)
        await poll(lambda: ts.is_expired(token))
        assert not ts.is_valid(token)


async def test_token_revoke_all(
    token_srv: tuple[TokenServer, str], session: aiohttp.ClientSession
) -> None:
    ts, url = token_srv
    old = await get_token(session, url)
    ts.revoke_all()
    new = await get_token(session, url)
    assert old != new and not ts.is_valid(old) and not ts.is_expired(old) and ts.is_valid(new)
    assert ts.is_revoked(old) and ts.all_tokens() == [old, new]


async def test_token_over_https(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    ts = TokenServer(client_id=CLIENT_ID, client_secret=SECRET, gzip=True)
    async with serve(ts.app(), ssl_context=tls.server_context()) as (server, base):
        assert base == f"https://127.0.0.1:{server.port}"
        trusting = ssl.create_default_context(cafile=str(tls.ca_file))
        for host in (base, f"https://localhost:{server.port}"):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as s:
                assert await get_token(s, host + ts.path)
        async with aiohttp.ClientSession() as untrusting:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await untrusting.post(base + ts.path, data=GRANT, headers=seed_headers())
        assert ts.ok_requests == 2


# -- PartnerServer --------------------------------------------------------------------------


class Stack:
    """A token server and a partner wired together, both on loopback."""

    def __init__(self, ts: TokenServer, partner: PartnerServer, token_url: str, url: str):
        self.ts, self.partner, self.token_url, self.url = ts, partner, token_url, url

    async def post(
        self, session: aiohttp.ClientSession, payload: Any, *, token: str | None = None,
        headers: dict[str, str] | None = None, raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:  # fmt: skip
        if token is None:
            token = await get_token(session, self.token_url)
        hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        hdrs.update(headers or {})
        body = raw if raw is not None else json.dumps(payload).encode()
        async with session.post(self.url, data=body, headers=hdrs) as resp:
            return resp.status, await resp.json(), resp


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    seen: list[ReceivedBatch] = []
    ts = TokenServer(client_id=CLIENT_ID, client_secret=SECRET, ttl=3600)
    partner = PartnerServer(
        destination_id="423", user_dpid="12345", client_id="74323", tokens=ts, on_batch=seen.append
    )
    partner.seen = seen  # type: ignore[attr-defined]
    async with serve(ts.app()) as (_, tbase), serve(partner.app()) as (_, pbase):
        yield Stack(ts, partner, tbase + ts.path, pbase + partner.path)


async def test_partner_accepts_seed_payload(stack: Stack, session: aiohttp.ClientSession) -> None:
    token = await get_token(session, stack.token_url)
    status, doc, _ = await stack.post(
        session, SEED_PAYLOAD, token=token, headers={"Idempotency-Key": "k-1"}
    )
    p = stack.partner
    assert (status, doc) == (200, {"status": "ok"})
    assert p.problems == [] and p.request_count == 1 and len(p.received) == 1
    batch = p.received[0]
    assert batch.payload == SEED_PAYLOAD and batch.idempotency_key == "k-1"
    assert batch.token == token and json.loads(batch.body) == SEED_PAYLOAD
    assert p.seen == [batch]  # type: ignore[attr-defined]
    assert p.segment_changes() == [
        ("19393572368547369350319949416899715727", "4250948725049857", "14356", "1")
    ]
    assert [u["AAM_UUID"] for u in p.users_received()] == [SEED_PAYLOAD["Users"][0]["AAM_UUID"]]


async def test_partner_accepts_regions_and_many_users(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    payload = copy.deepcopy(SEED_PAYLOAD)
    second = copy.deepcopy(payload["Users"][0])
    second["AAM_UUID"], second["AAM_Regions"] = "2", ["7", "9"]
    second["Segments"].append(
        {"Segment_ID": "99", "Status": "0", "DateTime": "Mon Feb 29 00:00:00 UTC 2016"}
    )
    payload["Users"].append(second)
    payload["User_count"] = "2"
    status, _, _ = await stack.post(session, payload)
    assert status == 200 and stack.partner.problems == []
    assert [c[2:] for c in stack.partner.segment_changes()] == [
        ("14356", "1"), ("14356", "1"), ("99", "0")
    ]  # fmt: skip


def _user(p: dict[str, Any]) -> dict[str, Any]:
    return p["Users"][0]


def _seg(p: dict[str, Any]) -> dict[str, Any]:
    return p["Users"][0]["Segments"][0]


def _dup_user(p: dict[str, Any]) -> None:
    p["Users"].append(copy.deepcopy(_user(p)))
    p["User_count"] = "2"


UUID = "19393572368547369350319949416899715727"
SEG0 = "Users[0].Segments[0]"
MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("non_string", lambda p: _seg(p).update(Status=1), f"{SEG0}.Status: expected a string"),
    ("non_string_top", lambda p: p.update(User_DPID=12345), "User_DPID: expected a string"),
    ("user_count", lambda p: p.update(User_count="2"), "User_count: '2' but Users has 1"),
    ("user_count_pad", lambda p: p.update(User_count="01"), "User_count: '01'"),
    ("bad_date", lambda p: _seg(p).update(DateTime="2016-07-27T16:17:22Z"), f"{SEG0}.DateTime"),
    ("unpadded_day", lambda p: p.update(ProcessTime="Sat Jul 2 16:17:42 UTC 2016"), "ProcessTime:"),
    ("weekday", lambda p: p.update(ProcessTime="Thu Jul 27 16:17:42 UTC 2016"), "ProcessTime:"),
    ("duplicate_user", _dup_user, f"Users[1].AAM_UUID: '{UUID}' already in Users[0]"),
    ("missing_key", lambda p: p.pop("Client_ID"), "body: missing key(s) Client_ID"),
    ("extra_key", lambda p: p.update(Extra="x"), "body: unexpected key(s) Extra"),
    ("extra_user_key", lambda p: _user(p).update(Foo="x"), "Users[0]: unexpected key(s) Foo"),
    ("bad_status", lambda p: _seg(p).update(Status="2"), f'{SEG0}.Status: expected "0" or "1"'),
    ("dup_segment", lambda p: _user(p)["Segments"].append(dict(_seg(p))), "Users[0].Segments[1]"),
    ("empty_users", lambda p: p.update(Users=[], User_count="0"), "Users: empty list"),
    ("empty_segments", lambda p: _user(p).update(Segments=[]), "Users[0].Segments: empty list"),
    ("empty_dpuuid", lambda p: _user(p).update(DataPartner_UUID=""), "Users[0].DataPartner_UUID"),
    ("empty_regions", lambda p: _user(p).update(AAM_Regions=[]), "Users[0].AAM_Regions: empty"),
    ("destination", lambda p: p.update(AAM_Destination_Id="424"), "AAM_Destination_Id: expected"),
    ("wrong_client", lambda p: p.update(Client_ID="1"), "Client_ID: expected '74323'"),
]


@pytest.mark.parametrize(
    ("mutate", "detail"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
async def test_partner_rejects_invalid_payload(
    stack: Stack,
    session: aiohttp.ClientSession,
    mutate: Callable[[dict[str, Any]], Any],
    detail: str,
) -> None:
    payload = copy.deepcopy(SEED_PAYLOAD)
    mutate(payload)
    status, doc, _ = await stack.post(session, payload)
    p = stack.partner
    assert status == 400 and doc["error"] == "invalid_payload"
    assert len(p.problems) == 1 and p.problems[0].startswith(detail), p.problems
    assert doc["detail"] == p.problems[0] and p.received == []


@pytest.mark.parametrize(
    ("raw", "ctype", "detail"),
    [
        (b'{"ProcessTime": "a", "ProcessTime": "b"}', "application/json", "duplicate JSON key"),
        (b"{not json", "application/json", "body is not JSON"),
        (b"[]", "application/json", "body: expected an object"),
        (json.dumps(SEED_PAYLOAD).encode(), "text/plain", "Content-Type"),
    ],
)
async def test_partner_rejects_bad_bodies(
    stack: Stack, session: aiohttp.ClientSession, raw: bytes, ctype: str, detail: str
) -> None:
    status, _, _ = await stack.post(session, None, raw=raw, headers={"Content-Type": ctype})
    assert status == 400 and stack.partner.problems[0].startswith(detail), stack.partner.problems


async def test_partner_expired_token(session: aiohttp.ClientSession) -> None:
    ts = TokenServer(client_id=CLIENT_ID, client_secret=SECRET, ttl=0.2)
    partner = PartnerServer(destination_id="423", user_dpid="12345", client_id="74323", tokens=ts)
    async with serve(ts.app()) as (_, tbase), serve(partner.app()) as (_, pbase):
        s = Stack(ts, partner, tbase + ts.path, pbase + partner.path)
        token = await get_token(session, s.token_url)
        await poll(lambda: ts.is_expired(token))
        status, doc, resp = await s.post(session, SEED_PAYLOAD, token=token)
    assert status == 401 and doc["error"] == "invalid_token"
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert partner.expired_token_requests == 1 and partner.auth_failures == 1
    assert partner.received == [] and partner.problems == []


@pytest.mark.parametrize("auth", ["Bearer not-a-token", "Basic eDp5", None, "Bearer"])
async def test_partner_bad_bearer(
    stack: Stack, session: aiohttp.ClientSession, auth: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with session.post(stack.url, json=SEED_PAYLOAD, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    p = stack.partner
    assert p.auth_failures == 1 and p.expired_token_requests == 0
    assert p.received == [] and p.problems == []


async def test_partner_revoked_token(stack: Stack, session: aiohttp.ClientSession) -> None:
    token = await get_token(session, stack.token_url)
    stack.ts.revoke_all()
    status, _, _ = await stack.post(session, SEED_PAYLOAD, token=token)
    assert status == 401 and stack.partner.expired_token_requests == 0
    status, _, _ = await stack.post(session, SEED_PAYLOAD)  # a fresh token works
    assert status == 200


async def test_partner_get_is_a_problem(stack: Stack, session: aiohttp.ClientSession) -> None:
    token = await get_token(session, stack.token_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.get(stack.url, json=SEED_PAYLOAD, headers=headers) as resp:
        assert resp.status == 405
    assert stack.partner.problems == ["method: expected POST, got GET"]


async def test_partner_responder_hook(stack: Stack, session: aiohttp.ClientSession) -> None:
    calls: list[bytes] = []

    async def busy(request: web.Request, body: bytes) -> web.StreamResponse | None:
        calls.append(body)
        if len(calls) == 1:
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "1"})
        return None

    stack.partner.responder = busy
    status, _, resp = await stack.post(session, SEED_PAYLOAD)
    assert status == 503 and resp.headers["Retry-After"] == "1" and stack.partner.received == []
    status, _, _ = await stack.post(session, SEED_PAYLOAD)
    assert status == 200 and len(stack.partner.received) == 1 and len(calls) == 2


@pytest.mark.parametrize("mode", ["basic", "bearer", "none"])
async def test_partner_fixed_credentials(session: aiohttp.ClientSession, mode: str) -> None:
    kw: dict[str, Any] = {"basic": ("u", "p:w")} if mode == "basic" else {}
    if mode == "bearer":
        kw["bearer"] = "fixed-token"
    partner = PartnerServer(destination_id="423", user_dpid="12345", client_id="74323", **kw)
    good = {"basic": "Basic " + base64.b64encode(b"u:p:w").decode(), "bearer": "Bearer fixed-token"}
    async with serve(partner.app()) as (_, base):
        url = base + partner.path
        async with session.post(url, json=SEED_PAYLOAD, headers={"Authorization": "Bearer x"}) as r:
            assert r.status == (200 if mode == "none" else 401)
        if mode != "none":
            async with session.post(
                url, json=SEED_PAYLOAD, headers={"Authorization": good[mode]}
            ) as r:
                assert r.status == 200
    assert len(partner.received) == 1 and partner.problems == []
