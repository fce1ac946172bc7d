"""Every answer a real partner or token endpoint gives has the right outcome (issue 13):
redirects, odd token answers, partners that refuse fresh tokens, Retry-After, TLS failures,
kept-alive connections the partner closed.

Real parts only: aiohttp partners and token servers (over HTTPS with the test CA where it
matters), a private redis-server, in-process workers (``running``) or ``iris run`` processes.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import os
import secrets
import ssl
import subprocess
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme
import yaml
from aiohttp import web

from iris_demo.localredis import RedisProcess, free_port
from iris_demo.servers import LocalServer
from iris_demo.tls import TLSMaterial
from tests.conftest import (
    config_data,
    destination_config,
    make_config,
    metric,
    pending_total,
    running,
    trickle,
    wait_for,
)
from tests.faults.harness import WorkerProcess, check_promises, delivered, produce
from tests.helpers import GROUP, equals
from tests.http_proxy import HttpProxy
from tests.test_prometheus import ALERTS, tool

FAST = {"base_delay": 0.05, "max_delay": 0.5}


async def send_to(client: aioredis.Redis, key: str, dest: str, count: int) -> set[tuple[str, str]]:
    """``count`` events aimed at ``dest`` (its explicit destination field)."""
    pairs = set()
    for i in range(count):
        uuid = f"{dest}-u{i}"
        await client.xadd(key, {"uuid": uuid, "segment": "s1", "dpuuid": f"d{i}",
                                "destination": dest})
        pairs.add((uuid, "s1"))
    return pairs


# --------------------------------------------------------------------------- redirects

REDIRECTS = ("r301", "r302", "r303", "r307", "r308", "s308", "x308")


async def test_redirects_are_never_followed(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, tls: TLSMaterial,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The case `post-redirect`: 301/302/303 to an HTML page, 307/308 to a page that takes a
    POST, a 308 from https:// to plain http:// and a 308 to another origin. Nothing follows a
    redirect: no request reaches a target, not one byte goes over http://, nothing is counted
    as delivered, every event is dead-lettered as ``redirected`` naming the target without its
    query, and each destination logs one ERROR with the Location."""
    caplog.set_level(logging.DEBUG)
    reached: list[str] = []
    plain, secure = LocalServer(), LocalServer()

    async def target(request: web.Request) -> web.Response:
        reached.append(f"{request.scheme} {request.method} {request.path}")
        await request.read()
        return web.Response(text="<html>landing</html>", content_type="text/html")

    plain_app = web.Application()
    plain_app.router.add_route("*", "/{tail:.*}", target)
    plain_base = await plain.start(plain_app)
    locations: dict[str, str] = {}

    async def redirect(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        status = int(name[1:])
        return web.Response(status=status, headers={"Location": locations[name]})

    secure_app = web.Application()
    secure_app.router.add_route("*", "/{name:[rsx]30[0-9]}", redirect)
    secure_app.router.add_route("*", "/{tail:.*}", target)
    base = await secure.start(secure_app, ssl_context=tls.server_context())
    other_origin = base.replace("127.0.0.1", "localhost")
    locations.update({
        "r301": "/landing?token=s3cret-query", "r302": "/landing", "r303": f"{base}/landing",
        "r307": "/new", "r308": "/new", "s308": f"{plain_base}/new", "x308": f"{other_origin}/new",
    })
    dests = [{"id": name, "url": f"{base}/{name}", "user_dpid": "1", "client_id": "2",
              "ca_file": str(tls.ca_file), "auth": {"type": "bearer", "token": "tok-redirect"},
              "batch": {"max_wait": 0.1}} for name in REDIRECTS]
    config = make_config(redis_server.url, stream_key, dests)
    try:
        async with running(config) as worker:
            for name in REDIRECTS:
                await send_to(redis, stream_key, name, 3)

            async def all_dead() -> bool:
                return await redis.xlen(f"{stream_key}:dlq") == 3 * len(REDIRECTS)

            await wait_for(all_dead, 20, "every event dead-lettered")
            await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "nothing pending")
            for name in REDIRECTS:
                assert metric(worker, "iris_events_delivered_total", destination=name) == 0
                assert metric(worker, "iris_requests_total", destination=name,
                              code=name[1:]) == 1
                assert metric(worker, "iris_events_dead_lettered_total", destination=name,
                              reason="redirected") == 3
    finally:
        await plain.stop()
        await secure.stop()
    assert reached == []  # no GET of the landing page, no re-POST, nothing over http://
    for _, fields in await redis.xrange(f"{stream_key}:dlq"):
        name = fields["dlq_destination"]
        assert fields["dlq_reason"] == "redirected" and fields["dlq_status"] == name[1:]
        expected = locations[name].split("?")[0]
        if expected.startswith("/"):
            expected = f"{base}{expected}"
        assert f"redirect to {expected}:" in fields["dlq_error"], fields["dlq_error"]
        assert "s3cret-query" not in fields["dlq_error"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for name in REDIRECTS:
        mine = [e for e in errors if e.startswith(f"{name}: HTTP ")]
        assert len(mine) == 1 and "redirect to" in mine[0], mine


# --------------------------------------------------------------------------- token answers


def issue(partner: Any, lifetime: float = 3600) -> str:
    """A token the partner's token server knows (so the partner accepts it)."""
    token = "tok-" + secrets.token_urlsafe(16)
    partner.tokens.issued[token] = time.monotonic() + lifetime
    return token


async def test_token_endpoint_answers_200_with_an_error_object(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """`200 {"error": "invalid_client"}` is a refusal: the destination pauses, nothing is
    dead-lettered, /readyz names the destination, and no further token request is made."""
    partner = await partners("423")

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "invalid_client",
                                  "error_description": "client secret expired on 2026-11-01"})

    partner.tokens.responder = refuse
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_wait": 0.1}, retry=FAST)])
    async with running(config) as worker:
        await send_to(redis, stream_key, "423", 5)
        await wait_for(lambda: metric(worker, "iris_auth_paused", destination="423") == 1, 10,
                       "the destination paused")
        assert worker.health.readiness()[0]
        assert any("destination 423 paused" in r for r in worker.health.paused_destinations())
        requests = len(partner.tokens.requests)
        assert await redis.xlen(f"{stream_key}:dlq") == 0
        assert metric(worker, "iris_retries_total", destination="423") == 0
    assert requests == 1 and len(partner.tokens.requests) == 1


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
@pytest.mark.parametrize("templated", [False, True], ids=["standard", "token_request"])
async def test_form_encoded_token_answers(
    content_type: str, templated: bool, redis_server: RedisProcess, redis: aioredis.Redis,
    stream_key: str, partners: Any,
) -> None:
    """A token endpoint answering `access_token=…&token_type=bearer&expires_in=3600`, declared
    as a form or as text/plain: the token is read and every event is delivered."""
    partner = await partners("423")

    async def form(request: web.Request) -> web.Response:
        token = issue(partner)
        return web.Response(text=f"access_token={token}&token_type=bearer&expires_in=3600",
                            content_type=content_type)

    partner.tokens.responder = form
    dest = destination_config(partner, batch={"max_wait": 0.1})
    if templated:
        dest["auth"]["token_request"] = {"body": "grant_type=client_credentials"}
    config = make_config(redis_server.url, stream_key, [dest])
    async with running(config) as worker:
        sent = await send_to(redis, stream_key, "423", 5)
        await wait_for(lambda: sent <= delivered(partner), 10, "delivered")
        assert metric(worker, "iris_token_requests_total", destination="423",
                      outcome="success") == 1


