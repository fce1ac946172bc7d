"""One token shared by several ``iris run`` processes through Redis, and refusals that pause a
destination for all of them.

A. Three worker processes share one destination whose tokens live 2 s, for 10 s of steady
   traffic (a fourth, lone process on its own stream and token server runs beside them as the
   single-flight baseline): token requests follow the token lifetimes, not the process count;
   every event is delivered; every token is used by several processes.
B. A token endpoint that answers invalid_client: one token request, the destination is paused
   (and says so in /readyz and the metrics), nothing is lost or dead-lettered, another
   destination delivers normally; ``iris auth test`` with good credentials lifts the pause and
   the backlog goes out. The pause's course over minutes (2 token requests in 65 s, 60 s apart,
   the second pause twice as long) runs in the token manager on a fake clock, in this process.
C. Three processes and a refusal: one token request in all, the pause is shared through Redis.

Real parts only: ``iris run`` child processes, the session redis-server, real aiohttp OAuth
(tests/oauth_server.py) and partner servers served in this process. Outcomes are waited for
with deadlines; every timing is measured from the servers' own records (in clock time, for the
fake clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from iris.auth.base import Credential
from iris.auth.source import EndpointSource
from iris.auth.tokens import TokenManager
from iris.auth.waits import PAUSE_RECHECK, REFUSED
from iris.config.auth import OAuth2Base
from iris.config.model import Config
from iris.errors import TokenError
from iris.http.token_endpoint import TokenEndpoint
from iris.runtime.wiring import fingerprint
from iris.store.tokens import Pause, TokenStore
from iris_demo.localredis import RedisProcess
from iris_demo.partner import PartnerServer
from iris_demo.servers import LocalServer
from tests.conftest import SecretWatch, wait_for
from tests.faults.harness import (
    WorkerProcess,
    as_config,
    check_promises,
    log_problems,
    start_all,
    worker_config,
)
from tests.helpers import (
    GROUP,
    FakeClock,
    Pair,
    all_delivered,
    event,
    group_pending,
    outbound_pairs,
    produce_pairs,
    run_cli,
)
from tests.oauth_server import OAuthServer

TTL = 2.0  # s: the token lifetime of scenario A
REFRESH_EVERY = 1.5  # s: iris refreshes a 2 s token after 1.5–1.6 s (schedule())
MIN_GAP = 1.3  # s: two token requests closer than this fetched the same generation twice
PAUSED = "token endpoint refused the credentials"


# --------------------------------------------------------------------------- who sent it


class Peers:
    """Which worker process sent a request to a server of this process.

    The client end of the request's TCP connection is a socket that exactly one worker holds:
    its inode is found in /proc/net/tcp by the connection's two ports, and among the socket
    inodes in /proc/<pid>/fd of the workers. Each connection is looked up once."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}  # worker name → pid
        self._known: dict[int, tuple[object, str]] = {}  # id(transport) → (transport, name)

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def of(self, request: web.Request) -> str:
        transport = request.transport
        if transport is None:
            return "?"
        known = self._known.get(id(transport))
        if known is not None and known[0] is transport:
            return known[1]
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        name = self._lookup(int(peer[1]), int(local[1])) if peer and local else "?"
        self._known[id(transport)] = (transport, name)  # holding it keeps its id unique
        return name

    def _lookup(self, client_port: int, server_port: int) -> str:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    parts = line.split()
                    local, remote = int(parts[1].rsplit(":", 1)[1], 16), int(
                        parts[2].rsplit(":", 1)[1], 16)
                    if local == client_port and remote == server_port:
                        inodes.add(parts[9])
        wanted = {f"socket:[{inode}]" for inode in inodes}
        for name, pid in self.pids.items():
            fd_dir = f"/proc/{pid}/fd"
            with contextlib.suppress(OSError):
                for fd in os.listdir(fd_dir):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"{fd_dir}/{fd}") in wanted:
                            return name
        return "?"


# --------------------------------------------------------------------------- servers


@dataclass
class Site:
    """A partner and its OAuth server on one local HTTP server; who sent what."""

    dest_id: str
    oauth: OAuthServer
    partner: PartnerServer
    base: str
    secret: str
    peers: Peers = field(default_factory=Peers)
    token_senders: list[str] = field(default_factory=list)  # worker per token request
    batches: list[tuple[str, str]] = field(default_factory=list)  # (worker, token) per batch

    def destination(self, **overrides: Any) -> dict[str, Any]:
        dest = {
            "id": self.dest_id,
            "url": self.base + self.partner.path,
            "user_dpid": self.partner.user_dpid,
            "client_id": self.partner.client_id,
            "allow_http": True,
            "segments": ["*"],
            "auth": {"type": "oauth2_client_credentials", "token_url": self.base + self.oauth.path,
                     "client_id": self.oauth.client_id, "client_secret": self.secret},
            "batch": {"max_users": 10, "max_wait": 0.1},
            "retry": {"base_delay": 0.1, "max_delay": 1.0},
        }
        dest.update(overrides)
        return dest

    def delivered(self) -> set[Pair]:
        return {(uuid, segment) for uuid, _dp, segment, _st in self.partner.segment_changes()}


