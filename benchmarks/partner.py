"""The benchmark's partner: a cheap keep-alive HTTP endpoint that counts what it receives.

Runs as its own process (``python benchmarks/partner.py``) so that its CPU is not the
benchmark's or the worker's. One aiohttp server (uvloop when installed) hosts, per destination:

- ``POST /oauth2/<id>/token`` — seed 000's client-credentials token endpoint
  (``iris.demo.token_server.TokenServer``: POST, Basic client auth, form body);
- ``POST /segments/<id>`` — checks ``Authorization: Bearer <token>`` against the tokens issued
  for that destination, parses the standard payload with orjson, and counts requests, users,
  segment changes and distinct users (so duplicates are visible).

When latency recording is on (``POST /reset?latency=1``) the first 16 digits of each AAM_UUID are
read as the producer's XADD time in epoch microseconds, and ``time.time()`` at receipt minus that
is recorded once per segment change.

- ``POST /reset[?latency=1]`` — zero the counters for the next phase;
- ``GET /stats[?latency=1]`` — the counters as JSON (with the latency summary when asked:
  sorting is not free, so the benchmark's frequent polls leave it out).

It prints ``PORT <n>`` on stdout once it listens. Configuration comes from the environment:
``BENCH_PARTNER_DESTINATIONS`` is a JSON object ``{"<id>": {"client_id": ..., "client_secret":
...}}`` (secrets through the environment, not argv, so they are not visible in ``ps``).
SIGINT is ignored (the benchmark owns this process's lifetime); SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from array import array
from typing import Any

import orjson
from aiohttp import web

from iris.demo.token_server import TokenServer

WARMUP_SECONDS = 2.0


class Counters:
    """What one phase received."""

    def __init__(self, destinations: list[str], latency: bool) -> None:
        self.latency = latency
        self.started = time.time()
        self.per_dest = {d: {"requests": 0, "users": 0, "changes": 0} for d in destinations}
        self.requests = 0
        self.users = 0
        self.changes = 0
        self.seen: set[str] = set()
        self.first: float | None = None
        self.last: float | None = None
        self.unauthorized = 0
        self.bad = 0
        self.latencies = array("d")
        self.xadd_times = array("d")  # parallel to latencies

    def summary(self, with_latency: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests, "users": self.users, "changes": self.changes,
            "unique_users": len(self.seen), "duplicate_users": self.users - len(self.seen),
            "first_receipt": self.first, "last_receipt": self.last,
            "unauthorized": self.unauthorized, "bad_payloads": self.bad,
            "per_destination": self.per_dest,
        }
        if self.latency and with_latency:
            out["latency"] = latency_summary(self.latencies)
            if self.xadd_times:  # the same without the first seconds (connections, tokens)
                after = min(self.xadd_times) + WARMUP_SECONDS
                out["latency_after_warmup"] = latency_summary(array("d", (
                    lat for lat, t in zip(self.latencies, self.xadd_times, strict=True)
                    if t >= after)))
                out["latency_after_warmup"]["warmup_s"] = WARMUP_SECONDS
        return out


def latency_summary(values: array) -> dict[str, Any]:
    """Nearest-rank percentiles in milliseconds."""
    data = sorted(values)
    n = len(data)
    if not n:
        return {"count": 0}

    def pct(p: float) -> float:
        rank = max(1, -(-n * p // 100))  # ceil(n * p / 100), at least 1
        return round(data[int(rank) - 1] * 1000, 2)

    return {"count": n, "min_ms": round(data[0] * 1000, 2), "p50_ms": pct(50),
            "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
            "max_ms": round(data[-1] * 1000, 2), "mean_ms": round(sum(data) / n * 1000, 2)}


class Partner:
    def __init__(self, destinations: dict[str, dict[str, str]]) -> None:
        self.tokens = {
            dest: TokenServer(client_id=conf["client_id"], client_secret=conf["client_secret"],
                              ttl=3600, path=f"/oauth2/{dest}/token")
            for dest, conf in destinations.items()
        }
        self.counters = Counters(list(destinations), latency=False)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for server in self.tokens.values():
            app.add_routes(server.routes())
        app.add_routes([
            web.post("/segments/{dest}", self.segments),
            web.post("/reset", self.reset),
            web.get("/stats", self.stats),
        ])
        return app

    async def segments(self, request: web.Request) -> web.Response:
        c = self.counters
        body = await request.read()
        now = time.time()
        dest = request.match_info["dest"]
        tokens = self.tokens.get(dest)
        auth = request.headers.get("Authorization", "")
        if tokens is None or not auth.startswith("Bearer ") or not tokens.is_valid(auth[7:]):
            c.unauthorized += 1
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            payload = orjson.loads(body)
            users = payload["Users"]
            if payload["AAM_Destination_Id"] != dest or payload["User_count"] != str(len(users)):
                raise ValueError("envelope does not match")
            changes = 0
            seen = c.seen
            for user in users:
                n = len(user["Segments"])
                changes += n
                uuid = user["AAM_UUID"]
                seen.add(uuid)
                if c.latency:
                    sent = int(uuid[:16]) / 1e6
                    for _ in range(n):
                        c.latencies.append(now - sent)
                        c.xadd_times.append(sent)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            c.bad += 1
            return web.Response(status=400, text="bad payload")
        c.requests += 1
        c.users += len(users)
        c.changes += changes
        per = c.per_dest[dest]
        per["requests"] += 1
        per["users"] += len(users)
        per["changes"] += changes
        if c.first is None:
            c.first = now
        c.last = now
        return web.Response(status=200)

    async def reset(self, request: web.Request) -> web.Response:
        latency = request.query.get("latency") == "1"
        self.counters = Counters(list(self.tokens), latency=latency)
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        out = self.counters.summary(with_latency=request.query.get("latency") == "1")
        out["token_requests"] = {d: t.ok_requests for d, t in self.tokens.items()}
        return web.Response(body=orjson.dumps(out), content_type="application/json")


async def serve() -> None:
    destinations = json.loads(os.environ["BENCH_PARTNER_DESTINATIONS"])
    partner = Partner(destinations)
    runner = web.AppRunner(partner.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
