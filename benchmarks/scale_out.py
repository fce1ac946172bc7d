"""``--scale-out K1,K2,...``: K iris workers against one redis-server, then K workers against a
private Redis Cluster of ``--cluster-masters`` M masters, for each K, in one table.

- **redis**: exactly phase 7 (``phase_throughput`` with K workers in one group): one inbound
  stream, today's keys.
- **cluster**: a :class:`~iris_demo.localcluster.LocalCluster` (M masters, no replicas, started
  once, flushed before each run); iris runs with ``redis.cluster: true`` and
  ``stream.partitions: P``, P = max(8, 2 × max K), so every worker has partitions to read on
  every master. The preload XADDs each event to its partition's inbound stream
  (``iris.core.partitions``: crc32 of its uuid mod P), through redis-py's cluster pipeline
  (one pipeline per node). Redis CPU is per node, and commands per event are INFO commandstats
  summed over the masters.

Both measure the same way: events/s from spawning the workers (and from their readiness) to
the partner's last receipt, CPU seconds of the workers, the partner and each redis-server.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

import redis
import redis.cluster
import yaml

from benchmarks.bench import GROUP, STREAM_KEY, Bench, PhaseFailed
from benchmarks.console import progress, say, table_head
from benchmarks.iris_api import LocalCluster, inbound_keys, load_config, partition_of
from benchmarks.phases import THROUGHPUT_MAX_WAIT, _throughput_result
from benchmarks.phases import phase_throughput as phase_single
from benchmarks.pipelines import finish_iris, spawn_iris, write_iris_config
from benchmarks.process import Monitor
from benchmarks.scrape import command_calls, command_delta, commands_summary

PRELOAD_CHUNK = 5000
MIN_PARTITIONS = 8


def parse_counts(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (argparse ``type``)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be integers >= 1")
    return counts


def partitions_for(counts: list[int]) -> int:
    return max(MIN_PARTITIONS, 2 * max(counts))


class ClusterTarget:
    """The private cluster as the benchmark uses it: flush, preload, count, check."""

    def __init__(self, masters: int, partitions: int) -> None:
        self.cluster = LocalCluster(masters=masters, replicas=0)
        self.partitions = partitions
        self.keys = inbound_keys(STREAM_KEY, partitions, True)

    def start(self) -> ClusterTarget:
        self.cluster.start()
        self.masters = self.cluster.masters()
        self.client = redis.cluster.RedisCluster.from_url(self.cluster.url,
                                                          decode_responses=True)
        self.nodes = {port: redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
                      for port in self.masters}
        self.pids = self.cluster.pids()
        return self

    def close(self) -> None:
        for client in [getattr(self, "client", None), *getattr(self, "nodes", {}).values()]:
            with contextlib.suppress(Exception):
                client.close()
        self.cluster.stop()

    def fresh(self) -> None:
        for node in self.nodes.values():
            node.flushall()

    def preload(self, bench: Bench, count: int) -> float:
        """Each event XADDed to its partition's stream; the cluster pipeline sends one
        pipeline per node. Returns the seconds it took."""
        started = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        for chunk in range(0, count, PRELOAD_CHUNK):
            for i in range(chunk, min(count, chunk + PRELOAD_CHUNK)):
                uuid = f"{i:038d}"
                command = bench.event(i, uuid)
                command[1] = self.keys[partition_of(uuid, self.partitions)]
                pipe.execute_command(*command)
            pipe.execute()
        loaded = sum(self.client.xlen(key) for key in self.keys)
        if loaded != count:
            raise PhaseFailed(f"preloaded {loaded} events on the cluster, not {count}")
        return time.perf_counter() - started

    def commands(self) -> dict[int, dict[str, int]]:
        return {port: command_calls(node) for port, node in self.nodes.items()}

    def command_delta(self, before: dict[int, dict[str, int]]) -> dict[str, int]:
        """Commands every master ran since ``before``, summed (less our INFOs)."""
        total: dict[str, int] = {}
        for port, after in self.commands().items():
            for name, calls in command_delta(before[port], after).items():
                total[name] = total.get(name, 0) + calls
        return dict(sorted(total.items(), key=lambda kv: -kv[1]))

    def pending(self) -> int:
        return sum(int(self.client.xpending(key, GROUP)["pending"]) for key in self.keys)

    def dead_letters(self) -> int:
        return sum(int(self.client.xlen(f"{key}:dlq")) for key in self.keys)


def cluster_config(bench: Bench, target: ClusterTarget, name: str) -> Path:
    """The throughput config, on the cluster: ``redis.cluster`` and ``stream.partitions``."""
    path = write_iris_config(bench, name, max_users=1000, max_wait=THROUGHPUT_MAX_WAIT)
    config = yaml.safe_load(path.read_text())
    config["redis"] = {"url": ",".join(target.cluster.urls), "cluster": True}
    config["stream"]["partitions"] = target.partitions
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        load_config(path, env={"IRIS_BENCH_CONSUMER": "check", "IRIS_BENCH_HTTP_PORT": "1"})
    except Exception as exc:  # iris without cluster support: say so, as a failed phase
        raise PhaseFailed(f"iris refuses the cluster config: {exc}") from exc
    return path


def phase_cluster(bench: Bench, target: ClusterTarget, name: str, *, events: int,
                  workers: int) -> dict[str, Any]:
    """``phase_throughput`` on the cluster."""
    target.fresh()
    progress(f"{name}: preloading {events:,} events over {target.partitions} partitions on "
             f"{len(target.masters)} masters")
    preload_s = target.preload(bench, events)
    bench.partner_reset()
    config = cluster_config(bench, target, name)
    progress(f"{name}: preloaded in {preload_s:.1f} s; starting {workers} iris worker(s)")
    before = target.commands()
    t0 = time.time()
    procs = spawn_iris(bench, config, name, workers)
    roles = bench.roles(procs)
    del roles["redis"]  # the single redis-server idles; each node is its own role
    nodes = {f"redis:{port}": [pid] for port, pid in target.pids.items()}
    monitor = Monitor({**roles, **nodes}).start()
    try:
        stats = bench.wait_received(events, procs)
    finally:
        cpu = monitor.stop()
    wall = cpu["wall_s"] or 1.0
    redis_s = round(sum(cpu[role]["cpu_s"] for role in nodes), 2)
    cpu["redis"] = {"cpu_s": redis_s, "avg_pct": round(redis_s / wall * 100, 1),
                    "peak_pct": max(cpu[role]["peak_pct"] for role in nodes)}
    bench.check_load(name, cpu)
    ready_at = max((w.ready_at for w in procs if w.ready_at is not None), default=None)
    elapsed = stats["last_receipt"] - t0
    finished = finish_iris(bench, procs, name)
    commands = commands_summary(target.command_delta(before), events)
    if dlq := target.dead_letters():
        bench.warn(f"{name}: {dlq} entries in the dead-letter streams")
    if pending := target.pending():
        bench.warn(f"{name}: {pending} entries of the inbound streams are still pending")
    bench.check_partner(name, stats, events)
    result = _throughput_result(bench, name, pipeline="iris", events=events, procs=procs,
                                max_users=1000, elapsed=elapsed, t0=t0, ready_at=ready_at,
                                stats=stats, cpu=cpu)
    result.update({
        "setup": "cluster", "partitions": target.partitions, "preload_s": round(preload_s, 2),
        "redis_commands": commands, "pending_after": pending, "dead_letters": dlq,
        "redis_cpu_s_per_server": {str(port): cpu[f"redis:{port}"]["cpu_s"]
                                   for port in target.pids},
        "max_rss_mb": max(finished["rss_mb"]), "cpu": cpu, "iris_metrics": finished["metrics"],
    })
    progress(f"{name}: {events:,} events in {elapsed:.2f} s = {result['events_per_s']:,.0f} "
             f"events/s, worker CPU {result['worker_cpu_s']:.2f} s, redis CPU {redis_s:.2f} s "
             f"({'/'.join(f'{s:.2f}' for s in result['redis_cpu_s_per_server'].values())}), "
             f"{commands['per_event']} Redis commands/event")
    return result


def _row(phase: dict[str, Any]) -> dict[str, Any]:
    return {
        "setup": phase["setup"], "workers": phase["workers"], "partitions": phase["partitions"],
        "events": phase["events"], "delivered": phase["partner"]["unique_users"],
        "events_per_s": phase["events_per_s"],
        "events_per_s_after_ready": phase["events_per_s_after_ready"],
        "worker_cpu_s": phase["worker_cpu_s"],
        "partner_cpu_s": phase["cpu"]["partner"]["cpu_s"],
        "redis_cpu_s": phase["redis_cpu_s"],
        "redis_cpu_s_per_server": phase["redis_cpu_s_per_server"],
        "redis_commands_per_event": phase["redis_commands"]["per_event"],
        "pending_after": phase["pending_after"],
    }


def run_scale_out(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Every K on one Redis, then on the cluster; a failed run is a warning and no row."""
    counts, masters = args.scale_out, args.cluster_masters
    target = ClusterTarget(masters, partitions_for(counts))
    out: dict[str, Any] = {"masters": masters, "partitions": target.partitions,
                           "events": args.events, "rows": [], "runs": {}, "pids": []}
    try:
        progress(f"scale-out: starting a Redis Cluster of {masters} masters")
        try:
            target.start()
            out["pids"] = list(target.pids.values())
        except (RuntimeError, OSError, redis.RedisError) as exc:
            bench.failed = True
            bench.warn(f"scale-out: the cluster did not start: {exc}")
        for k in counts:
            for setup in ("redis", "cluster"):
                if setup == "cluster" and not out["pids"]:
                    continue
                name = f"scale-out-{setup}-K{k}"
                try:
                    if setup == "redis":
                        phase = phase_single(bench, name, pipeline="iris", events=args.events,
                                             workers=k, max_users=1000)
                        phase.update({"setup": "redis", "partitions": 1,
                                      "redis_cpu_s_per_server": {
                                          str(bench.redis_proc.port): phase["redis_cpu_s"]}})
                    else:
                        phase = phase_cluster(bench, target, name, events=args.events,
                                              workers=k)
                except (PhaseFailed, redis.RedisError) as exc:
                    bench.failed = True
                    bench.warn(f"{name} failed: {exc}")
                    continue
                out["runs"][name] = phase
                out["rows"].append(_row(phase))
    finally:
        target.close()
    return out


