"""The pipelines under test, started and stopped as they run in production.

- **iris**: ``python -m iris run -c CONFIG`` worker processes; the config is written here (and
  validated as ``iris check-config`` would); ready when ``/readyz`` says 200; at the end its
  ``/metrics`` say whether the run was clean, and SIGTERM drains it.
- **FastStream**: ``python -m benchmarks.faststream_peer``, one process (its consumer group is
  created at ``0`` first, as an operator would before pointing it at a stream with a backlog).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench import (
    CLIENT_ID,
    GROUP,
    ROOT,
    STREAM_KEY,
    USER_DPID,
    Bench,
    PhaseFailed,
    Worker,
    tail,
)
from benchmarks.console import progress
from benchmarks.iris_api import free_port, load_config
from benchmarks.process import status_mb
from benchmarks.scrape import http_text, scrape_metrics

IRIS_LOG_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
PEER_LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")  # FastStream colours
PEER_GROUP = "faststream"
READ_BLOCK_MS = 1000  # both pipelines block this long on an empty stream


# --------------------------------------------------------------------------- iris


def write_iris_config(bench: Bench, name: str, *, max_users: int, max_wait: float) -> Path:
    a = bench.args
    destinations = []
    for d in bench.dest_ids:
        secret_file = bench.tmp / f"secret-{d}"
        secret_file.write_text(bench.secrets[d])
        secret_file.chmod(0o600)
        destinations.append({
            "id": d, "url": f"{bench.partner_url}/segments/{d}",
            "user_dpid": USER_DPID, "client_id": CLIENT_ID, "segments": bench.segments[d],
            "allow_http": True,
            "auth": {"type": "oauth2_client_credentials",
                     "token_url": f"{bench.partner_url}/oauth2/{d}/token",
                     "client_id": f"bench-{d}", "client_secret_file": str(secret_file)},
            "batch": {"max_users": max_users, "max_bytes": 1_000_000, "max_wait": max_wait},
            "limits": {"requests_per_second": a.requests_per_second,
                       "max_in_flight": a.max_in_flight},
            "timeout": 30,
        })
    config = {
        "redis": {"url": bench.redis_proc.url},
        "stream": {"key": STREAM_KEY, "group": GROUP, "consumer": "${IRIS_BENCH_CONSUMER}",
                   "read_count": a.read_count, "block_ms": READ_BLOCK_MS,
                   "claim_idle_ms": 60000},
        "http": {"listen": "127.0.0.1:${IRIS_BENCH_HTTP_PORT}"},
        "shutdown_timeout": 5,
        "destinations": destinations,
    }
    path = bench.tmp / f"iris-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # what `iris check-config -c` does; fails here, with the key named, not in the worker
    load_config(path, env={"IRIS_BENCH_CONSUMER": "check", "IRIS_BENCH_HTTP_PORT": "1"})
    return path


def spawn_iris(bench: Bench, config: Path, name: str, count: int) -> list[Worker]:
    workers = []
    for index in range(count):
        port = free_port()
        env = {**os.environ, "IRIS_BENCH_CONSUMER": f"bench-{name}-{index}",
               "IRIS_BENCH_HTTP_PORT": str(port), "PYTHONPATH": str(bench.iris_root)}
        env.pop("PYTHONSAFEPATH", None)  # it would leave the build's folder off sys.path
        log_path = bench.tmp / f"worker-{name}-{index}.log"
        argv = [sys.executable, "-m", "iris", "run", "-c", str(config)]
        if bench.args.profile is not None and name == bench.args.profile_phase:
            # cProfile writes its file when iris exits (it does, with 0, on SIGTERM)
            argv[1:1] = ["-m", "cProfile", "-o", str(bench.args.profile)]
        with open(log_path, "wb") as log:
            # from its folder: ``-m iris`` imports the build there (compiled, by default)
            proc = bench.children.spawn(argv, cwd=bench.iris_root, env=env,
                                        stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)
        workers.append(Worker(proc, log_path, port=port))
    return workers


def finish_iris(bench: Bench, workers: list[Worker], name: str) -> dict[str, Any]:
    """Peak RSS, metrics, then SIGTERM; and every warning the workers logged (no Redis)."""
    out: dict[str, Any] = {"rss_mb": [], "metrics": []}
    for w in workers:
        out["rss_mb"].append(round(status_mb(w.proc.pid, "VmHWM") or 0.0, 1))
        try:
            out["metrics"].append(scrape_metrics(http_text(w.metrics_url)))
        except OSError as exc:
            out["metrics"].append({"error": str(exc)})
    out["exit_codes"] = [bench.children.stop(w.proc) for w in workers]
    _check_exits(bench, workers, out["exit_codes"], name, IRIS_LOG_PROBLEM)
    _check_build(bench, workers, name)
    for m in out["metrics"]:
        bad = {c: n for c, n in m.get("requests_by_code", {}).items() if c != "200"}
        if bad or m.get("dead_lettered") or m.get("retries"):
            bench.warn(f"{name}: non-200 requests {bad}, retries {m.get('retries')}, "
                       f"dead-lettered {m.get('dead_lettered')}")
    return out


def _check_build(bench: Bench, workers: list[Worker], name: str) -> None:
    """Each worker's ``started`` line says what it ran: the build measured, or a warning."""
    count = bench.compiled_count
    wanted = f"mypyc: {count} modules compiled" if count else "pure Python"
    for w in workers:
        if f"; {wanted})" not in tail(w.log, 10_000):
            bench.warn(f"{name}: worker {w.proc.pid} did not say it ran {wanted!r}: its figures "
                       "are not those of the build named above")