@pytest.fixture
async def sites(secret_watch: SecretWatch) -> AsyncIterator[Callable[..., Any]]:
    servers: list[LocalServer] = []

    async def start(dest_id: str, **oauth_args: Any) -> Site:
        secret = f"shared-secret-{dest_id}-{os.urandom(6).hex()}"
        oauth = OAuthServer(client_id=f"iris-{dest_id}", client_secret=secret, **oauth_args)
        partner = PartnerServer(destination_id=dest_id, user_dpid="12345", client_id="74323",
                                tokens=oauth)  # type: ignore[arg-type]  # duck-typed
        secret_watch.add(secret)
        secret_watch.token_servers.append(oauth)  # type: ignore[arg-type]  # all_tokens()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(partner.routes())
        app.add_routes(oauth.routes())
        server = LocalServer()
        servers.append(server)
        site = Site(dest_id, oauth, partner, await server.start(app), secret)

        async def token_sender(request: web.Request) -> None:
            site.token_senders.append(site.peers.of(request))
            return None

        async def batch_sender(request: web.Request, _body: bytes) -> None:
            token = request.headers.get("Authorization", "").partition(" ")[2]
            site.batches.append((site.peers.of(request), token))
            return None

        oauth.responder = token_sender
        partner.responder = batch_sender
        return site

    yield start
    for server in servers:
        await server.stop()


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def steady(client: aioredis.Redis, key: str, rate: float,
                 prefix: str) -> AsyncIterator[list[Pair]]:
    """XADD ``rate`` events per second until the block ends; yields the pairs sent so far.
    Stopped by a flag, not a cancel (a cancel inside redis-py can be swallowed on 3.11)."""
    sent: list[Pair] = []
    stop = asyncio.Event()

    async def run() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            pair = (f"{prefix}{len(sent):05d}", "s1")
            await client.xadd(key, event(*pair))
            sent.append(pair)
            next_at += 1 / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    task = asyncio.create_task(run())
    try:
        yield sent
    finally:
        stop.set()
        await task


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(times)]


async def stored_pause(client: aioredis.Redis, stream_key: str, dest: str) -> dict[str, Any]:
    """The pause record of ``dest`` in the token store (its key holds a fingerprint)."""
    keys = [k async for k in client.scan_iter(f"{stream_key}:auth:{dest}:*:pause")]
    assert len(keys) == 1, keys
    raw = await client.get(keys[0])
    assert raw is not None
    return orjson.loads(raw)


class ReadyzLog:
    """/readyz of a worker, polled every 0.1 s in the background: (monotonic, status, body)."""

    def __init__(self, proc: WorkerProcess) -> None:
        self.proc = proc
        self.samples: list[tuple[float, int, str]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            status, body = await self.proc.get("/readyz")
            self.samples.append((time.monotonic(), status, body))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)

    async def __aenter__(self) -> ReadyzLog:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


# --------------------------------------------------------------------------- A