@pytest.mark.parametrize("expires_in", [0, -5, "3599", 9223372036854775],
                         ids=["zero", "negative", "string", "huge"])
async def test_odd_expires_in_values(
    expires_in: object, redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Any,
) -> None:
    """Each gives a working token whose expiry is bounded (a day at most; the default hour for
    0 or a negative value), and every key the token store wrote has a TTL."""
    partner = await partners("423")

    async def odd(request: web.Request) -> web.Response:
        return web.json_response({"access_token": issue(partner), "token_type": "Bearer",
                                  "expires_in": expires_in})

    partner.tokens.responder = odd
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_wait": 0.1})])
    async with running(config) as worker:
        sent = await send_to(redis, stream_key, "423", 3)
        await wait_for(lambda: sent <= delivered(partner), 10, "delivered")
        expiry = metric(worker, "iris_token_expiry_timestamp_seconds", destination="423")
    lifetime = expiry - time.time()
    wanted = {"zero": 3600, "negative": 3600, "string": 3599, "huge": 86400}[
        {0: "zero", -5: "negative", "3599": "string"}.get(expires_in, "huge")]  # type: ignore
    assert wanted - 30 < lifetime <= wanted, lifetime
    keys = [k async for k in redis.scan_iter(f"{stream_key}:auth:*")]
    assert keys
    for key in keys:
        assert await redis.pttl(key) > 0, key


