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
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml
from aiohttp import web

from iris.config.model import load_config
from iris.runtime.worker import Worker
from iris_demo.localredis import RedisProcess, free_port
from iris_demo.partner import PartnerServer, ReceivedBatch
from iris_demo.servers import LocalServer
from iris_demo.tls import make_tls
from iris_demo.token_server import TokenServer

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

    def destination_configs(self, base_url: str, directory: Path) -> list[dict[str, object]]:
        """Each destination, its CA and client secret in files under ``directory``."""
        secrets_dir = directory / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True)
        dests: list[dict[str, object]] = []
        for dest_id, dpid, client_id, segments, path in DESTINATIONS:
            secret = secrets_dir / f"partner-{dest_id}"
            secret.write_text(self.secrets[dest_id] + "\n")
            secret.chmod(0o600)
            dests.append({
                "id": dest_id, "url": base_url + path, "user_dpid": dpid, "client_id": client_id,
                "segments": segments, "ca_file": str(directory / "ca.pem"),
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": base_url + self.tokens[dest_id].path,
                    "client_id": self.tokens[dest_id].client_id,
                    "client_secret_file": str(secret),
                },
                "batch": {"max_users": 10, "max_wait": 1.0},
            })
        return dests


def write_config(directory: Path, redis_url: str, metrics_port: int,
                 destinations: list[dict[str, object]]) -> Path:
    """The demo's config as a file (what the demo runs): a starting point for one's own."""
    path = directory / "iris.yaml"
    path.write_text("# Written by `iris demo`: the configuration the demo is running. While it\n"
                    "# runs, try: iris status -c " + str(path) + "\n" + yaml.safe_dump({
                        "redis": {"url": redis_url},
                        "stream": {"consumer": "demo"},
                        "http": {"listen": f"127.0.0.1:{metrics_port}"},
                        "shutdown_timeout": 5,
                        "destinations": destinations,
                    }, sort_keys=False))
    return path


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
                   on_stop: Callable[[Callable[[], None]], None],
                   config_dir: Path | None = None) -> None:
    """Run everything until a stop; the config it runs is written to ``config_dir`` (kept
    afterwards) or to a temporary folder."""
    stop = asyncio.Event()
    on_stop(stop.set)
    if duration is not None:
        asyncio.get_running_loop().call_later(duration, stop.set)
    with tempfile.TemporaryDirectory(prefix="iris-demo-") as tmp:
        directory = (config_dir or Path(tmp)).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        redis = RedisProcess().start()
        server = LocalServer()
        try:
            partner = DemoPartner()
            tls = make_tls(Path(tmp) / "tls")
            shutil.copy(tls.ca_file, directory / "ca.pem")
            base = await server.start(partner.app, ssl_context=tls.server_context())
            path = write_config(directory, redis.url, free_port(),
                                partner.destination_configs(base, directory))
            config = load_config(path, env={})
            worker = Worker(config)
            worker_task = asyncio.create_task(worker.run(), name="worker")
            say(f"iris demo: redis-server on port {redis.port}, HTTPS mock partner at {base}")
            say(f"iris demo: metrics at http://127.0.0.1:{config.http.host_port[1]}/metrics "
                f"(also /healthz, /readyz); Ctrl-C stops everything")
            if config_dir is not None:
                say(f"iris demo: the config it runs is {path}; while it runs, try "
                    f"`iris status -c {config_dir / 'iris.yaml'}`")
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
