"""``iris auth login`` driven by the test, which plays the person: it follows the printed URL to
a test authorisation server (RFC 6749 §4.1 with RFC 7636 PKCE) and the redirect back to iris.
Then ``iris auth test`` and ``check-config`` are scanned for every secret."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from iris.store.tokens import digest
from iris_demo.localredis import free_port
from iris_demo.partner import PartnerServer
from iris_demo.servers import LocalServer
from tests.conftest import SecretWatch, config_data, make_config, running, wait_for
from tests.helpers import run_cli
from tests.oauth_server import OAuthServer

SECRET = "login-secret+%é"


class Login:
    """``iris auth login`` as a child process, its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def url(self) -> str:
        """The authorisation URL it printed (the indented line after 'Open this URL')."""
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), 15)
            assert raw, f"login exited without printing a URL: {self.lines}"
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if line.startswith("  http"):
                return line.strip()

    async def finish(self) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), 20)
        return self.proc.returncode or 0, "\n".join(self.lines) + out.decode(), err.decode()


@pytest.fixture
async def served(secret_watch: SecretWatch) -> AsyncIterator[tuple[OAuthServer, PartnerServer,
                                                                   str, str]]:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    oauth = OAuthServer(client_id="iris-login", client_secret=SECRET, redirect_uris=[redirect],
                        require_pkce=True, ttl=3600, scope="segments:write offline")
    partner = PartnerServer(destination_id="77", user_dpid="12345", client_id="74323",
                            tokens=oauth)
    app = web.Application()
    app.add_routes(partner.routes())
    app.add_routes(oauth.routes())
    server = LocalServer()
    base = await server.start(app)
    secret_watch.add(SECRET)
    secret_watch.token_servers.append(oauth)  # type: ignore[arg-type]
    yield oauth, partner, base, redirect
    await server.stop()


def login_config(redis_url: str, stream_key: str, base: str, redirect: str,
                 oauth: OAuthServer, **auth: Any) -> dict[str, Any]:
    return config_data(redis_url, stream_key, [{
        "id": "77", "url": base + "/segments/aam", "user_dpid": "12345", "client_id": "74323",
        "allow_http": True, "batch": {"max_wait": 0.05},
        "auth": {"type": "oauth2_authorization_code", "token_url": base + oauth.path,
                 "authorization_url": base + oauth.authorize_path, "redirect_uri": redirect,
                 "client_id": oauth.client_id, "client_secret": SECRET,
                 "scope": ["segments:write", "offline"], **auth},
    }])


async def start_login(config_path: Path) -> Login:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iris", "auth", "login", "-c", str(config_path),
        "--destination", "77", "--timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    return Login(proc)


async def test_login_follows_the_url_rejects_a_wrong_state_and_feeds_the_workers(
    served, redis_server, redis, stream_key, tmp_path
) -> None:
    oauth, partner, base, redirect = served
    raw = login_config(redis_server.url, stream_key, base, redirect, oauth)
    config = make_config(redis_server.url, stream_key, raw["destinations"])
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(raw))

    # Before any login the destination is paused, and says why.
    async with running(config) as worker:
        await redis.xadd(stream_key, {"uuid": "before", "segment": "s1", "dpuuid": "d"})
        await wait_for(lambda: "destination 77 paused (token endpoint refused the credentials)"
                       in worker.health.paused_destinations(), 10, "paused before login")
    assert oauth.requests == [] and partner.received == []

    login = await start_login(path)
    url = await login.url()
    async with aiohttp.ClientSession() as client:
        # A redirect that does not carry our state (a forged or stale one) is refused.
        async with client.get(redirect, params={"code": "forged", "state": "not-ours"}) as r:
            assert r.status == 400 and "state mismatch" in await r.text()
        # The person: open the URL, consent (automatic here), follow the redirect to iris.
        async with client.get(url, allow_redirects=False) as r:
            assert r.status == 302
            location = r.headers["Location"]
        assert location.startswith(redirect + "?")
        async with client.get(location) as r:
            assert r.status == 200 and "authorised" in await r.text()
    code, out, err = await login.finish()
    assert code == 0, (out, err)
    assert "Logged in: destination 77" in out

    [authorize] = oauth.authorize_requests
    assert authorize["response_type"] == "code" and authorize["client_id"] == "iris-login"
    assert authorize["redirect_uri"] == redirect and authorize["scope"] == "segments:write offline"
    assert authorize["code_challenge_method"] == "S256" and len(authorize["code_challenge"]) == 43
    assert len(authorize["state"]) >= 32
    [exchange] = oauth.requests  # exactly one exchange: the forged code never reached it
    assert exchange.ok and exchange.grant_type == "authorization_code"
    assert exchange.client_auth_method == "client_secret_basic"
    assert exchange.form == {"grant_type": "authorization_code", "code": "***",
                             "redirect_uri": redirect, "code_verifier": "***"}
    [refresh_token] = [t for t in oauth.all_tokens() if oauth._refresh.get(t) == "valid"]
    stored = await redis.hgetall(f"{stream_key}:auth:77:refresh")
    assert stored["digest"] == digest(refresh_token) and stored["data"].startswith("plain:")

    # Every worker now lives on that refresh token; the waiting batch goes out.
    async with running(config):
        await redis.xadd(stream_key, {"uuid": "after", "segment": "s1", "dpuuid": "d"})
        await wait_for(lambda: {c[0] for c in partner.segment_changes()} == {"before", "after"},
                       15, "both events delivered after the login")
    assert all(oauth.is_valid(b.token) for b in partner.received if b.token)
    for text in (out, err):
        assert not [t for t in oauth.all_tokens() if t in text] and SECRET not in text