async def test_token_endpoint_redirect_pauses_and_names_the_target(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A token endpoint answering 302 (a login page) is not followed (the request carries the
    client's secret): the destination pauses, the ERROR names the target, nothing is lost."""
    partner = await partners("423")

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "https://login.example/sso?x=1"})

    partner.tokens.responder = moved
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_wait": 0.1})])
    async with running(config) as worker:
        await send_to(redis, stream_key, "423", 3)
        await wait_for(lambda: metric(worker, "iris_auth_paused", destination="423") == 1, 10,
                       "paused")
        assert await redis.xlen(f"{stream_key}:dlq") == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("redirected (HTTP 302) to https://login.example/sso" in e for e in errors), errors
    assert not any("x=1" in e for e in errors)


# --------------------------------------------------------------------------- fresh tokens refused


async def test_a_partner_that_refuses_every_fresh_token(
    own_redis: RedisProcess, direct: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """Three replicas, a partner answering 401 (invalid_token) to every token, 30 s of traffic:
    at most one token request per 5 s (``fresh_token_age``) for the destination across the
    replicas, then a pause that every replica joins; nothing is dead-lettered, /readyz names
    the destination, and the events wait in Redis."""
    partner = await partners("423")

    async def refuse_all(request: web.Request, body: bytes) -> web.Response:
        return web.json_response({"error": "invalid_token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    partner.server.responder = refuse_all
    dest = destination_config(partner, batch={"max_wait": 0.1, "max_users": 2}, retry=FAST)
    workers = [WorkerProcess(config_data(own_redis.url, stream_key, [dest], consumer=f"r{i}"),
                             tmp_path, f"r{i}").start() for i in range(3)]
    try:
        for worker in workers:
            await wait_for(worker.ready, 20, "replica ready", worker.log)
        started, round_ = time.monotonic(), 0
        while time.monotonic() - started < 30:  # the 30 s of traffic the acceptance names
            await produce(direct, stream_key, f"t{round_}", 4)
            round_ += 1
            await asyncio.sleep(0.25)
        bodies = [await w.get("/readyz") for w in workers]
    finally:
        for worker in workers:
            worker.kill()
    times = sorted(r.time for r in partner.tokens.requests)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 1 <= len(times) <= 3 and all(g >= 4.9 for g in gaps), (times, gaps)
    assert await direct.xlen(f"{stream_key}:dlq") == 0
    assert all(status == 200 and "destination 423 paused" in body
               for status, body in bodies), bodies
    assert await direct.xlen(f"{stream_key}:out:423") >= 1  # the batches wait in Redis


async def test_a_refused_token_is_replaced_no_sooner_than_its_age_after_the_answer(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """A token endpoint that takes 1.5 s to answer, and a partner that refuses its tokens: the
    replacement is asked for ``fresh_token_age`` (5 s) after the first token was issued, not
    5 s after iris asked for it (3.5 s after issue). Counted from the request, a first request
    slowed on its way (a cold connection, a loaded machine) let the next one reach the
    endpoint sooner than 5 s after it."""
    partner = await partners("423")
    assert partner.tokens is not None

    async def slow(request: web.Request) -> None:
        await asyncio.sleep(1.5)  # then the endpoint answers as usual: a new token

    partner.tokens.responder = slow

    async def refuse_all(request: web.Request, body: bytes) -> web.Response:
        return web.json_response({"error": "invalid_token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    partner.server.responder = refuse_all
    config = make_config(redis_server.url, stream_key, [
        destination_config(partner, batch={"max_wait": 0.1}, retry=FAST)])
    async with running(config):
        await send_to(redis, stream_key, "423", 2)
        await wait_for(lambda: len(partner.tokens.requests) >= 2, 20, "a second token request",
                       lambda: partner.tokens.requests)
    first, second = (r.time for r in partner.tokens.requests[:2])
    assert second - first >= 1.5 + 5.0 - 0.05, second - first  # the answer, then 5 s


# --------------------------------------------------------------------------- Retry-After


async def test_retry_after_never_makes_retries_immediate(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
) -> None:
    """Partners answering 503 with `Retry-After: 0`, a date an hour ago, and `soon`: the ten
    attempts of a batch follow the normal backoff (here base 0.05 s: ~13 s for ten on average),
    never within one second (they used to run within 20 ms)."""
    headers = {"a": "0", "b": formatdate(time.time() - 3600, usegmt=True), "c": "soon"}
    seen: dict[str, list[float]] = {name: [] for name in headers}
    dests = []
    for name, value in headers.items():
        partner = await partners(name, client_secret=None)

        async def busy(request: web.Request, body: bytes, name: str = name,
                       value: str = value) -> web.Response:
            seen[name].append(time.monotonic())
            return web.json_response({"status": "503"}, status=503,
                                     headers={"Retry-After": value})

        partner.server.responder = busy
        dests.append(destination_config(partner, batch={"max_wait": 0.1},
                                        retry={"max_attempts": 10, "base_delay": 0.05},
                                        circuit={"failure_threshold": 1000}))
    config = make_config(redis_server.url, stream_key, dests)
    async with running(config):
        for name in headers:
            await send_to(redis, stream_key, name, 1)
        await wait_for(lambda: all(len(s) >= 10 for s in seen.values()), 90,
                       "ten attempts each", lambda: {k: len(v) for k, v in seen.items()})
    for name, times in seen.items():
        assert times[9] - times[0] > 1.0, (name, [round(t - times[0], 2) for t in times])


# --------------------------------------------------------------------------- TLS failures


def _tls_server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


async def test_tls_failures_name_the_reason_and_the_host(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, tls: TLSMaterial,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A certificate for another host, an expired one, and one from a CA nobody trusts: each is
    refused, and the log and ``dlq_error`` say why and for which host:port."""
    caplog.set_level(logging.DEBUG)
    ours = trustme.CA()  # the CA the destinations trust (ca_file)
    stranger = trustme.CA()
    ours.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    now = datetime.datetime.now(datetime.UTC)
    certs = {
        "wronghost": ours.issue_cert("other.example"),
        "expired": ours.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=30),
                                   not_after=now - datetime.timedelta(days=1)),
        "unknownca": stranger.issue_cert("127.0.0.1"),
    }
    reasons = {"wronghost": "IP address mismatch", "expired": "certificate has expired",
               "unknownca": "unable to get local issuer certificate"}
    servers: dict[str, LocalServer] = {}
    app = web.Application()
    app.router.add_post("/aam", _ok)
    dests = []
    try:
        for name, cert in certs.items():
            server = servers[name] = LocalServer()
            base = await server.start(app, ssl_context=_tls_server_context(cert))
            dests.append({"id": name, "url": f"{base}/aam", "user_dpid": "1", "client_id": "2",
                          "ca_file": str(tmp_path / "ca.pem"), "batch": {"max_wait": 0.1},
                          "retry": {"max_attempts": 2, **FAST}})
        config = make_config(redis_server.url, stream_key, dests)
        async with running(config):
            for name in certs:
                await send_to(redis, stream_key, name, 1)

            async def all_dead() -> bool:
                return await redis.xlen(f"{stream_key}:dlq") == len(certs)

            await wait_for(all_dead, 20, "every event dead-lettered")
    finally:
        for server in servers.values():
            await server.stop()
    lines = " ".join(r.getMessage() for r in caplog.records)
    for _, fields in await redis.xrange(f"{stream_key}:dlq"):
        name = fields["dlq_destination"]
        port = servers[name].port
        error = fields["dlq_error"]
        assert fields["dlq_reason"] == "retries_exhausted"
        assert f"TLS certificate of 127.0.0.1:{port} refused: {reasons[name]}" in error, error
        assert f"127.0.0.1:{port} refused: {reasons[name]}" in lines


# --------------------------------------------------------------------------- keep-alive


async def test_a_partner_that_closes_kept_alive_connections(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """The partner serves one request per connection and closes any it sees again (the race of
    an idle keep-alive timeout, made certain): no attempt is spent, nothing is lost, the
    requests lost that way are counted as ``connection_reused``, and IrisDeliveryErrorRatio,
    fed with this run's counters, stays quiet."""
    partner = await partners("423", client_secret=None)
    served: set[Any] = set()  # the transports themselves: an id() could be reused

    async def once_per_connection(request: web.Request, body: bytes) -> web.Response | None:
        transport = request.transport
        assert transport is not None
        if transport in served:
            transport.close()  # FIN: the client finds the connection closed under it
            return web.Response(status=500)
        served.add(transport)
        return None

    partner.server.responder = once_per_connection
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_wait": 0.05, "max_users": 2}, retry=FAST,
        limits={"max_in_flight": 2})])
    async with running(config) as worker:
        sent = await produce(redis, stream_key, "ka", 40)
        await wait_for(lambda: sent <= delivered(partner), 20, "delivered")
        ok = metric(worker, "iris_requests_total", destination="423", code="200")
        reused = metric(worker, "iris_requests_total", destination="423",
                        code="connection_reused")
        assert metric(worker, "iris_retries_total", destination="423") == 0
        assert metric(worker, "iris_requests_total", destination="423",
                      code="connection_error") == 0
    assert reused >= 5, reused  # the case happened, and was told apart
    await check_promises(redis, stream_key, GROUP, {"423": partner.server}, {"423": sent})
    assert_error_ratio_quiet(tmp_path, ok, reused)


def assert_error_ratio_quiet(tmp_path: Path, ok: float, reused: float) -> None:
    """promtool: 20 minutes at this run's ratio of 2xx to connection_reused requests."""
    per_min_ok, per_min_reused = max(1, round(ok)), max(1, round(reused))
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "run.test.yml").write_text(yaml.safe_dump({
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'iris_requests_total{destination="423",code="200"}',
                 "values": f"0+{per_min_ok}x30"},
                {"series": 'iris_requests_total{destination="423",code="connection_reused"}',
                 "values": f"0+{per_min_reused}x30"},
            ],
            "alert_rule_test": [{"eval_time": "25m", "alertname": "IrisDeliveryErrorRatio",
                                 "exp_alerts": []}],
        }],
    }))
    result = subprocess.run([tool("promtool"), "test", "rules", str(tmp_path / "run.test.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- egress


async def test_proxies_from_the_environment_and_per_destination(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, partners: Any,
    tls: TLSMaterial, tmp_path: Path, secret_watch: Any,
) -> None:
    """``iris run`` with HTTPS_PROXY: the token request and every batch go through the proxy
    (CONNECT tunnels to the partner, which also serves the token endpoint; nothing reaches it
    directly); with NO_PROXY naming the partner, nothing goes through the proxy; a
    destination's own ``proxy`` (with credentials, never logged) wins over the environment. A
    ``.netrc`` in the environment changes nothing (no credentials from it reach the partner)."""
    partner = await partners("423", https=True)
    port = int(partner.base_url.rsplit(":", 1)[1])
    secret_watch.add("pr0xy-s3cret")
    async with HttpProxy() as env_proxy, HttpProxy(("iris", "pr0xy-s3cret")) as own_proxy:
        async def run(name: str, env: dict[str, str], **dest: Any) -> WorkerProcess:
            data = config_data(redis_server.url, stream_key, [destination_config(
                partner, tls=tls, batch={"max_wait": 0.1}, **dest)], consumer=name)
            worker = WorkerProcess(data, tmp_path, name).start(
                *env.items(), *((k.lower(), v) for k, v in env.items()))
            await wait_for(worker.ready, 20, f"{name} ready", worker.log)
            sent = await produce(redis, stream_key, name, 5)
            await wait_for(lambda: sent <= delivered(partner), 20, f"{name} delivered",
                           worker.log)
            worker.kill()
            return worker

        netrc = tmp_path / "netrc"  # a `default` entry must not reach the partner (aiohttp's
        netrc.write_text("default login someone password netrc-s3cret\n")  # trust_env would)
        netrc.chmod(0o600)
        secret_watch.add("netrc-s3cret")
        await run("env", {"HTTPS_PROXY": env_proxy.url, "NO_PROXY": "", "NETRC": str(netrc)})
        through_env = list(env_proxy.tunnels)
        await run("bypass", {"HTTPS_PROXY": env_proxy.url, "NO_PROXY": "127.0.0.1"})
        bypassed = env_proxy.tunnels[len(through_env):]
        own_url = own_proxy.url.replace("http://", "http://iris:pr0xy-s3cret@")
        own = await run("own", {"HTTPS_PROXY": env_proxy.url, "NO_PROXY": ""}, proxy=own_url)
    assert through_env and set(through_env) == {f"127.0.0.1:{port}"}, through_env
    assert bypassed == []
    assert own_proxy.tunnels and set(own_proxy.tunnels) == {f"127.0.0.1:{port}"}
    assert own_proxy.refused == 0
    assert env_proxy.tunnels[len(through_env):] == []  # the destination's proxy won
    assert "pr0xy-s3cret" not in own.log()


HOSTS = Path("/etc/hosts")


def point(name: str, address: str | None) -> None:
    """Make /etc/hosts resolve ``name`` to ``address`` (None: not at all), leaving every other
    line as it is now: another suite on this machine may be editing its own line."""
    kept = [line for line in HOSTS.read_text().splitlines() if not line.endswith(f" {name}")]
    HOSTS.write_text("\n".join([*kept, *([f"{address} {name}"] if address else [])]) + "\n")


@pytest.mark.skipif(not os.access(HOSTS, os.W_OK), reason="/etc/hosts is not writable here")
async def test_a_dns_change_is_followed_under_steady_traffic(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
) -> None:
    """The partner's name moves from 127.0.0.1 to 127.0.0.2 (the test owns the resolver:
    /etc/hosts) while iris sends 20 requests/s over kept-alive connections: within 35 s the
    new address gets the traffic."""
    name = f"iris-dns-{secrets.token_hex(4)}.internal"  # this run's own name
    hits: dict[str, int] = {"127.0.0.1": 0, "127.0.0.2": 0}
    runners = []
    port = free_port()

    def app(address: str) -> web.Application:
        async def aam(request: web.Request) -> web.Response:
            await request.read()
            hits[address] += 1
            return web.json_response({"status": "ok"})

        application = web.Application()
        application.router.add_post("/aam", aam)
        return application

    try:
        for address in hits:
            runner = web.AppRunner(app(address), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, address, port).start()
            runners.append(runner)
        point(name, "127.0.0.1")
        dest = {"id": "dns", "url": f"http://{name}:{port}/aam", "user_dpid": "1",
                "client_id": "2", "allow_http": True, "batch": {"max_users": 1, "max_wait": 0.05}}
        config = make_config(redis_server.url, stream_key, [dest])
        async with running(config), trickle(redis, stream_key, rate=20):
            await wait_for(lambda: hits["127.0.0.1"] >= 20, 20, "traffic on the old address")
            point(name, "127.0.0.2")
            moved = time.monotonic()
            await wait_for(lambda: hits["127.0.0.2"] >= 1, 40, "traffic on the new address",
                           lambda: hits)
            took = time.monotonic() - moved
    finally:
        point(name, None)
        for runner in runners:
            await runner.cleanup()
    print(f"\n[dns] traffic moved after {took:.1f} s")
    assert took < 35


@pytest.mark.parametrize("answer", ["503", "no_token"])
async def test_token_trouble_makes_the_destination_wait(
    answer: str, redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str,
    partners: Any,
) -> None:
    """The token endpoint answers 503 (after its own 3 tries), or 200 without an access_token,
    for a while: no batch is sent or spends an attempt, nothing is dead-lettered, /readyz says
    the destination waits for a token, token requests back off; once the endpoint works, every
    event arrives. (It used to dead-letter all 16 events as retries_exhausted.)"""
    partner = await partners("423")
    broken = [True]

    async def trouble(request: web.Request) -> web.Response | None:
        if not broken[0]:
            return None
        if answer == "503":
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        return web.json_response({"token_type": "Bearer"})

    partner.tokens.responder = trouble
    config = make_config(redis_server.url, stream_key, [destination_config(
        partner, batch={"max_wait": 0.1, "max_users": 2}, retry={"max_attempts": 2, **FAST})])
    async with running(config) as worker:
        sent = await send_to(redis, stream_key, "423", 16)

        def waiting() -> bool:
            return any("destination 423 waiting for a token" in r
                       for r in worker.health.paused_destinations())

        await wait_for(waiting, 15, "/readyz: waiting for a token")
        await wait_for(lambda: len(partner.tokens.requests) >= 6, 20, "a few token requests")
        gaps = [b.time - a.time for a, b in itertools.pairwise(partner.tokens.requests[-4:])]
        assert partner.server.request_count == 0
        assert metric(worker, "iris_auth_paused", destination="423") == 1
        assert metric(worker, "iris_retries_total", destination="423") == 0
        broken[0] = False
        await wait_for(lambda: sent <= delivered(partner), 90, "delivered once it works")
        assert metric(worker, "iris_auth_paused", destination="423") == 0
    assert await redis.xlen(f"{stream_key}:dlq") == 0
    assert max(gaps) >= 0.9, gaps  # token requests back off (1 s, 2 s, …), no hot loop


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
