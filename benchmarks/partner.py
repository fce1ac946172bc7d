"""The benchmark's partner: several processes on one port, so that it is never the bottleneck.

``python -m benchmarks.partner --procs N`` (run from the repository root) forks N server
processes (``benchmarks/partner_app.py``: the token endpoints and ``POST /segments/<id>``) that
all listen on one loopback port with ``SO_REUSEPORT``, so the kernel spreads the connections
over them, and serves, itself, a small control endpoint on a second port:

- ``POST /reset[?latency=1]``: zero every process's counters for the next phase;
- ``GET /stats[?full=1][&latency=1]``: the counters of all processes added up, as JSON.
  ``unique_users`` adds up each process's distinct users, which is exact unless the same user
  reached two processes; ``full=1`` merges the users themselves (exact, slower: the benchmark
  asks once at the end of a phase), ``latency=1`` adds the latency summary (nearest-rank
  percentiles, milliseconds, from the producer's XADD to receipt).

The parent talks to each server process through a pipe. It prints ``PORT <data> CONTROL
<control> PIDS <pid>,<pid>...`` on stdout once every process listens. Configuration comes from
the environment: ``BENCH_PARTNER_DESTINATIONS`` is a JSON object ``{"<id>": {"client_id": ...,
"client_secret": ...}}`` (secrets through the environment, not argv, so they are not visible in
``ps``). SIGINT is ignored (the benchmark owns these processes); SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also as a script: python benchmarks/partner.py
    sys.path.insert(0, str(ROOT))

from benchmarks.partner_app import PartnerApp  # noqa: E402
from benchmarks.partner_http import PartnerProtocol  # noqa: E402
from benchmarks.process import die_with_parent  # noqa: E402

WARMUP_SECONDS = 2.0
START_TIMEOUT = 20.0


# --------------------------------------------------------------------------- server processes


def serve_child(port: int, key: bytes, clients: dict[str, dict[str, str]],
                conn: Connection) -> None:
    """One server process: the partner app on the shared port, commands from the pipe."""
    die_with_parent()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(port, key, clients, conn))
    else:
        uvloop.run(_serve(port, key, clients, conn))


async def _serve(port: int, key: bytes, clients: dict[str, dict[str, str]],
                 conn: Connection) -> None:
    partner = PartnerApp(key, clients)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: PartnerProtocol(partner.handle), "127.0.0.1",
                                      port, backlog=1024, reuse_port=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def command() -> None:
        os.set_blocking(conn.fileno(), True)  # uvloop's add_reader made it non-blocking
        try:
            what, options = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            stop.set()
            return
        if what == "reset":
            partner.reset(latency=options["latency"])
            conn.send({"ok": True})
        else:
            conn.send(partner.report(full=options["full"], latency=options["latency"]))

    loop.add_reader(conn.fileno(), command)
    conn.send("ready")
    await stop.wait()
    server.close()


# --------------------------------------------------------------------------- the parent


class Pool:
    """The server processes and their pipes; asks all of them at once, adds up the answers."""

    def __init__(self, count: int, clients: dict[str, dict[str, str]]) -> None:
        self.lock = threading.Lock()
        key = os.urandom(32)
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        placeholder.bind(("127.0.0.1", 0))  # holds the port until the servers listen on it
        self.port = placeholder.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        for _ in range(count):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=serve_child, args=(self.port, key, clients, theirs),
                               daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(mine)
        for conn in self.conns:
            if not conn.poll(START_TIMEOUT) or conn.recv() != "ready":
                raise RuntimeError("a partner process did not start")
        placeholder.close()

    def ask(self, what: str, **options: Any) -> list[dict[str, Any]]:
        with self.lock:
            for conn in self.conns:
                conn.send((what, options))
            return [conn.recv() for conn in self.conns]

    def reset(self, latency: bool) -> None:
        self.ask("reset", latency=latency)

    def stats(self, *, full: bool, latency: bool) -> dict[str, Any]:
        return merge(self.ask("stats", full=full, latency=latency), full=full, latency=latency)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def merge(parts: list[dict[str, Any]], *, full: bool, latency: bool) -> dict[str, Any]:
    """One partner's counters out of each process's."""
    out: dict[str, Any] = {key: sum(p[key] for p in parts) for key in (
        "requests", "users", "changes", "unique_users", "unauthorized", "bad_payloads")}
    if full:
        seen: set[str] = set()
        for part in parts:
            seen |= part["seen"]
        out["unique_users"] = len(seen)
    out["unique_exact"] = full or len(parts) == 1
    out["duplicate_users"] = out["users"] - out["unique_users"]
    firsts = [p["first_receipt"] for p in parts if p["first_receipt"] is not None]
    lasts = [p["last_receipt"] for p in parts if p["last_receipt"] is not None]
    out["first_receipt"] = min(firsts, default=None)
    out["last_receipt"] = max(lasts, default=None)
    out["per_destination"] = _add_up([p["per_destination"] for p in parts])
    out["token_requests"] = {d: sum(p["token_requests"][d] for p in parts)
                             for d in parts[0]["token_requests"]}
    out["processes"] = [{"requests": p["requests"], "users": p["users"]} for p in parts]
    if latency and any("latencies" in p for p in parts):
        lat, xadd = array("d"), array("d")
        for part in parts:
            lat.extend(part.get("latencies", ()))
            xadd.extend(part.get("xadd_times", ()))
        out["latency"] = latency_summary(lat)
        if xadd:  # the same without the first seconds (connections, tokens)
            after = min(xadd) + WARMUP_SECONDS
            out["latency_after_warmup"] = latency_summary(array("d", (
                v for v, t in zip(lat, xadd, strict=True) if t >= after)))
            out["latency_after_warmup"]["warmup_s"] = WARMUP_SECONDS
    return out


def _add_up(dicts: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for per in dicts:
        for dest, counts in per.items():
            into = total.setdefault(dest, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                into[key] += value
    return total


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


def control_server(pool: Pool) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, doc: Any) -> None:
            body = orjson.dumps(doc)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/reset":
                self.send_error(404)
                return
            pool.reset(latency=parse_qs(url.query).get("latency") == ["1"])
            self._answer({"ok": True})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/stats":
                self.send_error(404)
                return
            query = parse_qs(url.query)
            self._answer(pool.stats(full=query.get("full") == ["1"],
                                    latency=query.get("latency") == ["1"]))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The benchmark's multi-process HTTP partner.")
    p.add_argument("--procs", type=int, default=max(2, os.cpu_count() or 1),
                   help="server processes on the shared port (default: CPUs, at least 2)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    clients = json.loads(os.environ["BENCH_PARTNER_DESTINATIONS"])
    pool = Pool(max(1, args.procs), clients)
    server = control_server(pool)
    thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
    thread.start()
    pids = ",".join(str(proc.pid) for proc in pool.procs)
    print(f"PORT {pool.port} CONTROL {server.server_address[1]} PIDS {pids}", flush=True)
    try:
        while not stopped.wait(0.5):
            if not all(proc.is_alive() for proc in pool.procs):
                print("a partner process died", file=sys.stderr, flush=True)
                break
    finally:
        server.shutdown()
        pool.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