def print_scale_out(result: dict[str, Any]) -> None:
    say()
    say(f"scale-out: K iris workers (max_users 1000) on one redis-server, then on a Redis "
        f"Cluster of {result['masters']} masters with {result['partitions']} partitions; "
        f"{result['events']:,} events each")
    say("CPU s: from spawning the workers to the last receipt; per server: each "
        "redis-server's CPU s; cmds/event: INFO commandstats (all masters), per event")
    head = (f"{'setup':<9}{'workers':>8}{'parts':>6}{'events/s':>10}{'from ready':>12}"
            f"{'worker CPU s':>14}{'partner CPU s':>15}{'redis CPU s':>13}  "
            f"{'per server CPU s':<22}{'cmds/event':>11}")
    table_head(head)
    for r in result["rows"]:
        ready = r["events_per_s_after_ready"]
        per = "/".join(f"{s:.2f}" for s in r["redis_cpu_s_per_server"].values())
        say(f"{r['setup']:<9}{r['workers']:>8}{r['partitions']:>6}{r['events_per_s']:>10,.0f}"
            f"{(f'{ready:,.0f}' if ready else '-'):>12}{r['worker_cpu_s']:>14.2f}"
            f"{r['partner_cpu_s']:>15.2f}{r['redis_cpu_s']:>13.2f}  {per:<22}"
            f"{r['redis_commands_per_event'] or 0:>11.4f}")