def check_dead_letters(bench: Bench, name: str) -> None:
    """After the Redis counters are read: this is a command of ours, not the worker's."""
    dlq = bench.redis.xlen(f"{STREAM_KEY}:dlq")
    if dlq:
        bench.warn(f"{name}: {dlq} entries in the dead-letter stream")


def show_profile(path: Path, top: int = 25) -> None:
    """The profile's top functions by own time, on stderr."""
    import io
    import pstats

    if not path.exists():
        progress(f"no profile was written to {path}")
        return
    text = io.StringIO()
    pstats.Stats(str(path), stream=text).sort_stats("tottime").print_stats(top)
    progress(f"worker profile written to {path} (view: python -m pstats {path}); "
             f"top {top} by own time:")
    print(text.getvalue(), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- FastStream


def prepare_peer(bench: Bench) -> None:
    """The consumer group, at the start of the stream (FastStream would create it at ``$``)."""
    bench.redis.xgroup_create(STREAM_KEY, PEER_GROUP, id="0", mkstream=True)


def spawn_peer(bench: Bench, name: str, *, max_users: int) -> Worker:
    ready_file = bench.tmp / f"faststream-{name}.ready"
    ready_file.unlink(missing_ok=True)
    spec = {
        "redis_url": bench.redis_proc.url, "stream": STREAM_KEY, "group": PEER_GROUP,
        "consumer": f"bench-{name}", "max_users": max_users, "read_count": bench.args.read_count,
        "block_ms": READ_BLOCK_MS, "ready_file": str(ready_file),
        "destinations": {d: {
            "segments": bench.segments[d], "url": f"{bench.partner_url}/segments/{d}",
            "token_url": f"{bench.partner_url}/oauth2/{d}/token",
            "client_id": f"bench-{d}", "client_secret": bench.secrets[d],
            "user_dpid": USER_DPID, "client_id_aam": CLIENT_ID,
        } for d in bench.dest_ids},
    }
    env = {**os.environ, "BENCH_PEER_SPEC": json.dumps(spec)}
    log_path = bench.tmp / f"faststream-{name}.log"
    with open(log_path, "wb") as log:
        proc = bench.children.spawn([sys.executable, "-m", "benchmarks.faststream_peer"],
                                    cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
    return Worker(proc, log_path, ready_file=ready_file)


def finish_peer(bench: Bench, worker: Worker, name: str) -> dict[str, Any]:
    """Peak RSS, then SIGTERM (FastStream stops gracefully); and what it logged."""
    rss = round(status_mb(worker.proc.pid, "VmHWM") or 0.0, 1)
    code = bench.children.stop(worker.proc)
    _check_exits(bench, [worker], [code], name, PEER_LOG_PROBLEM)
    return {"rss_mb": [rss], "exit_codes": [code]}


def _check_exits(bench: Bench, workers: list[Worker], codes: list[int | None], name: str,
                 problem: re.Pattern[str]) -> None:
    for w, code in zip(workers, codes, strict=True):
        if code != 0:
            bench.warn(f"{name}: worker {w.proc.pid} exited with {code} (log {w.log})")
        problems = [line for line in w.log.read_text(errors="replace").splitlines()
                    if problem.search(line)]
        if problems:
            bench.warn(f"{name}: the worker logged {len(problems)} warning/error line(s), "
                       f"first: {problems[0][:300]}")


def wait_started(bench: Bench, workers: list[Worker], deadline: float) -> None:
    """Until every worker is ready; fail if one exits first."""
    while bench.wait_ready(workers, deadline) is None:
        for w in workers:
            if w.proc.poll() is not None:
                raise PhaseFailed(f"the worker exited:\n{tail(w.log)}")
        time.sleep(0.02)
