"""``iris demo``: the whole pipeline on one machine, with nothing but the venv and redis-server.

A private redis-server on a free port, an HTTPS mock partner (self-signed CA) with two
destinations and seed-000 token endpoints, the worker, and a steady trickle of sample events.
What the partner receives is printed as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from iris.config import Config, parse_config
from iris.demo.partner import PartnerServer, ReceivedBatch
from iris.demo.servers import LocalServer
from iris.demo.tls import make_tls
from iris.demo.token_server import TokenServer
from iris.localredis import RedisProcess, free_port
from iris.worker import Worker

DESTINATIONS = (  # id, User_DPID, Client_ID, segments, path
    ("423", "12345", "74323", ["*"], "/segments/aam"),
    ("777", "55501", "74323", ["14356", "14357"], "/v2/audiences"),
)
SEGMENTS = ["14356", "14357", "20001", "20002"]
STATS_EVERY = 5.0


def say(text: str) -> None:
    print(text, flush=True)


class DemoPartner:
    """The mock partner's side: one HTTPS server hosting every destination and token endpoint."""

    def __init__(self) -> None:
        self.tokens: dict[str, TokenServer] = {}
        self.partners: dict[str, PartnerServer] = {}
        self.secrets = {dest_id: secrets.token_urlsafe(24) for dest_id, *_ in DESTINATIONS}
        app = web.Application()
        for dest_id, dpid, client_id, _, path in DESTINATIONS:
            tokens = TokenServer(client_id=f"iris-demo-{dest_id}",
                                 client_secret=self.secrets[dest_id], ttl=30, gzip=True,
                                 path=f"/oauth2/{dest_id}/token")
            partner = PartnerServer(destination_id=dest_id, user_dpid=dpid, client_id=client_id,
                                    tokens=tokens, path=path, on_batch=self._show)
            app.add_routes(tokens.routes() + partner.routes())
            self.tokens[dest_id], self.partners[dest_id] = tokens, partner
        self.app = app
        self._token_counts: dict[str, int] = {}

    def _show(self, batch: ReceivedBatch) -> None:
        payload = batch.payload
        dest = payload["AAM_Destination_Id"]
        users = payload["Users"]
        changes = sum(len(u["Segments"]) for u in users)
        sample = users[0]
        seg = sample["Segments"][0]
        say(f"partner {dest}: batch of {payload['User_count']} users, {changes} segment changes"
            f"  e.g. {sample['AAM_UUID'][:12]}… segment {seg['Segment_ID']} status "
            f"{seg['Status']} at {seg['DateTime']}")
        issued = self.tokens[dest].ok_requests
        if issued != self._token_counts.get(dest):
            self._token_counts[dest] = issued
            say(f"partner {dest}: token requests so far: {issued} (client credentials, gzip)")

    def destination_configs(self, base_url: str, ca_file: Path) -> list[dict[str, object]]:
        return [
            {
                "id": dest_id, "url": base_url + path, "user_dpid": dpid, "client_id": client_id,
                "segments": segments, "ca_file": str(ca_file),
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": base_url + self.tokens[dest_id].path,
                    "client_id": self.tokens[dest_id].client_id,
                    "client_secret": self.secrets[dest_id],
                },
                "batch": {"max_users": 10, "max_wait": 1.0},
            }
            for dest_id, dpid, client_id, segments, path in DESTINATIONS
        ]


def demo_config(redis_url: str, metrics_port: int, destinations: list[dict[str, object]]) -> Config:
    return parse_config({
        "redis": {"url": redis_url},
        "stream": {"consumer": "demo"},
        "http": {"listen": f"127.0.0.1:{metrics_port}"},
        "shutdown_timeout": 5,
        "destinations": destinations,
    }, env={})


async def produce(worker: Worker, rate: float, stop: asyncio.Event) -> None:
    """A steady trickle of sample events, some with two partner ids (fan-out)."""
    rng = random.Random()
    users = [f"{rng.getrandbits(120):036d}"[:38] for _ in range(200)]
    while not stop.is_set():
        uuid = rng.choice(users)
        fields = {"uuid": uuid, "segment": rng.choice(SEGMENTS), "status": rng.choice("1110")}
        if rng.random() < 0.5:
            fields["dpuuid"] = f"dp{uuid[-10:]}"
        else:
            fields["dpuuids"] = f'{{"12345": "dp{uuid[-10:]}", "55501": "x{uuid[-8:]}"}}'
        with contextlib.suppress(Exception):
            await worker.streams.add(fields)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1 / rate)


async def report(worker: Worker, stop: asyncio.Event) -> None:
    metrics = worker.metrics.registry
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATS_EVERY)
        consumed = metrics.get_sample_value("iris_events_consumed_total") or 0
        delivered = {d.id: metrics.get_sample_value("iris_events_delivered_total",
                                                    {"destination": d.id}) or 0
                     for d in worker.config.destinations}
        say(f"-- iris: {consumed:.0f} events consumed; delivered per destination: "
            + ", ".join(f"{k}={v:.0f}" for k, v in delivered.items()))


async def run_demo(rate: float, duration: float | None,
                   on_stop: Callable[[Callable[[], None]], None]) -> None:
    stop = asyncio.Event()
    on_stop(stop.set)
    if duration is not None:
        asyncio.get_running_loop().call_later(duration, stop.set)
    with tempfile.TemporaryDirectory(prefix="iris-demo-") as tmp:
        redis = RedisProcess().start()
        server = LocalServer()
        try:
            partner = DemoPartner()
            tls = make_tls(Path(tmp))
            base = await server.start(partner.app, ssl_context=tls.server_context())
            config = demo_config(redis.url, free_port(),
                                 partner.destination_configs(base, tls.ca_file))
            worker = Worker(config)
            worker_task = asyncio.create_task(worker.run(), name="worker")
            say(f"iris demo: redis-server on port {redis.port}, HTTPS mock partner at {base}")
            say(f"iris demo: metrics at http://127.0.0.1:{config.http.host_port[1]}/metrics "
                f"(also /healthz, /readyz); Ctrl-C stops everything")
            while worker.health.starting and not worker_task.done():
                await asyncio.sleep(0.05)
            helpers = [asyncio.create_task(produce(worker, rate, stop), name="produce"),
                       asyncio.create_task(report(worker, stop), name="report")]
            stopped = asyncio.create_task(stop.wait(), name="wait-stop")
            await asyncio.wait([stopped, worker_task], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            say("iris demo: stopping…")
            await asyncio.gather(*helpers)
            worker.request_stop()
            await worker_task
        finally:
            await server.stop()
            redis.stop()
    say("iris demo: stopped cleanly")