async def test_three_processes_share_one_token(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, sites: Any,
    tmp_path: Path,
) -> None:
    """Three ``iris run`` processes, one destination with 2 s tokens, 50 events/s for 10 s.

    Token requests follow the token lifetimes: at most ceil(run / 1.5 s) + 1, each at least
    1.3 s after the previous one (never two for the same generation), and no more than a lone
    process needs for the same traffic (the baseline, run beside them on its own stream and
    token server). Every event is delivered; every process delivers, with tokens that other
    processes fetched; the partner never sees an expired or unknown token."""
    shared = await sites("423", ttl=TTL)
    alone = await sites("423", ttl=TTL)
    base_key = stream_key.replace(":events", "-baseline:events")

    def config(site: Site, key: str, consumer: str) -> dict[str, Any]:
        return worker_config(redis_server.url, key, [site.destination()], consumer=consumer)

    names = ("w1", "w2", "w3")
    workers = [WorkerProcess(config(shared, stream_key, n), tmp_path, n) for n in names]
    baseline = WorkerProcess(config(alone, base_key, "b1"), tmp_path, "b1")
    keys = [stream_key, f"{stream_key}:out:423"]
    base_keys = [base_key, f"{base_key}:out:423"]
    try:
        await start_all(*workers, baseline)
        for name, proc in zip(names, workers, strict=True):
            shared.peers.add(name, proc.pid)
        alone.peers.add("b1", baseline.pid)
        started = time.monotonic()
        async with steady(redis, stream_key, 50, "a") as sent, \
                steady(redis, base_key, 50, "b") as base_sent:
            await wait_for(lambda: time.monotonic() - started >= 10, 12, "a 10 s run")
        produced_in = time.monotonic() - started
        expected, base_expected = set(sent), set(base_sent)
        await wait_for(lambda: all_delivered(redis, shared.delivered(), expected, keys), 20,
                       "every event delivered and nothing pending",
                       lambda: f"missing {len(expected - shared.delivered())} of "
                               f"{len(expected)}; {workers[0].log()[-2000:]}")
        await wait_for(lambda: all_delivered(redis, alone.delivered(), base_expected,
                                             base_keys), 20,
                       "baseline: every event delivered and nothing pending")
        delivered_in = time.monotonic() - started
        await check_promises(redis, stream_key, GROUP, {"423": shared.partner},
                             {"423": expected})
        await check_promises(redis, base_key, GROUP, {"423": alone.partner},
                             {"423": base_expected})
        requests_by = {n: await p.metric("iris_requests_total", destination="423", code="200")
                       for n, p in zip(names, workers, strict=True)}
        token_metric = {n: await p.metric("iris_token_requests_total", destination="423",
                                          outcome="success")
                        for n, p in zip(names, workers, strict=True)}
        for proc in workers:
            assert await proc.ready(), proc.log()[-2000:]
    finally:
        for proc in (*workers, baseline):
            proc.kill()

    # The token requests: one per generation, paced by the lifetime.
    ok = [r for r in shared.oauth.requests if r.ok]
    assert len(ok) == len(shared.oauth.requests), [(r.status, r.error) for r in
                                                   shared.oauth.requests]
    times = [r.time for r in ok]
    run_seconds = times[-1] - times[0] + TTL
    bound = math.ceil(run_seconds / REFRESH_EVERY) + 1
    base_ok = [r.time for r in alone.oauth.requests if r.ok]
    print(f"\nA: {len(sent)} events in {produced_in:.1f} s, all delivered after "
          f"{delivered_in:.1f} s; token requests: {len(ok)} for 3 processes (bound {bound}, "
          f"run {run_seconds:.2f} s), {len(base_ok)} for the lone baseline process")
    print(f"A: gaps between token requests (3 processes): "
          f"{[round(g, 2) for g in gaps(times)]}")
    print(f"A: gaps between token requests (baseline): "
          f"{[round(g, 2) for g in gaps(base_ok)]}")
    print(f"A: token requests sent by {Counter(shared.token_senders)}; per-process metric "
          f"iris_token_requests_total{{outcome=success}} {token_metric}")
    assert len(ok) <= bound, f"{len(ok)} token requests in {run_seconds:.1f} s (bound {bound})"
    assert min(gaps(times)) >= MIN_GAP, f"token requests too close: {gaps(times)}"
    # The baseline: one process alone needs about as many; three independent ones would need 3×.
    assert len(ok) <= len(base_ok) + 1, (len(ok), len(base_ok))
    assert len(ok) < 2 * len(base_ok), (len(ok), len(base_ok))
    assert sum(token_metric.values()) == len(ok), token_metric

    # Every process delivered, and with tokens the others fetched: one token, many users.
    assert all(v > 0 for v in requests_by.values()), requests_by
    senders_of: dict[str, set[str]] = defaultdict(set)
    for worker, token in shared.batches:
        senders_of[token].add(worker)
    issued = list(shared.oauth.issued)  # in issue order, one per (successful) request
    assert len(issued) == len(ok)
    fetched_by = dict(zip(issued, shared.token_senders, strict=True))
    by_worker = Counter(w for w, _ in shared.batches)
    print(f"A: batches per process (seen by the partner) {dict(by_worker)}; per-process metric "
          f"iris_requests_total{{code=200}} {requests_by}")
    print("A: token (fetched by) → processes that used it: "
          + "; ".join(f"#{issued.index(t) + 1} ({fetched_by[t]}) → {sorted(ws)}"
                      for t, ws in sorted(senders_of.items(), key=lambda i: issued.index(i[0]))))
    assert set(by_worker) == set(names), by_worker  # every batch traced to one of the three
    assert set(senders_of) <= set(issued) and len(senders_of) <= len(ok)
    assert any(len(ws) >= 2 for ws in senders_of.values()), senders_of
    assert sum(len(ws) >= 2 for ws in senders_of.values()) >= len(ok) - 2, senders_of
    assert dict(by_worker) == {n: int(v) for n, v in requests_by.items()}  # traced right
    assert any(ws - {fetched_by[t]} for t, ws in senders_of.items()), (
        "no token was used by a process other than the one that fetched it")
    assert shared.partner.expired_token_requests == 0 and shared.partner.auth_failures == 0
    assert alone.partner.expired_token_requests == 0 and alone.partner.auth_failures == 0
    assert shared.partner.problems == [] and alone.partner.problems == []
    for proc in workers:
        assert log_problems(proc.log(), [shared.secret, *shared.oauth.all_tokens()]) == []
        assert not [r for r in proc.records() if r["level"] in ("error", "critical")], (
            proc.log_path)


