"""Shared fixtures: a private redis-server, real partner and token servers, an in-process worker,
and a scan of every log line for leaked secrets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from iris.config.model import Config, parse_config
from iris.runtime.worker import Worker
from iris_demo.localredis import RedisProcess
from iris_demo.partner import PartnerServer, SignatureCheck
from iris_demo.servers import LocalServer
from iris_demo.tls import TLSMaterial, make_tls
from iris_demo.token_server import TokenServer
from tests.helpers import group_pending

_keys = itertools.count()


async def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "",
                   detail: Callable[[], Any] | None = None) -> None:
    """Poll ``condition`` (sync or async) until true; fail with ``what`` (and ``detail()``,
    which explains the state) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            state = detail() if detail is not None else ""
            if asyncio.iscoroutine(state):
                state = await state
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or condition} {state}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- secrets in logs

class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@dataclass
class SecretWatch:
    """Everything a test registers here must never appear in a captured log line."""

    values: list[str] = field(default_factory=list)
    token_servers: list[TokenServer] = field(default_factory=list)

    def add(self, *values: str) -> None:
        self.values.extend(v for v in values if v)

    def all(self) -> list[str]:
        out = list(self.values)
        for server in self.token_servers:
            out.extend(server.all_tokens())
        return out

    def leaks(self, lines: list[str]) -> list[str]:
        secrets = self.all()
        return [f"{s[:4]}… in {line[:120]!r}" for line in lines for s in secrets if s in line]


@pytest.fixture(autouse=True)
def secret_watch() -> Iterator[SecretWatch]:
    """Capture every log record at DEBUG during the test; fail if any registered secret or
    issued token shows up, or any Authorization value."""
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    watch = SecretWatch()
    try:
        yield watch
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    leaks = watch.leaks(capture.lines)
    leaks += [line[:120] for line in capture.lines if "Bearer " in line or "Basic " in line]
    assert not leaks, f"secrets leaked into logs: {leaks}"


# --------------------------------------------------------------------------- redis

@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def stream_key() -> str:
    """A stream key of this test's own: tests share one redis-server, never its keys."""
    return f"t{next(_keys)}-{time.monotonic_ns()}:events"


# --------------------------------------------------------------------------- partners

@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return make_tls(tmp_path_factory.mktemp("tls"))


@dataclass
class Partner:
    """A partner endpoint and its token endpoint, served by one local server."""

    dest_id: str
    server: PartnerServer
    tokens: TokenServer | None
    base_url: str
    client_secret: str | None = None

    @property
    def url(self) -> str:
        return self.base_url + self.server.path

    @property
    def token_url(self) -> str:
        assert self.tokens is not None
        return self.base_url + self.tokens.path


@pytest.fixture
async def partners(
    tls: TLSMaterial, secret_watch: SecretWatch
) -> AsyncIterator[Callable[..., Any]]:
    """Start a partner (and its token endpoint). At teardown, before the log scan, every
    signature a partner saw is registered as a secret: none may be logged."""
    servers: list[LocalServer] = []
    started: list[PartnerServer] = []

    async def start(
        dest_id: str, *, https: bool = False, client_secret: str | None = "s3cret-" ,
        user_dpid: str = "12345", client_id: str = "74323",
        signature: SignatureCheck | None = None, **token_args: Any,
    ) -> Partner:
        tokens, secret = None, None
        if client_secret is not None:
            secret = client_secret + dest_id if client_secret == "s3cret-" else client_secret
            tokens = TokenServer(client_id=f"iris-{dest_id}", client_secret=secret, **token_args)
            secret_watch.add(secret)
            secret_watch.token_servers.append(tokens)
        if signature is not None:
            secret_watch.add(*(s for s in signature.keys.values() if isinstance(s, str)))
        partner = PartnerServer(destination_id=dest_id, user_dpid=user_dpid,
                                client_id=client_id, tokens=tokens, signature=signature)
        started.append(partner)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(partner.routes())
        if tokens is not None:
            app.add_routes(tokens.routes())
        server = LocalServer()
        servers.append(server)
        base = await server.start(app, ssl_context=tls.server_context() if https else None)
        return Partner(dest_id, partner, tokens, base, secret)

    yield start
    for server in servers:
        await server.stop()
    secret_watch.add(*signatures_seen(*started))


