"""The benchmark's fixed parts: a private redis-server, the partner, the events, the checks.

:class:`Bench` starts redis-server (never on 6379) and the multi-process partner once, and gives
each phase what it needs: a flushed Redis, preloaded events, the partner's counters, Redis's
command counters, a wait for the partner to have every event, and the checks that say whether
a run was clean.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks import compiled
from benchmarks.console import progress
from benchmarks.iris_api import RedisProcess
from benchmarks.process import Children, cpu_seconds, machine_cpu
from benchmarks.scrape import command_calls, http_json, http_status

ROOT = Path(__file__).resolve().parent.parent
STREAM_KEY = "iris:events"
GROUP = "iris"
USER_DPID = "12345"
CLIENT_ID = "74323"
SEGMENTS_PER_DESTINATION = 5
PRELOAD_CHUNK = 5000
STALL_SECONDS = 30.0  # a phase that makes no progress for this long has failed
WORKER_READY_TIMEOUT = 30.0
FOREIGN_LOAD_WARN_PCT = 25.0  # % of one core used by others during a phase: say so


class PhaseFailed(RuntimeError):
    pass


def compile_sources() -> None:
    """Byte-compile iris and the benchmark's pipelines, as pip does when it installs a package
    (the container image): a deployed worker loads its modules' ``.pyc`` files. From a source
    checkout with ``PYTHONDONTWRITEBYTECODE`` set, every worker would otherwise compile its
    ~70 modules again at each start, ~60 ms of CPU that no deployment pays."""
    for package in ("iris", "benchmarks"):
        compileall.compile_dir(ROOT / package, quiet=1)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Worker:
    """One process of the pipeline under test: an iris worker, or the FastStream pipeline.

    iris says it is ready on ``/readyz`` (``port``); the FastStream pipeline writes the time it
    became ready into ``ready_file``.
    """

    proc: subprocess.Popen[bytes]
    log: Path
    port: int | None = None
    ready_file: Path | None = None
    ready_at: float | None = None
    ready_cpu_s: float | None = None  # its CPU time when we saw it ready: the start-up's cost

    @property
    def readyz_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/readyz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def poll_ready(self) -> None:
        if self.ready_at is not None:
            return
        if self.ready_file is not None:
            try:
                self.ready_at = float(self.ready_file.read_text())
            except (OSError, ValueError):
                return
        elif http_status(self.readyz_url, 0.2) == 200:
            self.ready_at = time.time()
        else:
            return
        self.ready_cpu_s = cpu_seconds(self.proc.pid)


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    children: Children = field(default_factory=Children)
    warnings: list[str] = field(default_factory=list)
    failed: bool = False
    redis_pid: int | None = None
    iris_root: Path = ROOT  # where the iris workers run from (``_iris_build``)
    compiled_count: int = 0  # of its modules, compiled with mypyc
    partner_pids: list[int] = field(default_factory=list)

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        compile_sources()
        self.iris_root = self._iris_build()
        n = self.args.destinations
        self.dest_ids = [str(901 + i) for i in range(n)]
        self.segments = {d: [str((i + 1) * 1000 + k) for k in range(SEGMENTS_PER_DESTINATION)]
                         for i, d in enumerate(self.dest_ids)}
        self.secrets = {d: os.urandom(18).hex() for d in self.dest_ids}
        self.redis_proc = RedisProcess().start()
        self.redis_pid = self.redis_proc.pid
        self.redis = redis.Redis(host="127.0.0.1", port=self.redis_proc.port,
                                 decode_responses=True)
        self.redis_version = self.redis.info("server").get("redis_version")
        progress(f"redis-server {self.redis_version} on port {self.redis_proc.port} "
                 f"(pid {self.redis_proc.pid})")
        self._start_partner()
        self.idle_check()

    def _iris_build(self) -> Path:
        """Where the iris workers import iris from: the mypyc build, as the container image
        ships it (``benchmarks/compiled.py``), or this checkout with ``--from-source``."""
        if self.args.from_source:
            self.compiled_count = len(compiled.compiled_modules(ROOT))
            progress("iris runs from this checkout (--from-source)" + (
                f", {self.compiled_count} of its modules compiled" if self.compiled_count else ""))
            return ROOT
        built = compiled.build(say=progress)  # raises BuildFailed
        self.compiled_count = len(compiled.compiled_modules(built))
        progress(f"iris runs compiled with mypyc ({self.compiled_count} modules, "
                 f"{built.relative_to(ROOT)})")
        return built

    def idle_check(self, seconds: float = 1.0) -> None:
        """How busy the machine is before we load it: other people's work skews everything."""
        busy0, steal0, _ = machine_cpu()
        time.sleep(seconds)
        busy1, steal1, _ = machine_cpu()
        self.background_pct = round((busy1 - busy0 + steal1 - steal0) / seconds * 100, 1)
        progress(f"machine busy before the benchmark: {self.background_pct:.0f}% of a core")
        if self.background_pct > FOREIGN_LOAD_WARN_PCT:
            self.warn(f"the machine was {self.background_pct:.0f}% busy (of one core) before "
                      "the benchmark started: figures will be noisy")

    def _start_partner(self) -> None:
        conf = {d: {"client_id": f"bench-{d}", "client_secret": self.secrets[d]}
                for d in self.dest_ids}
        env = {**os.environ, "BENCH_PARTNER_DESTINATIONS": json.dumps(conf)}
        self.partner_log = self.tmp / "partner.log"
        argv = [sys.executable, "-m", "benchmarks.partner", "--procs",
                str(self.args.partner_procs)]
        with open(self.partner_log, "wb") as log:
            self.partner = self.children.spawn(argv, cwd=ROOT, env=env,
                                               stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=log)
        assert self.partner.stdout is not None
        # "PORT <n> CONTROL <m> PIDS <a>,<b>", or EOF if it died
        words = self.partner.stdout.readline().decode().split()
        if len(words) != 6 or words[0] != "PORT":
            raise RuntimeError(f"the partner did not start:\n{self.partner_log.read_text()}")
        self.partner_port = int(words[1])
        self.partner_url = f"http://127.0.0.1:{self.partner_port}"
        self.control_url = f"http://127.0.0.1:{int(words[3])}"
        self.partner_pids = [int(pid) for pid in words[5].split(",")]
        progress(f"partner at {self.partner_url}: {len(self.partner_pids)} processes on one "
                 f"port (pids {', '.join(map(str, self.partner_pids))}; started by "
                 f"{self.partner.pid})")

    def close(self) -> None:
        self.children.stop_all()
        with contextlib.suppress(Exception):
            self.redis.close()
        if getattr(self, "redis_proc", None) is not None:
            self.redis_proc.stop()

    @property
    def pids(self) -> list[int]:
        """Every process the benchmark started, for the record."""
        return (self.children.started + self.partner_pids
                + ([self.redis_pid] if self.redis_pid else []))

    # -- pieces of a phase ----------------------------------------------------------------

    def fresh(self) -> None:
        """Our private Redis only (never 6379): every phase starts from an empty server."""
        assert self.redis_proc.port != 6379
        self.redis.flushall()

    def event(self, i: int, uuid: str) -> list[str]:
        dest = self.dest_ids[i % len(self.dest_ids)]
        segs = self.segments[dest]
        segment = segs[(i // len(self.dest_ids)) % len(segs)]
        status = "0" if i % 10 == 9 else "1"
        return ["XADD", STREAM_KEY, "*", "uuid", uuid, "segment", segment, "status", status,
                "dpuuid", f"dp{i:014d}"]

    def preload(self, count: int) -> float:
        """``count`` events, each a distinct user, pipelined; returns the seconds it took."""
        started = time.perf_counter()
        pipe = self.redis.pipeline(transaction=False)
        for chunk in range(0, count, PRELOAD_CHUNK):
            for i in range(chunk, min(count, chunk + PRELOAD_CHUNK)):
                pipe.execute_command(*self.event(i, f"{i:038d}"))
            pipe.execute()
        assert self.redis.xlen(STREAM_KEY) == count
        return time.perf_counter() - started

    def commands(self) -> dict[str, int]:
        """Redis's own count of every command it ran, by command (``INFO commandstats``)."""
        return command_calls(self.redis)

    def pending(self, group: str) -> int:
        """Entries of the inbound stream read by ``group`` and never acknowledged."""
        return int(self.redis.xpending(STREAM_KEY, group)["pending"])

    def partner_reset(self, latency: bool = False) -> None:
        http_json(f"{self.control_url}/reset" + ("?latency=1" if latency else ""), "POST")

    def partner_stats(self, latency: bool = False, full: bool = False) -> dict[str, Any]:
        query = "&".join(q for q, on in (("latency=1", latency), ("full=1", full)) if on)
        return http_json(f"{self.control_url}/stats" + (f"?{query}" if query else ""),
                         timeout=30)

    def wait_ready(self, workers: list[Worker], deadline: float) -> float | None:
        """time.time() when every worker said it was ready (None: not yet, polled once)."""
        for w in workers:
            w.poll_ready()
        if all(w.ready_at is not None for w in workers):
            return max(w.ready_at for w in workers if w.ready_at is not None)
        if time.monotonic() > deadline:
            raise PhaseFailed("a worker did not become ready within "
                              f"{WORKER_READY_TIMEOUT:.0f} s")
        return None

    def wait_received(
        self, expected: int, workers: list[Worker], timeout: float | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the partner until it has ``expected`` distinct users; fail on a stall.

        The frequent polls add up each partner process's distinct users; the last one merges
        them (exact even if a user reached two processes) and waits on if that is fewer.
        """
        last_unique, last_progress = -1, time.monotonic()
        ready_deadline = time.monotonic() + WORKER_READY_TIMEOUT
        hard_deadline = time.monotonic() + timeout if timeout is not None else None
        full = False
        while True:
            stats = self.partner_stats(full=full)
            if stats["unique_users"] >= expected:
                if stats["unique_exact"]:
                    return stats
                full = True
                continue
            for w in workers:
                if w.proc.poll() is not None:
                    raise PhaseFailed(f"worker {w.proc.pid} exited with {w.proc.returncode}:\n"
                                      + tail(w.log))
            if on_poll is not None:
                on_poll()
            if stats["unique_users"] > last_unique:
                last_unique, last_progress = stats["unique_users"], time.monotonic()
            elif time.monotonic() - last_progress > STALL_SECONDS:
                raise PhaseFailed(f"no progress for {STALL_SECONDS:.0f} s: partner has "
                                  f"{stats['unique_users']} of {expected} users")
            if hard_deadline is not None and time.monotonic() > hard_deadline:
                raise PhaseFailed(f"timed out: partner has {stats['unique_users']} of "
                                  f"{expected} users")
            if any(w.ready_at is None for w in workers):
                self.wait_ready(workers, ready_deadline)
                time.sleep(0.01)
            else:
                time.sleep(0.5 if full else 0.05)

    # -- checks -----------------------------------------------------------------------------

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        progress(f"WARNING: {text}")

    def check_load(self, name: str, cpu: dict[str, Any]) -> None:
        others = cpu["machine"]["others_pct"] + cpu["machine"]["steal_pct"]
        if others > FOREIGN_LOAD_WARN_PCT:
            self.warn(f"{name}: {others:.0f}% of a core went to processes not ours (or to the "
                      "hypervisor) during the measurement: this phase's figures are disturbed")

    def check_partner(self, name: str, stats: dict[str, Any], expected: int) -> None:
        if stats["duplicate_users"]:
            self.warn(f"{name}: the partner received {stats['duplicate_users']} duplicate users")
        if stats["unauthorized"] or stats["bad_payloads"]:
            self.warn(f"{name}: the partner answered 401 {stats['unauthorized']} times and 400 "
                      f"{stats['bad_payloads']} times")
        if stats["changes"] != stats["users"] or stats["unique_users"] != expected:
            self.warn(f"{name}: expected {expected} users with one change each; the partner has "
                      f"{stats['unique_users']} distinct users, {stats['changes']} changes")

    def roles(self, workers: list[Worker], extra: dict[str, list[int]] | None = None,
              ) -> dict[str, list[int]]:
        roles = {"worker": [w.proc.pid for w in workers],
                 "partner": [self.partner.pid, *self.partner_pids],
                 "redis": [self.redis_proc.pid or 0], "bench": [os.getpid()]}
        roles.update(extra or {})
        return roles