# --------------------------------------------------------------------------- B

OBSERVED = 12.0  # s of a refusal's pause watched in a worker process: two of its store looks


@pytest.mark.timeout(90)
async def test_invalid_client_pauses_the_destination_and_auth_test_lifts_it(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, sites: Any,
    tmp_path: Path,
) -> None:
    """A token endpoint answering invalid_client, watched in a worker process for 12 s after
    the first refusal (two of the worker's looks at the store): exactly 1 token request; the
    store holds refusal #1's 60 s pause, timed by the worker's clock; /readyz stays 200 and
    names the paused destination within a moment of the refusal and throughout (the pod itself
    can work); iris_auth_paused is 1; nothing of "bad" is sent, retried, dead-lettered or lost
    (its batches wait in its outbound stream); "good" delivers every wave within 5 s; one ERROR
    line, no secret. Then the credentials are accepted again: ``iris auth test`` succeeds (and
    shows no token), which lifts the pause; the backlog goes out and /readyz is 200.

    How the pause runs its course (its length, the one request when it ends, the doubling) is
    timed on a fake clock by the next test, in this process."""
    bad = await sites("bad")
    good = await sites("good")
    bad.oauth.refuse = "invalid_client"
    data = worker_config(redis_server.url, stream_key, [bad.destination(), good.destination()])
    proc = WorkerProcess(data, tmp_path, "pauser")
    out_bad = f"{stream_key}:out:bad"
    waves: list[tuple[float, list[Pair], float]] = []  # (sent at, pairs, good delivered after)

    async def wave(n: int) -> None:
        pairs = [(f"w{n}-{i:02d}", "s1") for i in range(20)]
        at = time.monotonic()
        await produce_pairs(redis, stream_key, pairs)
        await wait_for(lambda: good.delivered() >= set(pairs), 5, f"wave {n} delivered to good",
                       lambda: proc.log()[-2000:])
        waves.append((at, pairs, time.monotonic() - at))

    with proc:
        await start_all(proc)
        async with ReadyzLog(proc) as readyz:
            await wave(0)
            await wait_for(lambda: bad.oauth.requests, 10, "the first refusal")
            first = bad.oauth.requests[0].time
            await wait_for(lambda: any(PAUSED in body for _, _, body in readyz.samples), 5,
                           "/readyz to name the pause")
            assert await proc.metric("iris_auth_paused", destination="bad") == 1
            for n, at in enumerate((4, 8), 1):  # waves during the pause
                await wait_for(lambda at=at: time.monotonic() >= first + at, at + 5,
                               f"{at} s into the pause")
                await wave(n)
            await wait_for(lambda: time.monotonic() >= first + OBSERVED, OBSERVED + 5,
                           f"{OBSERVED:.0f} s of observation")
            observed = time.monotonic() - first
            requests = list(bad.oauth.requests)
            pause = await stored_pause(redis, stream_key, "bad")
            pause_left = pause["until"] - time.time()  # the refusal set it to 60 s
            pause_expected = 60 - (time.monotonic() - requests[0].time)
            metrics = {
                "paused": await proc.metric("iris_auth_paused", destination="bad"),
                "token_errors": await proc.metric("iris_token_requests_total",
                                                  destination="bad", outcome="error"),
                "token_ok": await proc.metric("iris_token_requests_total",
                                              destination="bad", outcome="success"),
                "retries": await proc.metric("iris_retries_total", destination="bad"),
                "good_tokens": await proc.metric("iris_token_requests_total",
                                                 destination="good", outcome="success"),
            }
            waiting = await outbound_pairs(redis, out_bad)
            bad_pending = await group_pending(redis, [out_bad])
            dead = [f for _, f in await redis.xrange(f"{stream_key}:dlq")]
            log_at_pause = proc.log()

        # ---- what the pause looked like
        sent = {pair for _, pairs, _ in waves for pair in pairs}
        named = next(t for t, _, body in readyz.samples if PAUSED in body)
        during = [(t, s, b) for t, s, b in readyz.samples if t >= named]
        print(f"\nB: {len(requests)} token request(s) in {observed:.1f} s after the first "
              f"refusal; /readyz named the pause {named - first:.2f} s after the refusal "
              f"({len(during)} samples after); good delivered each wave in "
              f"{[round(w[2], 2) for w in waves]} s; bad backlog {len(waiting)} events, "
              f"{bad_pending} batches pending; stored pause: refusal #{pause['count']}, "
              f"{pause_left:.1f} s left (expected {pause_expected:.1f}); metrics {metrics}")
        assert len(requests) == 1, [(r.time - first, r.status, r.error) for r in requests]
        assert requests[0].status == 401 and requests[0].error == "invalid_client"
        assert named - first < 2.0, named - first
        bad_samples = [(round(t - first, 1), s, b) for t, s, b in during
                       if s != 200 or f"destination bad paused ({PAUSED})" not in b]
        assert not bad_samples, bad_samples[:5]
        assert pause["count"] == 1 and pause["error"] == "invalid_client", pause
        assert abs(pause_left - pause_expected) < 1.0, (pause_left, pause_expected)
        assert metrics == {"paused": 1, "token_errors": 1, "token_ok": 0, "retries": 0,
                           "good_tokens": 1}, metrics
        assert bad.partner.request_count == 0  # no delivery attempt at all
        assert good.delivered() == sent and all(w[2] < 5 for w in waves)
        assert dead == [], dead[:3]
        assert waiting == sent, f"bad's batches lost: {sorted(sent - waiting)[:5]}"
        assert bad_pending > 0 or await redis.xlen(out_bad) > 0
        errors = [r for r in proc.records() if r["level"] in ("error", "critical")]
        assert len(errors) == 1, [e["message"] for e in errors]
        for record in errors:
            assert "invalid_client" in record["message"] and "paused" in record["message"], record
            assert record.get("destination") == "bad", record
        assert log_problems(log_at_pause, [bad.secret, good.secret,
                                           *good.oauth.all_tokens()]) == []

        # ---- the credentials are fixed: `iris auth test` succeeds and lifts the pause
        bad.oauth.refuse = None
        fixed = time.monotonic()
        code, out, err = await run_cli("auth", "test", "-c", str(proc.config_path),
                                       "--destination", "bad")
        print(f"B: iris auth test → {code}: {out.strip()!r} (stderr {len(err)} chars)")
        assert code == 0, (out, err)
        assert out.startswith("bad: Bearer token, expires "), out
        issued = bad.oauth.all_tokens()
        assert len(issued) == 1
        for text in (out, err):
            assert not [t for t in issued if t in text], "auth test printed the token"
            assert bad.secret not in text and "Bearer " not in text.replace("Bearer token", "")

        async def backlog_state() -> str:
            return (f"{len(sent - bad.delivered())} of {len(sent)} events missing, "
                    f"{await redis.xlen(out_bad)} batches in {out_bad} "
                    f"({await group_pending(redis, [out_bad])} pending); /readyz "
                    f"{await proc.get('/readyz')}; iris_auth_paused "
                    f"{await proc.metric('iris_auth_paused', destination='bad')}; "
                    f"token requests {[(r.status, r.error) for r in bad.oauth.requests]}; "
                    f"log tail {proc.log()[-1500:]}")

        await wait_for(lambda: bad.delivered() >= sent, 15, "bad's backlog delivered",
                       backlog_state)
        backlog_in = time.monotonic() - fixed
        await wait_for(proc.ready, 10, "/readyz 200 again",
                       lambda: proc.get("/readyz"))
        ready_in = time.monotonic() - fixed
        await wait_for(lambda: all_delivered(redis, bad.delivered(), sent, [stream_key, out_bad]),
                       10, "nothing pending")
        print(f"B: after auth test: backlog delivered in {backlog_in:.2f} s, /readyz 200 in "
              f"{ready_in:.2f} s; bad token requests {len(bad.oauth.requests)} "
              f"({bad.oauth.ok_requests} ok)")
        await check_promises(redis, stream_key, GROUP,
                             {"bad": bad.partner, "good": good.partner},
                             {"bad": sent, "good": sent})
        assert backlog_in < 10 and ready_in < 10
        assert await proc.metric("iris_auth_paused", destination="bad") == 0
        assert len(bad.oauth.requests) == 2 and bad.oauth.ok_requests == 1  # the CLI's only
        assert {t for _, t in bad.batches} == set(issued)  # the workers used the CLI's token
        assert bad.partner.auth_failures == 0 and bad.partner.problems == []
        assert log_problems(proc.log(), [bad.secret, good.secret, *bad.oauth.all_tokens(),
                                         *good.oauth.all_tokens()]) == []