def signatures_seen(*partners: PartnerServer) -> list[str]:
    """Every signature header value the partners received, accepted or refused."""
    out = [b.signature for p in partners for b in p.received if b.signature]
    out += [r.signature for p in partners for r in p.signature_rejections if r.signature]
    return out


def destination_config(partner: Partner, *, tls: TLSMaterial | None = None,
                       **overrides: Any) -> dict[str, Any]:
    """The config mapping of one destination pointing at ``partner``."""
    dest: dict[str, Any] = {
        "id": partner.dest_id,
        "url": partner.url,
        "user_dpid": partner.server.user_dpid,
        "client_id": partner.server.client_id,
        "allow_http": partner.base_url.startswith("http:"),
    }
    if partner.tokens is not None:
        dest["auth"] = {
            "type": "oauth2_client_credentials",
            "token_url": partner.token_url,
            "client_id": partner.tokens.client_id,
            "client_secret": partner.client_secret,
        }
    if partner.base_url.startswith("https:") and tls is not None:
        dest["ca_file"] = str(tls.ca_file)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(dest.get(key), dict):
            dest[key] = {**dest[key], **value}
        else:
            dest[key] = value
    return dest


def config_data(redis_url: str, stream_key: str, destinations: list[dict[str, Any]],
                **stream: Any) -> dict[str, Any]:
    """A raw config mapping (what a YAML file would hold) for tests."""
    return {
        "redis": {"url": redis_url},
        "stream": {"key": stream_key, "consumer": f"c-{stream_key}", "block_ms": 200, **stream},
        "http": {"listen": "127.0.0.1:0"},
        "shutdown_timeout": 5,
        "destinations": destinations,
    }


def make_config(redis_url: str, stream_key: str, destinations: list[dict[str, Any]],
                **stream: Any) -> Config:
    return parse_config(config_data(redis_url, stream_key, destinations, **stream), env={})


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Worker]:
    """An in-process worker, started and ready; stopped (drained) on exit."""
    worker = Worker(config)
    task = asyncio.create_task(worker.run(), name="test-worker")
    try:
        await wait_for(lambda: not worker.health.starting or task.done(), 10, "worker start")
        if task.done():
            task.result()
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, config.shutdown_timeout + 10)


async def pending_total(client: aioredis.Redis, config: Config) -> int:
    """Entries pending in the group, inbound and on every outbound stream."""
    keys = [config.stream.key] + [f"{config.stream.key}:out:{d.id}" for d in config.destinations]
    return await group_pending(client, keys, config.stream.group)


def diagnose(worker: Worker, partner: Partner, sent: int | None = None) -> str:
    """What the worker and the partner saw, for a timeout message."""
    samples = {
        f"{s.name}{s.labels}": s.value
        for m in worker.metrics.registry.collect() for s in m.samples
        if s.name in ("iris_requests_total", "iris_events_dead_lettered_total",
                      "iris_retries_total", "iris_token_requests_total") and s.value
    }
    return (f"(sent={sent}, received={len(partner.server.segment_changes())}, "
            f"partner auth failures={partner.server.auth_failures}, "
            f"problems={partner.server.problems[:3]}, metrics={samples})")


def metric(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


@asynccontextmanager
async def trickle(redis: aioredis.Redis, stream_key: str, rate: float = 25,
                  prefix: str = "u") -> AsyncIterator[list[int]]:
    """Send events at ``rate`` per second until the block ends; yields the sent count.

    Stopped by a flag, not by cancelling: on Python 3.11 a cancel that lands inside redis-py's
    ``asyncio.wait_for`` can be swallowed, and the producer would run on for ever."""
    sent = [0]
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await redis.xadd(stream_key, {"uuid": f"{prefix}{sent[0]}", "segment": "s1",
                                          "dpuuid": f"d{sent[0]}"})
            sent[0] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / rate)

    task = asyncio.create_task(produce())
    try:
        yield sent
    finally:
        stop.set()
        await task
