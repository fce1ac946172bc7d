"""The phases of a benchmark run, each on a flushed Redis.

- :func:`phase_throughput`: preload N events, start the pipeline (iris worker(s), or the
  FastStream pipeline), time until the partner has every event. Measured: events/s from
  spawning it and from its readiness, its CPU seconds, redis-server's CPU seconds, and Redis
  commands per event from Redis's own counters (``INFO commandstats`` before the pipeline
  starts and after it has stopped: everything it ran, start-up and shutdown included).
- :func:`phase_naive`: one event per XREADGROUP, POST and XACK, for a fixed time window.
- :func:`phase_latency`: a steady offered load; milliseconds from XADD to receipt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.bench import (
    GROUP,
    ROOT,
    STREAM_KEY,
    WORKER_READY_TIMEOUT,
    Bench,
    PhaseFailed,
    Worker,
    tail,
)
from benchmarks.console import progress
from benchmarks.pipelines import (
    PEER_GROUP,
    check_dead_letters,
    finish_iris,
    finish_peer,
    prepare_peer,
    show_profile,
    spawn_iris,
    spawn_peer,
    wait_started,
    write_iris_config,
)
from benchmarks.process import Monitor
from benchmarks.scrape import command_delta, commands_summary

THROUGHPUT_MAX_WAIT = 0.25  # only the tail's partial batches wait for it
PIPELINES = ("iris", "faststream")


def _partner_part(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items()
            if k not in ("per_destination", "latency", "latency_after_warmup")}


def phase_throughput(bench: Bench, name: str, *, pipeline: str, events: int, workers: int,
                     max_users: int) -> dict[str, Any]:
    """``events`` preloaded, then ``pipeline`` ("iris" or "faststream") delivers them all."""
    assert pipeline in PIPELINES
    bench.fresh()
    progress(f"{name}: preloading {events:,} events over {len(bench.dest_ids)} destinations")
    preload_s = bench.preload(events)
    bench.partner_reset()
    if pipeline == "iris":
        config = write_iris_config(bench, name, max_users=max_users,
                                   max_wait=THROUGHPUT_MAX_WAIT)
    else:
        prepare_peer(bench)
    progress(f"{name}: preloaded in {preload_s:.1f} s; starting {workers} {pipeline} "
             f"worker(s) (max_users {max_users})")
    before = bench.commands()
    t0 = time.time()
    if pipeline == "iris":
        procs = spawn_iris(bench, config, name, workers)
    else:
        procs = [spawn_peer(bench, name, max_users=max_users)]
    monitor = Monitor(bench.roles(procs)).start()
    try:
        stats = bench.wait_received(events, procs)
    finally:
        cpu = monitor.stop()
    bench.check_load(name, cpu)
    ready_at = max((w.ready_at for w in procs if w.ready_at is not None), default=None)
    end = stats["last_receipt"]
    elapsed = end - t0
    if pipeline == "iris":
        finished = finish_iris(bench, procs, name)
    else:
        finished = finish_peer(bench, procs[0], name)
    commands = commands_summary(command_delta(before, bench.commands()), events)
    if pipeline == "iris":
        check_dead_letters(bench, name)
    pending = bench.pending(GROUP if pipeline == "iris" else PEER_GROUP)
    if pending:
        bench.warn(f"{name}: {pending} entries of the inbound stream are still pending")
    bench.check_partner(name, stats, events)
    if bench.args.profile is not None and name == bench.args.profile_phase:
        bench.warn(f"{name}: the worker ran under cProfile, which slows it down: its figures "
                   "are not comparable with an unprofiled run")
        show_profile(bench.args.profile)
    result = _throughput_result(bench, name, pipeline=pipeline, events=events, procs=procs,
                                max_users=max_users, elapsed=elapsed, t0=t0, ready_at=ready_at,
                                stats=stats, cpu=cpu)
    result.update({
        "preload_s": round(preload_s, 2), "redis_commands": commands,
        "pending_after": pending, "max_rss_mb": max(finished["rss_mb"]),
        "rss_mb": finished["rss_mb"], "max_rss_polled_mb": round(monitor.peak_rss_mb, 1),
        "cpu": cpu, "cpu_samples": monitor.samples,
    })
    if "metrics" in finished:
        result["iris_metrics"] = finished["metrics"]
    progress(f"{name}: {events:,} events in {elapsed:.2f} s = {result['events_per_s']:,.0f} "
             f"events/s, {result['requests_per_s']:,.0f} requests/s, "
             f"{result['users_per_request']} users/request, worker CPU "
             f"{result['worker_cpu_s']:.2f} s, redis CPU {result['redis_cpu_s']:.2f} s, "
             f"{commands['per_event']} Redis commands/event, peak RSS "
             f"{result['max_rss_mb']:.0f} MB")
    return result


def _throughput_result(bench: Bench, name: str, *, pipeline: str, events: int,
                       procs: list[Worker], max_users: int, elapsed: float, t0: float,
                       ready_at: float | None, stats: dict[str, Any], cpu: dict[str, Any],
                       ) -> dict[str, Any]:
    end = stats["last_receipt"]
    requests = stats["requests"]
    worker_cpu = cpu["worker"]["cpu_s"]
    startup_cpu = [w.ready_cpu_s for w in procs if w.ready_cpu_s is not None]
    return {
        "phase": name, "pipeline": pipeline, "events": events, "workers": len(procs),
        "max_users": max_users, "read_count": bench.args.read_count,
        **({"max_wait": THROUGHPUT_MAX_WAIT, "max_in_flight": bench.args.max_in_flight}
           if pipeline == "iris" else {}),
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed, 1),
        "requests": requests, "requests_per_s": round(requests / elapsed, 1),
        "users_per_request": round(stats["users"] / requests, 1) if requests else 0,
        "startup_s": round(ready_at - t0, 3) if ready_at else None,
        "first_receipt_s": round(stats["first_receipt"] - t0, 3),
        "events_per_s_after_ready": (round(events / (end - ready_at), 1)
                                     if ready_at and end > ready_at else None),
        "worker_cpu_s": worker_cpu,
        "worker_startup_cpu_s": round(sum(startup_cpu), 2) if startup_cpu else None,
        "events_per_worker_cpu_s": round(events / worker_cpu, 1) if worker_cpu > 0 else None,
        "redis_cpu_s": cpu["redis"]["cpu_s"],
        "partner": _partner_part(stats),
    }


def phase_naive(bench: Bench) -> dict[str, Any]:
    name, events = "naive", bench.args.naive_events
    bench.fresh()
    progress(f"{name}: preloading {events:,} events; one POST per event for up to "
             f"{bench.args.naive_seconds:g} s")
    bench.preload(events)
    bench.partner_reset()
    spec = {
        "redis_port": bench.redis_proc.port, "partner_port": bench.partner_port,
        "key": STREAM_KEY, "group": GROUP, "seconds": bench.args.naive_seconds,
        "segments": bench.segments, "secrets": bench.secrets,
    }
    env = {**os.environ, "BENCH_NAIVE_SPEC": json.dumps(spec)}
    log_path = bench.tmp / "naive.log"
    with open(log_path, "wb") as log:
        proc = bench.children.spawn(
            [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--naive-child"], cwd=ROOT,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdin is not None and proc.stdout is not None
    # The child says READY once connected and holding its tokens, and stays alive after
    # its result line until we close its stdin: the CPU window is exactly its loop.
    if proc.stdout.readline().strip() != b"READY":
        bench.children.stop(proc)
        raise PhaseFailed(f"the naive loop did not start:\n{tail(log_path)}")
    monitor = Monitor(bench.roles([], {"naive": [proc.pid]})).start()
    try:
        line = proc.stdout.readline()
    finally:
        cpu = monitor.stop()
        proc.stdin.close()
        bench.children.stop(proc)
    bench.check_load(name, cpu)
    if not line:
        raise PhaseFailed(f"the naive loop exited with {proc.returncode}:\n{tail(log_path)}")
    loop = json.loads(line)
    stats = bench.partner_stats(full=True)
    if loop["errors"]:
        bench.warn(f"{name}: {loop['errors']} POSTs were not answered 200")
    bench.check_partner(name, stats, loop["events"])
    rate = loop["events"] / loop["seconds"] if loop["seconds"] > 0 else 0.0
    progress(f"{name}: {loop['events']:,} events in {loop['seconds']:.2f} s = "
             f"{rate:,.0f} events/s")
    return {"phase": name, "events": loop["events"], "seconds": round(loop["seconds"], 3),
            "events_per_s": round(rate, 1), "requests_per_s": round(rate, 1),
            "users_per_request": 1.0, "cpu": cpu, "cpu_samples": monitor.samples,
            "partner": _partner_part(stats)}


def phase_latency(bench: Bench) -> dict[str, Any]:
    name, rate, seconds = "latency", bench.args.rate, bench.args.latency_seconds
    max_wait = bench.args.latency_max_wait
    bench.fresh()
    bench.partner_reset(latency=True)
    config = write_iris_config(bench, name, max_users=1000, max_wait=max_wait)
    procs = spawn_iris(bench, config, name, 1)
    wait_started(bench, procs, time.monotonic() + WORKER_READY_TIMEOUT)
    progress(f"{name}: offering {rate:,.0f} events/s for {seconds:g} s "
             f"(max_users 1000, max_wait {max_wait:g} s)")
    monitor = Monitor(bench.roles(procs)).start()
    try:
        produced, offered_s = produce(bench, rate, seconds)
        stats = bench.wait_received(produced, procs, timeout=max_wait + 30)
    finally:
        cpu = monitor.stop()
    bench.check_load(name, cpu)
    stats = bench.partner_stats(latency=True, full=True)
    finished = finish_iris(bench, procs, name)
    check_dead_letters(bench, name)
    bench.check_partner(name, stats, produced)
    lat = stats["latency"]
    progress(f"{name}: {produced:,} events at {produced / offered_s:,.0f}/s: p50 "
             f"{lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms")
    return {"phase": name, "events": produced, "workers": 1, "rate_offered": rate,
            "rate_achieved": round(produced / offered_s, 1), "seconds": round(offered_s, 2),
            "max_wait": max_wait, "max_users": 1000, "latency": lat,
            "latency_after_warmup": stats.get("latency_after_warmup"),
            "requests": stats["requests"],
            "requests_per_s": round(stats["requests"] / offered_s, 1),
            "users_per_request": (round(stats["users"] / stats["requests"], 1)
                                  if stats["requests"] else 0),
            "max_rss_mb": max(finished["rss_mb"]), "cpu": cpu,
            "cpu_samples": monitor.samples, "partner": _partner_part(stats),
            "iris_metrics": finished["metrics"]}


def produce(bench: Bench, rate: float, seconds: float) -> tuple[int, float]:
    """XADD at ``rate``/s, a pipeline every 5 ms; each uuid starts with its XADD time (µs)."""
    tick = 0.005
    pipe = bench.redis.pipeline(transaction=False)
    sent = 0
    start = time.perf_counter()
    while True:
        now = time.perf_counter()
        elapsed = now - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - sent
        if due > 0:
            t_us = int(time.time() * 1_000_000)
            for seq in range(sent, sent + due):
                pipe.execute_command(*bench.event(seq, f"{t_us:016d}{seq:022d}"))
            pipe.execute()
            sent += due
        time.sleep(max(0.0, tick - (time.perf_counter() - now)))
    return sent, time.perf_counter() - start