def token_manager(config: Config, session: aiohttp.ClientSession, redis: aioredis.Redis,
                  clock: FakeClock, consumer: str, *,
                  on_pause: Callable[[str | None], None] | None = None,
                  on_request: Callable[[str], None] = lambda outcome: None,
                  store: type[TokenStore] = TokenStore) -> TokenManager:
    """The token manager of ``config``'s first destination, as a worker builds it, on
    ``clock``: what the fake-clock tests drive in this process."""
    dest = config.destinations[0]
    auth = dest.auth
    assert isinstance(auth, OAuth2Base)
    endpoint = TokenEndpoint(session, dest.timeout, on_request=on_request)
    source = EndpointSource(dest.id, auth, endpoint, dest.allow_http)
    return TokenManager(
        dest.id, source,
        store(redis, config.token_key_prefix, dest.id, fingerprint(auth), clock=clock),
        consumer=consumer, refusal_pause=config.token_store.refusal_pause,
        fresh_token_age=config.token_store.fresh_token_age, on_pause=on_pause, clock=clock)


async def token_work_done() -> None:
    """Wait for the token managers' background work (a look at the store, a token request):
    their tasks are named ``token-<destination>``."""
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("token-")]
    if tasks:
        await asyncio.wait(tasks)


async def test_a_refusal_pause_runs_its_course_on_the_clock(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, sites: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test B's refusal in the token manager itself, against the real token server and
    redis-server, on a fake clock (65 s of pause in well under a second). For 65 s after the
    first refusal the endpoint gets exactly 2 token requests, 60 s apart: the pause, then one
    that doubles it to 120 s, recorded in the token store for every replica. Meanwhile the
    destination asks as a worker does (waits what ``pause_remaining()`` says, at most
    ``PAUSE_RECHECK``, then asks for a credential): every ask is refused for the pause, each
    look at the store is at most ``PAUSE_RECHECK`` after the previous one, it stays paused
    throughout (``on_pause``: paused at each refusal, never resumed), one ERROR per refusal.
    Then another process gets a token (what ``iris auth test`` does): the manager takes it at
    its next look at the store, within ``PAUSE_RECHECK``, and the pause is over."""
    bad = await sites("bad")
    bad.oauth.refuse = "invalid_client"
    config = as_config(worker_config(redis_server.url, stream_key, [bad.destination()]))
    pause = config.token_store.refusal_pause
    clock = FakeClock()
    asked: list[float] = []  # the clock at each token request the server saw
    looks: list[float] = []  # the clock at each look at the stored pause
    outcomes: list[str] = []  # "success" / "error" per token request (the metric's label)
    pauses: list[str | None] = []  # what the destination's readiness was told

    async def token_request(_request: web.Request) -> None:
        asked.append(clock())

    bad.oauth.responder = token_request

    class Store(TokenStore):
        async def paused(self, *, include_expired: bool = False) -> Pause | None:
            if not include_expired:
                looks.append(clock())
            return await super().paused(include_expired=include_expired)

    async with aiohttp.ClientSession() as session:
        def manager(consumer: str, on_pause: Callable[[str | None], None] | None = None,
                    ) -> TokenManager:
            return token_manager(config, session, redis, clock, consumer, on_pause=on_pause,
                                 on_request=outcomes.append, store=Store)

        worker = manager("w1", pauses.append)
        start = clock()
        refusals: list[tuple[float, float, TokenError]] = []  # (clock, waited, what it said)
        with pytest.raises(TokenError) as refused:
            await worker.credential()
        refusals.append((0.0, 0.0, refused.value))
        while clock() < start + 65 and len(refusals) < 100:
            waited = worker.pause_remaining()
            await token_work_done()
            clock.advance(waited)
            with pytest.raises(TokenError) as refused:
                await worker.credential()
            refusals.append((clock() - start, waited, refused.value))
        stored = await stored_pause(redis, stream_key, "bad")
        pause_looks = [t - start for t in looks]

        bad.oauth.refuse = None  # the credentials are fixed
        fixed = clock()
        issued = await manager("auth-test").current()  # another process: `iris auth test`
        credential = await next_credential(worker, clock)
        resumed_in = clock() - fixed
        await worker.close()

    print(f"\nB (fake clock): token requests at {[t - start for t in asked]} s; asks at "
          f"{[(t, w) for t, w, _ in refusals]} (clock, waited); store looked at {pause_looks}; "
          f"stored pause {stored}; resumed {resumed_in} s after the fix; on_pause {pauses}")
    assert asked[:2] == [start, start + pause] and len(asked) == 3, asked
    assert [(r.status, r.error) for r in bad.oauth.requests[:2]] == [(401, "invalid_client")] * 2
    assert outcomes == ["error", "error", "success"], outcomes
    assert clock() - start >= 65
    assert all(e.permanent and e.error == "invalid_client" for _, _, e in refusals), refusals
    assert all(0 < w <= PAUSE_RECHECK for _, w, _ in refusals[1:]), refusals
    assert all(0 < (e.retry_in or 0) <= PAUSE_RECHECK  # paused: when to ask again
               for t, _, e in refusals if t not in (0, pause)), refusals
    assert max(gaps(pause_looks)) <= PAUSE_RECHECK, pause_looks
    assert stored["count"] == 2 and stored["error"] == "invalid_client", stored
    assert stored["until"] == start + pause + 2 * pause, (stored, start)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("invalid_client" in m and "paused" in m for m in errors), (
        errors)
    # lifted: the next look at the store found the other process's token
    assert pauses == [REFUSED, REFUSED, None], pauses
    assert 0 < resumed_in <= PAUSE_RECHECK, resumed_in
    assert credential.header == f"Bearer {issued.access_token}"
    assert worker.last_source == "store" and bad.oauth.ok_requests == 1
    assert [k async for k in redis.scan_iter(f"{stream_key}:auth:bad:*:pause")] == []


async def next_credential(manager: TokenManager, clock: FakeClock) -> Credential:
    """Ask as a worker does (wait what ``pause_remaining()`` says, then ask again) until a
    credential comes; 100 asks at most."""
    for _ in range(100):
        with contextlib.suppress(TokenError):
            return await manager.credential()
        waited = manager.pause_remaining()
        await token_work_done()
        clock.advance(waited)
    raise AssertionError(f"no credential by {clock()}")


async def test_a_partner_refusing_fresh_tokens_costs_one_token_request_per_pause(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, sites: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The token endpoint issues tokens gladly; the partner answers 401 to every one. On a
    fake clock, two requests in flight answer 401 to each token the worker takes:

    - the first token's replacement comes 5 s (``fresh_token_age``) after it was issued;
    - the replacement's refusal pauses the destination 60 s;
    - the token after the pause, refused while as fresh, pauses it again at once: 120 s, then
      240 s. One token request per pause, the pause doubling, as docs/authentication.md says
      (the token after a pause drew a second one 5 s later, and each pause lasted 60 s);
    - no 401 is answered "send again at once": the batch would spend its one refresh on it,
      and be dead-lettered at the next (an operator trial saw 4 events dead-lettered as
      rejected after the first pause, from a batch in flight beside the reporting one).

    Then ``iris auth test`` (another process's ``current()``) lifts the pause within
    ``PAUSE_RECHECK`` and clears the count."""
    site = await sites("fresh")
    config = as_config(worker_config(redis_server.url, stream_key, [site.destination()]))
    pause, fresh_age = config.token_store.refusal_pause, config.token_store.fresh_token_age
    clock = FakeClock()
    asked: list[float] = []  # the clock at each token request the endpoint saw

    async def token_request(_request: web.Request) -> None:
        asked.append(clock())

    site.oauth.responder = token_request
    answers: list[bool] = []  # what refused() said to each 401
    pauses: list[tuple[int, float]] = []  # (count, seconds) of each pause recorded
    async with aiohttp.ClientSession() as session:
        worker = token_manager(config, session, redis, clock, "w1")
        start = clock()
        for _ in range(4):
            credential = await next_credential(worker, clock)
            answers += [await worker.refused(credential), await worker.refused(credential)]
            with contextlib.suppress(AssertionError):  # no pause after the first token
                stored = await stored_pause(redis, stream_key, "fresh")
                if not pauses or stored["count"] != pauses[-1][0]:
                    pauses.append((stored["count"], stored["until"] - clock()))
        clock.advance(worker.pause_remaining())  # its next look at the store drops the
        worker.pause_remaining()                 # refused token there
        await token_work_done()
        tested = clock()
        issued = await token_manager(config, session, redis, clock, "auth-test").current()
        resumed = await next_credential(worker, clock)
        resumed_in = clock() - tested
        await worker.close()

    assert [t - start for t in asked] == [0, fresh_age, fresh_age + pause,
                                          fresh_age + 3 * pause, tested - start], (
        [t - start for t in asked])
    assert answers == [False] * 8, answers
    assert pauses == [(1, pause), (2, 2 * pause), (3, 4 * pause)], pauses
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and all(
        "once the partner accepts the tokens, `iris auth test` resumes deliveries" in e
        for e in errors), errors
    assert resumed.header == f"Bearer {issued.access_token}" and resumed_in <= PAUSE_RECHECK
    assert [k async for k in redis.scan_iter(f"{stream_key}:auth:fresh:*:pause")] == []


async def test_a_replica_joins_the_pause_and_an_accepted_token_ends_the_streak(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, sites: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two replicas on a fake clock, the partner refusing every token:

    - w1 pauses the destination on its fresh replacement; w2, still sending with the first
      token (now 7 s old, so not fresh), gets its 401 after the pause began: it joins the
      pause instead of answering "send again at once", which spent the batch's one refresh;
    - the partner is put right: the first token it accepts after the pause (not an older
      token, which a partner may go on accepting while it refuses new ones) ends the pause's
      record, so a later stray 401 on a fresh token is a new streak (wait ``fresh_token_age``
      for a replacement), not a doubled pause at once."""
    site = await sites("join")
    config = as_config(worker_config(redis_server.url, stream_key, [site.destination()]))
    pause, fresh_age = config.token_store.refusal_pause, config.token_store.fresh_token_age
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        w1 = token_manager(config, session, redis, clock, "w1")
        w2 = token_manager(config, session, redis, clock, "w2")
        first = await w1.credential()
        assert await w2.credential() == first  # taken from the store
        assert await w1.refused(first) is False  # fresh: a replacement in 5 s
        clock.advance(fresh_age)
        replacement = await next_credential(w1, clock)
        assert await w1.refused(replacement) is False  # the replacement, fresh: paused
        clock.advance(2)
        joined = await w2.refused(first)  # 7 s old: not fresh, but the destination is paused
        w2_waits = w2.pause_remaining()
        clock.advance(pause - 2)
        after = await next_credential(w1, clock)  # the pause is over
        w2.accepted(first)  # an old token accepted: no sign the new ones are
        await token_work_done()
        record_after_old = [k async for k in redis.scan_iter(f"{stream_key}:auth:join:*:pause")]
        w1.accepted(after)  # the partner is put right
        await token_work_done()
        record_after_acceptance = [k async for k in
                                   redis.scan_iter(f"{stream_key}:auth:join:*:pause")]
        stray = await w1.refused(after)  # a fresh token refused once more, later
        record_after_stray = [k async for k in
                              redis.scan_iter(f"{stream_key}:auth:join:*:pause")]
        stray_wait = w1.pause_remaining()
        await w1.close()
        await w2.close()

    assert joined is False and 0 < w2_waits <= PAUSE_RECHECK, (joined, w2_waits)
    assert len(record_after_old) == 1 and record_after_acceptance == [], (
        record_after_old, record_after_acceptance)
    assert stray is False and record_after_stray == [] and stray_wait == fresh_age, (
        stray, record_after_stray, stray_wait)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "paused for 60 s" in errors[0], errors
    assert len(site.oauth.requests) == 3, site.oauth.requests


# --------------------------------------------------------------------------- C


async def test_three_processes_and_a_refusal_make_one_token_request(
    redis_server: RedisProcess, redis: aioredis.Redis, stream_key: str, sites: Any,
    tmp_path: Path,
) -> None:
    """Three processes against a token endpoint that refuses the client, for 15 s: one token
    request in all. The one process that made it logs the refusal (ERROR, once); the others
    find the pause in the token store, and every one of them is paused (/readyz, metric)."""
    bad = await sites("bad")
    bad.oauth.refuse = "invalid_client"
    names = ("r1", "r2", "r3")
    workers = [WorkerProcess(worker_config(redis_server.url, stream_key, [bad.destination()],
                                           consumer=n), tmp_path, n) for n in names]
    await start_all(*workers)  # killed by the faults conftest (harness.STARTED) in any case
    for name, proc in zip(names, workers, strict=True):
        bad.peers.add(name, proc.pid)

    async def all_paused() -> bool:
        return all([PAUSED in (await p.get("/readyz"))[1] for p in workers])

    # A trickle, until every process has read a batch of bad's and found it paused.
    async with steady(redis, stream_key, 20, "c") as sent:
        await wait_for(lambda: bad.oauth.requests, 10, "the refusal")
        first = bad.oauth.requests[0].time
        await wait_for(all_paused, 15, "every process paused",
                       lambda: [(n, p.log()[-500:]) for n, p in zip(names, workers, strict=True)])
    all_paused_in = time.monotonic() - first
    await wait_for(lambda: time.monotonic() >= first + 15, 20, "15 s after the refusal")
    requests = list(bad.oauth.requests)
    paused = {n: await p.metric("iris_auth_paused", destination="bad")
              for n, p in zip(names, workers, strict=True)}
    token_errors = {n: await p.metric("iris_token_requests_total", destination="bad",
                                      outcome="error")
                    for n, p in zip(names, workers, strict=True)}
    waiting = await outbound_pairs(redis, f"{stream_key}:out:bad")
    inbound_pending = await group_pending(redis, [stream_key])
    dead = await redis.xrange(f"{stream_key}:dlq")
    for proc in workers:
        proc.kill()

    logs = {n: p.records() for n, p in zip(names, workers, strict=True)}
    errors = {n: [r["message"] for r in rs if r["level"] == "error"] for n, rs in logs.items()}
    saw = {n: [r["message"] for r in rs if "by a refusal another worker saw" in r["message"]]
           for n, rs in logs.items()}
    print(f"\nC: {len(requests)} token request(s) from 3 processes in 15 s (sent by "
          f"{bad.token_senders}); all paused {all_paused_in:.2f} s after the refusal; "
          f"{len(sent)} events sent, {len(waiting)} waiting in batches; iris_auth_paused "
          f"{paused}; token errors {token_errors}")
    assert len(requests) == 1, [(r.time - first, r.status, r.error) for r in requests]
    assert requests[0].error == "invalid_client"
    assert paused == dict.fromkeys(names, 1.0), paused
    assert sorted(token_errors.values()) == [0.0, 0.0, 1.0], token_errors
    [fetcher] = [n for n, v in token_errors.items() if v == 1]
    assert bad.token_senders == [fetcher]
    assert [len(m) for m in errors.values()] == [int(n == fetcher) for n in names], errors
    assert "invalid_client" in errors[fetcher][0] and "paused" in errors[fetcher][0]
    assert all(len(saw[n]) == 1 for n in names if n != fetcher), saw
    assert bad.partner.request_count == 0 and dead == []
    assert waiting == set(sent) and inbound_pending == 0, (  # all batched, none lost
        sorted(set(sent) - waiting)[:5], inbound_pending)
    for proc in workers:
        assert log_problems(proc.log(), [bad.secret]) == []