async def test_refused_authorisation_is_a_clear_error(served, redis_server, stream_key,
                                                      tmp_path) -> None:
    oauth, _, base, redirect = served
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(login_config(redis_server.url, stream_key, base, redirect,
                                                oauth)))
    login = await start_login(path)
    url = await login.url()
    state = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))["state"]
    async with aiohttp.ClientSession() as client, client.get(
        redirect, params={"error": "access_denied", "state": state}
    ) as r:
        assert r.status == 400
    code, _out, err = await login.finish()
    assert code == 1 and "authorisation refused: access_denied" in err
    assert "Traceback" not in err and oauth.requests == []


async def test_auth_test_and_check_config_never_show_a_secret(
    served, redis_server, redis, stream_key, tmp_path, secret_watch
) -> None:
    """Acceptance 8: secrets, tokens, refresh tokens, private keys and signing keys are scanned
    for in everything ``check-config`` and ``auth test`` print."""
    from cryptography.fernet import Fernet

    from tests.oauth_server import make_rsa_key

    oauth, _, base, _redirect = served
    users = {"alice": "pa ss+wörd"}
    oauth._users.update(users)  # the password grant's resource owner
    private_key, _public_key = make_rsa_key()
    key_file = tmp_path / "jwt.pem"
    key_file.write_text(private_key)
    signing_secret, store_key = "hmac-Secret-42", Fernet.generate_key().decode()
    raw = config_data(redis_server.url, stream_key, [{
        "id": "pw", "url": base + "/segments/aam", "user_dpid": "12345", "client_id": "74323",
        "allow_http": True,
        "auth": {"type": "oauth2_password", "token_url": base + oauth.path,
                 "client_id": oauth.client_id, "client_secret": SECRET,
                 "username": "alice", "password": users["alice"], "scope": oauth.scope},
        "signing": {"key_id_header": "X-Key", "keys": [{"id": "k1", "secret": signing_secret}]},
    }, {
        "id": "jwt", "url": base + "/segments/aam", "user_dpid": "12345", "client_id": "74323",
        "allow_http": True,
        "auth": {"type": "jwt_bearer", "token_url": base + oauth.path, "issuer": "iris",
                 "audience": base + oauth.path, "private_key_file": str(key_file)},
    }])
    raw["token_store"] = {"encryption_key": store_key}
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    secret_watch.add(users["alice"], signing_secret, store_key, private_key)

    outputs = [await run_cli("check-config", "-c", str(path))]
    outputs.append(await run_cli("auth", "test", "-c", str(path), "--destination", "pw"))
    outputs.append(await run_cli("auth", "test", "-c", str(path), "--destination", "pw"))
    outputs.append(await run_cli("auth", "test", "-c", str(path), "--destination", "jwt"))
    (c0, _, _), (c1, out1, _), (c2, out2, _), (c3, out3, err3) = outputs
    assert (c0, c1, c2) == (0, 0, 0), outputs[1:3]
    assert out1.startswith("pw: Bearer token, expires ") and "from token endpoint" in out1
    assert "(oauth2_password, client_secret_basic)" in out1
    assert "from the shared token store" in out2  # the second run reuses the stored token
    assert "pw: requests signed with HMAC-SHA256 in X-Signature, key 'k1'" in out1
    assert c3 == 1 and "jwt: FAILED: " in out3  # this server has no JWT key: a clear refusal
    assert "Traceback" not in err3
    secrets = [SECRET, users["alice"], signing_secret, store_key, *private_key.splitlines()[1:3],
               *oauth.all_tokens()]
    for _code, out, err in outputs:
        leaks = [s[:6] for s in secrets if s and (s in out or s in err)]
        assert not leaks, leaks
        assert "Bearer " not in out.replace("Bearer token", "")
    # The store holds the token encrypted: no token appears in Redis in clear.
    values = []
    async for key in redis.scan_iter(f"{stream_key}:auth:*"):
        if await redis.type(key) == "hash":
            values += list((await redis.hgetall(key)).values())
    assert values and not [t for t in oauth.all_tokens() for v in values if t in v]

