"""``make bench``: end-to-end throughput, latency and memory of iris against a naive baseline.

Everything runs on this machine, in separate processes, and is torn down on exit or Ctrl-C:

- a private ``redis-server`` (``iris.localredis.RedisProcess``: a free port, never 6379);
- a keep-alive HTTP partner (``benchmarks/partner.py``, aiohttp + orjson, its own process) with
  a seed-000 OAuth 2 token endpoint per destination; it counts users and segment changes,
  distinct users (duplicates show), and XADD → receipt latency; ``GET /stats`` reads it;
- ``iris run -c CONFIG`` worker processes (``python -m iris run``), exactly as deployed.

Phases (each on a flushed Redis, so none sees another's entries):

1. **iris** — preload N events (default 200,000; pipelined XADD) over D destinations (disjoint
   segment mappings: one destination per event; every event a distinct user, so nothing
   collapses), start one worker with ``max_users: 1000``, and time from spawning the worker
   until the partner has received every event. Reports events/s, requests/s, users/request,
   the worker's peak RSS (VmHWM) and CPU of every process.
2. **aam10** — the same with AAM's default ``max_users: 10`` (fewer events: a figure only).
3. **naive** — one process: XREADGROUP one entry, one POST (same standard payload, one user,
   cached token, keep-alive), XACK; for a fixed time window. ``ratio`` = iris / naive.
4. **latency** — a steady offered load (``--rate`` events/s for ``--latency-seconds``) with
   ``max_wait: 0.25``: p50/p99/max milliseconds from XADD to receipt at the partner.
5. **scale-out** (``--workers K`` with K > 1) — phase 1 again with K workers in one group.

Prints a table and writes ``benchmarks/results.json``. The numbers are only meaningful as
ratios on the same machine in the same run: redis-server, the partner and the worker share the
cores, and the CPU columns say who used them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: the iris package is at ROOT
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import yaml  # noqa: E402

from iris.config import load_config  # noqa: E402
from iris.localredis import RedisProcess, free_port  # noqa: E402
from iris.payload import aam_date  # noqa: E402

PARTNER_SCRIPT = Path(__file__).resolve().parent / "partner.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_KEY = "iris:events"
GROUP = "iris"
USER_DPID = "12345"
CLIENT_ID = "74323"
SEGMENTS_PER_DESTINATION = 5
PRELOAD_CHUNK = 5000
STALL_SECONDS = 30.0  # a phase that makes no progress for this long has failed
WORKER_READY_TIMEOUT = 30.0
MONITOR_INTERVAL = 0.5
FOREIGN_LOAD_WARN_PCT = 25.0  # % of one core used by others during a phase: say so
THROUGHPUT_MAX_WAIT = 0.25  # only the tail's partial batches wait for it
LOG_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
METRIC_LINE = re.compile(r"^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$")

_quiet = False  # --json: progress and table go to stderr, stdout carries only the JSON


def say(text: str = "") -> None:
    print(text, file=sys.stderr if _quiet else sys.stdout, flush=True)


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Every process the benchmark starts (but redis-server, which RedisProcess owns)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started: list[int] = []  # every pid ever started, for the record

    def spawn(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, preexec_fn=_die_with_parent, **kw)
        self.procs.append(proc)
        self.started.append(proc.pid)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
        """SIGTERM (iris drains and exits 0), then SIGKILL after ``timeout``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mb(pid: int, key: str) -> float | None:
    """A /proc/<pid>/status size (VmRSS, VmHWM) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) seconds of all cores together, from /proc/stat's ``cpu`` line.

    busy = user + nice + system + irq + softirq (guest time is inside user); idle and iowait
    are not busy; steal is time the hypervisor gave to someone else.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq
    return busy / CLK_TCK, steal / CLK_TCK, sum(values) / CLK_TCK


class Monitor:
    """Samples CPU time of each role's processes (and the worker's RSS) in a thread.

    Reports per role: CPU seconds, average and peak (per sample interval) percent of ONE core,
    so 100 means a core fully busy; ``machine`` is all cores together (max 100 × cores).
    """

    def __init__(self, roles: dict[str, list[int]], interval: float = MONITOR_INTERVAL) -> None:
        self.roles = roles
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.peak_pct: dict[str, float] = dict.fromkeys(roles, 0.0)
        self.peak_rss_mb = 0.0
        self.samples: list[dict[str, float]] = []

    def _cpu(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) or 0.0 for p in pids) for role, pids in self.roles.items()}

    def start(self) -> Monitor:
        self._t0 = time.monotonic()
        self._base = self._cpu()
        self._mbase = machine_cpu()
        self._thread.start()
        return self

    def _run(self) -> None:
        last_t, last = self._t0, self._base
        while not self._stop.wait(self.interval):
            now, cur = time.monotonic(), self._cpu()
            dt = now - last_t
            sample = {"t": round(now - self._t0, 2)}
            for role, value in cur.items():
                pct = (value - last.get(role, 0.0)) / dt * 100 if dt > 0 else 0.0
                sample[role] = round(pct, 1)
                self.peak_pct[role] = max(self.peak_pct[role], pct)
            self.samples.append(sample)
            for pid in self.roles.get("worker", []):
                self.peak_rss_mb = max(self.peak_rss_mb, status_mb(pid, "VmRSS") or 0.0)
            last_t, last = now, cur

    def stop(self) -> dict[str, Any]:
        end_cpu = self._cpu()  # before the thread's last read: the processes still exist
        busy, steal, _total = machine_cpu()
        wall = time.monotonic() - self._t0
        self._stop.set()
        self._thread.join()
        out: dict[str, Any] = {"wall_s": round(wall, 2)}
        for role in self.roles:
            used = end_cpu[role] - self._base[role]
            out[role] = {"cpu_s": round(used, 2), "avg_pct": round(used / wall * 100, 1),
                         "peak_pct": round(self.peak_pct[role], 1)}
        mbusy = busy - self._mbase[0]
        ours = sum(out[role]["cpu_s"] for role in self.roles)
        cores = os.cpu_count() or 1
        out["machine"] = {
            "avg_pct": round(mbusy / wall * 100, 1), "of_pct": 100 * cores,
            "steal_pct": round((steal - self._mbase[1]) / wall * 100, 1),
            # everything busy that is not one of our processes: other people's work on this
            # machine, and kernel time (softirq) not charged to any process
            "others_pct": round(max(0.0, mbusy - ours) / wall * 100, 1),
        }
        return out


# --------------------------------------------------------------------------- http helpers


def http_json(url: str, method: str = "GET", timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def http_status(url: str, timeout: float = 0.5) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        return None


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def scrape_metrics(text: str) -> dict[str, Any]:
    """The few iris metrics that tell whether a run was clean."""
    codes: dict[str, float] = {}
    dead = retries = delivered = consumed = 0.0
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "iris_requests_total":
            code = re.search(r'code="([^"]*)"', labels)
            key = code.group(1) if code else "?"
            codes[key] = codes.get(key, 0) + value
        elif name == "iris_events_dead_lettered_total":
            dead += value
        elif name == "iris_retries_total":
            retries += value
        elif name == "iris_events_delivered_total":
            delivered += value
        elif name == "iris_events_consumed_total":
            consumed += value
    return {"requests_by_code": {k: int(v) for k, v in codes.items()},
            "dead_lettered": int(dead), "retries": int(retries),
            "delivered": int(delivered), "consumed": int(consumed)}


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    children: Children = field(default_factory=Children)
    warnings: list[str] = field(default_factory=list)
    failed: bool = False
    redis_pid: int | None = None

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
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
        with open(self.partner_log, "wb") as log:
            self.partner = self.children.spawn(
                [sys.executable, str(PARTNER_SCRIPT)], cwd=ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        assert self.partner.stdout is not None
        line = self.partner.stdout.readline().decode().strip()  # "PORT <n>", or EOF if it died
        if not line.startswith("PORT "):
            raise RuntimeError(f"the partner did not start:\n{self.partner_log.read_text()}")
        self.partner_port = int(line.split()[1])
        self.partner_url = f"http://127.0.0.1:{self.partner_port}"
        progress(f"partner at {self.partner_url} (pid {self.partner.pid})")

    def close(self) -> None:
        self.children.stop_all()
        with contextlib.suppress(Exception):
            self.redis.close()
        if getattr(self, "redis_proc", None) is not None:
            self.redis_proc.stop()

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

    def partner_reset(self, latency: bool = False) -> None:
        http_json(f"{self.partner_url}/reset" + ("?latency=1" if latency else ""), "POST")

    def partner_stats(self, latency: bool = False) -> dict[str, Any]:
        return http_json(f"{self.partner_url}/stats" + ("?latency=1" if latency else ""))

    def write_config(self, name: str, *, max_users: int, max_wait: float) -> Path:
        a = self.args
        destinations = []
        for d in self.dest_ids:
            secret_file = self.tmp / f"secret-{d}"
            secret_file.write_text(self.secrets[d])
            secret_file.chmod(0o600)
            destinations.append({
                "id": d, "url": f"{self.partner_url}/segments/{d}",
                "user_dpid": USER_DPID, "client_id": CLIENT_ID, "segments": self.segments[d],
                "allow_http": True,
                "auth": {"type": "oauth2_client_credentials",
                         "token_url": f"{self.partner_url}/oauth2/{d}/token",
                         "client_id": f"bench-{d}", "client_secret_file": str(secret_file)},
                "batch": {"max_users": max_users, "max_bytes": 1_000_000, "max_wait": max_wait},
                "limits": {"requests_per_second": a.requests_per_second,
                           "max_in_flight": a.max_in_flight},
                "timeout": 30,
            })
        config = {
            "redis": {"url": self.redis_proc.url},
            "stream": {"key": STREAM_KEY, "group": GROUP, "consumer": "${IRIS_BENCH_CONSUMER}",
                       "read_count": a.read_count, "block_ms": 1000, "claim_idle_ms": 60000},
            "http": {"listen": "127.0.0.1:${IRIS_BENCH_HTTP_PORT}"},
            "shutdown_timeout": 5,
            "destinations": destinations,
        }
        path = self.tmp / f"iris-{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        # what `iris check-config -c` does; fails here, with the key named, not in the worker
        load_config(path, env={"IRIS_BENCH_CONSUMER": "check", "IRIS_BENCH_HTTP_PORT": "1"})
        return path

    def spawn_workers(self, config: Path, name: str, count: int) -> list[Worker]:
        workers = []
        for index in range(count):
            port = free_port()
            env = {**os.environ, "IRIS_BENCH_CONSUMER": f"bench-{name}-{index}",
                   "IRIS_BENCH_HTTP_PORT": str(port)}
            log_path = self.tmp / f"worker-{name}-{index}.log"
            argv = [sys.executable, "-m", "iris", "run", "-c", str(config)]
            if self.args.profile is not None and name == "iris":
                # cProfile writes its file when iris exits (it does, with 0, on SIGTERM)
                argv[1:1] = ["-m", "cProfile", "-o", str(self.args.profile)]
            with open(log_path, "wb") as log:
                proc = self.children.spawn(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT)
            workers.append(Worker(proc, port, log_path))
        return workers

    def finish_workers(self, workers: list[Worker], name: str) -> dict[str, Any]:
        """Peak RSS, metrics, then SIGTERM; and every warning the workers logged."""
        out: dict[str, Any] = {"rss_mb": [], "metrics": []}
        for w in workers:
            out["rss_mb"].append(round(status_mb(w.proc.pid, "VmHWM") or 0.0, 1))
            try:
                out["metrics"].append(scrape_metrics(http_text(w.metrics_url)))
            except OSError as exc:
                out["metrics"].append({"error": str(exc)})
        codes = []
        for w in workers:
            codes.append(self.children.stop(w.proc))
        out["exit_codes"] = codes
        for w, code in zip(workers, codes, strict=True):
            if code != 0:
                self.warn(f"{name}: worker {w.proc.pid} exited with {code} (log {w.log})")
            problems = [line for line in w.log.read_text(errors="replace").splitlines()
                        if LOG_PROBLEM.search(line)]
            if problems:
                self.warn(f"{name}: the worker logged {len(problems)} warning/error line(s), "
                          f"first: {problems[0][:300]}")
        for m in out["metrics"]:
            bad = {c: n for c, n in m.get("requests_by_code", {}).items() if c != "200"}
            if bad or m.get("dead_lettered") or m.get("retries"):
                self.warn(f"{name}: non-200 requests {bad}, retries {m.get('retries')}, "
                          f"dead-lettered {m.get('dead_lettered')}")
        dlq = self.redis.xlen(f"{STREAM_KEY}:dlq")
        if dlq:
            self.warn(f"{name}: {dlq} entries in the dead-letter stream")
        return out

    def wait_ready(self, workers: list[Worker], deadline: float) -> float | None:
        """time.time() when every worker's /readyz said 200 (None: not yet, polled once)."""
        if all(w.ready_at is not None for w in workers):
            return max(w.ready_at for w in workers if w.ready_at is not None)
        for w in workers:
            if w.ready_at is None and http_status(w.readyz_url, 0.2) == 200:
                w.ready_at = time.time()
        if time.monotonic() > deadline and any(w.ready_at is None for w in workers):
            raise PhaseFailed("a worker did not become ready within "
                              f"{WORKER_READY_TIMEOUT:.0f} s")
        return None

    def wait_received(
        self, expected: int, workers: list[Worker], timeout: float | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the partner until it has ``expected`` distinct users; fail on a stall."""
        last_unique, last_progress = -1, time.monotonic()
        ready_deadline = time.monotonic() + WORKER_READY_TIMEOUT
        hard_deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            stats = self.partner_stats()
            if stats["unique_users"] >= expected:
                return stats
            for w in workers:
                if w.proc.poll() is not None:
                    raise PhaseFailed(f"worker {w.proc.pid} exited with {w.proc.returncode}:\n"
                                      + _tail(w.log))
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
                time.sleep(0.05)

    def check_load(self, name: str, cpu: dict[str, Any]) -> None:
        others = cpu["machine"]["others_pct"] + cpu["machine"]["steal_pct"]
        if others > FOREIGN_LOAD_WARN_PCT:
            self.warn(f"{name}: {others:.0f}% of a core went to processes not ours (or to the "
                      "hypervisor) during the measurement: this phase's figures are disturbed")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        progress(f"WARNING: {text}")

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
        roles = {"worker": [w.proc.pid for w in workers], "partner": [self.partner.pid],
                 "redis": [self.redis_proc.pid or 0], "bench": [os.getpid()]}
        roles.update(extra or {})
        return roles

    # -- phases ---------------------------------------------------------------------------

    def phase_iris(self, name: str, *, events: int, workers: int, max_users: int,
                   ) -> dict[str, Any]:
        self.fresh()
        progress(f"{name}: preloading {events:,} events over {len(self.dest_ids)} destinations")
        preload_s = self.preload(events)
        self.partner_reset()
        config = self.write_config(name, max_users=max_users, max_wait=THROUGHPUT_MAX_WAIT)
        progress(f"{name}: preloaded in {preload_s:.1f} s; starting {workers} worker(s) "
                 f"(max_users {max_users})")
        t0 = time.time()
        procs = self.spawn_workers(config, name, workers)
        monitor = Monitor(self.roles(procs)).start()
        try:
            stats = self.wait_received(events, procs)
        finally:
            cpu = monitor.stop()
        self.check_load(name, cpu)
        ready_at = max((w.ready_at for w in procs if w.ready_at is not None), default=None)
        end = stats["last_receipt"]
        elapsed = end - t0
        finished = self.finish_workers(procs, name)
        self.check_partner(name, stats, events)
        if self.args.profile is not None and name == "iris":
            self.warn(f"{name}: the worker ran under cProfile, which slows it down: its figures "
                      "are not comparable with an unprofiled run")
            show_profile(self.args.profile)
        requests = stats["requests"]
        result = {
            "phase": name, "events": events, "workers": workers, "max_users": max_users,
            "max_wait": THROUGHPUT_MAX_WAIT, "read_count": self.args.read_count,
            "max_in_flight": self.args.max_in_flight, "preload_s": round(preload_s, 2),
            "seconds": round(elapsed, 3),
            "events_per_s": round(events / elapsed, 1),
            "requests": requests, "requests_per_s": round(requests / elapsed, 1),
            "users_per_request": round(stats["users"] / requests, 1) if requests else 0,
            "startup_s": round(ready_at - t0, 3) if ready_at else None,
            "first_receipt_s": round(stats["first_receipt"] - t0, 3),
            "events_per_s_after_ready": (round(events / (end - ready_at), 1)
                                         if ready_at and end > ready_at else None),
            "max_rss_mb": max(finished["rss_mb"]), "rss_mb": finished["rss_mb"],
            "max_rss_polled_mb": round(monitor.peak_rss_mb, 1),
            "cpu": cpu, "cpu_samples": monitor.samples,
            "partner": {k: v for k, v in stats.items() if k != "per_destination"},
            "iris_metrics": finished["metrics"],
        }
        progress(f"{name}: {events:,} events in {elapsed:.2f} s = {result['events_per_s']:,.0f} "
                 f"events/s, {result['requests_per_s']:,.0f} requests/s, "
                 f"{result['users_per_request']} users/request, peak RSS "
                 f"{result['max_rss_mb']:.0f} MB")
        return result

    def phase_naive(self) -> dict[str, Any]:
        name, events = "naive", self.args.naive_events
        self.fresh()
        progress(f"{name}: preloading {events:,} events; one POST per event for up to "
                 f"{self.args.naive_seconds:g} s")
        self.preload(events)
        self.partner_reset()
        spec = {
            "redis_port": self.redis_proc.port, "partner_port": self.partner_port,
            "key": STREAM_KEY, "group": GROUP, "seconds": self.args.naive_seconds,
            "segments": self.segments, "secrets": self.secrets,
        }
        env = {**os.environ, "BENCH_NAIVE_SPEC": json.dumps(spec)}
        log_path = self.tmp / "naive.log"
        with open(log_path, "wb") as log:
            proc = self.children.spawn(
                [sys.executable, str(Path(__file__).resolve()), "--naive-child"], cwd=ROOT,
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        assert proc.stdin is not None and proc.stdout is not None
        # The child says READY once connected and holding its tokens, and stays alive after
        # its result line until we close its stdin: the CPU window is exactly its loop.
        if proc.stdout.readline().strip() != b"READY":
            self.children.stop(proc)
            raise PhaseFailed(f"the naive loop did not start:\n{_tail(log_path)}")
        monitor = Monitor(self.roles([], {"naive": [proc.pid]})).start()
        try:
            line = proc.stdout.readline()
        finally:
            cpu = monitor.stop()
            proc.stdin.close()
            self.children.stop(proc)
        self.check_load(name, cpu)
        if not line:
            raise PhaseFailed(f"the naive loop exited with {proc.returncode}:\n{_tail(log_path)}")
        loop = json.loads(line)
        stats = self.partner_stats()
        if loop["errors"]:
            self.warn(f"{name}: {loop['errors']} POSTs were not answered 200")
        self.check_partner(name, stats, loop["events"])
        rate = loop["events"] / loop["seconds"] if loop["seconds"] > 0 else 0.0
        progress(f"{name}: {loop['events']:,} events in {loop['seconds']:.2f} s = "
                 f"{rate:,.0f} events/s")
        return {"phase": name, "events": loop["events"], "seconds": round(loop["seconds"], 3),
                "events_per_s": round(rate, 1), "requests_per_s": round(rate, 1),
                "users_per_request": 1.0, "cpu": cpu, "cpu_samples": monitor.samples,
                "partner": {k: v for k, v in stats.items() if k != "per_destination"}}

    def phase_latency(self) -> dict[str, Any]:
        name, rate, seconds = "latency", self.args.rate, self.args.latency_seconds
        max_wait = self.args.latency_max_wait
        self.fresh()
        self.partner_reset(latency=True)
        config = self.write_config(name, max_users=1000, max_wait=max_wait)
        procs = self.spawn_workers(config, name, 1)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while self.wait_ready(procs, deadline) is None:
            if procs[0].proc.poll() is not None:
                raise PhaseFailed(f"the worker exited:\n{_tail(procs[0].log)}")
            time.sleep(0.02)
        progress(f"{name}: offering {rate:,.0f} events/s for {seconds:g} s "
                 f"(max_users 1000, max_wait {max_wait:g} s)")
        monitor = Monitor(self.roles(procs)).start()
        try:
            produced, offered_s = self.produce(rate, seconds)
            stats = self.wait_received(produced, procs, timeout=max_wait + 30)
        finally:
            cpu = monitor.stop()
        self.check_load(name, cpu)
        stats = self.partner_stats(latency=True)
        finished = self.finish_workers(procs, name)
        self.check_partner(name, stats, produced)
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
                "cpu_samples": monitor.samples,
                "partner": {k: v for k, v in stats.items()
                            if k not in ("per_destination", "latency",
                                         "latency_after_warmup")},
                "iris_metrics": finished["metrics"]}

    def produce(self, rate: float, seconds: float) -> tuple[int, float]:
        """XADD at ``rate``/s, a pipeline every 5 ms; each uuid starts with its XADD time (µs)."""
        tick = 0.005
        pipe = self.redis.pipeline(transaction=False)
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
                    pipe.execute_command(*self.event(seq, f"{t_us:016d}{seq:022d}"))
                pipe.execute()
                sent += due
            time.sleep(max(0.0, tick - (time.perf_counter() - now)))
        return sent, time.perf_counter() - start


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    ready_at: float | None = None

    @property
    def readyz_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/readyz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


class PhaseFailed(RuntimeError):
    pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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


# --------------------------------------------------------------------------- naive baseline


def naive_child() -> None:
    """The obvious alternative, at its best: sync redis-py (hiredis), stdlib keep-alive HTTP,
    a token fetched once; per event XREADGROUP COUNT 1, POST, XACK."""
    import base64
    from urllib.parse import quote_plus

    import orjson

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = json.loads(os.environ["BENCH_NAIVE_SPEC"])
    key, group = spec["key"], spec["group"]
    r = redis.Redis(host="127.0.0.1", port=spec["redis_port"], decode_responses=True)
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
        r.xgroup_create(key, group, id="0", mkstream=True)
    conn = http.client.HTTPConnection("127.0.0.1", spec["partner_port"], timeout=30)
    route = {seg: dest for dest, segs in spec["segments"].items() for seg in segs}
    tokens = {}
    for dest, secret in spec["secrets"].items():
        basic = base64.b64encode(f"{quote_plus('bench-' + dest)}:{quote_plus(secret)}".encode())
        conn.request("POST", f"/oauth2/{dest}/token", body="grant_type=client_credentials",
                     headers={"Authorization": f"Basic {basic.decode()}",
                              "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
                              "Accept-Encoding": "gzip"})
        answer = conn.getresponse()
        tokens[dest] = json.loads(answer.read())["access_token"]
    print("READY", flush=True)
    done = errors = 0
    started = last = time.monotonic()
    deadline = started + spec["seconds"]
    while time.monotonic() < deadline:
        reply = r.xreadgroup(group, "naive", {key: ">"}, count=1, block=1000)
        if not reply:
            break  # drained
        entry_id, fields = reply[0][1][0]
        dest = route[fields["segment"]]
        when = int(entry_id.partition("-")[0]) // 1000
        body = orjson.dumps({
            "ProcessTime": aam_date(int(time.time())), "User_DPID": USER_DPID,
            "Client_ID": CLIENT_ID, "AAM_Destination_Id": dest, "User_count": "1",
            "Users": [{"AAM_UUID": fields["uuid"], "DataPartner_UUID": fields["dpuuid"],
                       "Segments": [{"Segment_ID": fields["segment"],
                                     "Status": fields.get("status", "1"),
                                     "DateTime": aam_date(when)}]}],
        })
        conn.request("POST", f"/segments/{dest}", body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {tokens[dest]}",
            "Idempotency-Key": entry_id})
        answer = conn.getresponse()
        answer.read()
        if 200 <= answer.status < 300:
            r.xack(key, group, entry_id)
            done += 1
        else:
            errors += 1
        last = time.monotonic()
    print(json.dumps({"events": done, "seconds": last - started, "errors": errors}), flush=True)
    sys.stdin.read()  # stay measurable until the benchmark has read our CPU time


# --------------------------------------------------------------------------- report


def summarize(bench: Bench, phases: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    iris_ = phases.get("iris", {})
    naive = phases.get("naive", {})
    lat = phases.get("latency", {}).get("latency", {})
    steady = phases.get("latency", {}).get("latency_after_warmup") or {}
    aam = phases.get("aam10", {})
    ips, nps = iris_.get("events_per_s"), naive.get("events_per_s")
    workers = {"1": ips}
    for name, phase in phases.items():
        if name.startswith("scale"):
            workers[str(phase["workers"])] = phase["events_per_s"]
    return {
        "iris_events_per_s": ips,
        "naive_events_per_s": nps,
        "ratio": round(ips / nps, 1) if ips and nps else None,
        "p50_ms": lat.get("p50_ms"),
        "p99_ms": lat.get("p99_ms"),
        "max_ms": lat.get("max_ms"),
        "p99_ms_after_warmup": steady.get("p99_ms"),
        "max_rss_mb": iris_.get("max_rss_mb"),
        "events": iris_.get("events"),
        "requests_per_s": iris_.get("requests_per_s"),
        "users_per_request": iris_.get("users_per_request"),
        "iris_events_per_s_after_ready": iris_.get("events_per_s_after_ready"),
        "worker_startup_s": iris_.get("startup_s"),
        "aam10_events_per_s": aam.get("events_per_s"),
        "aam10_events": aam.get("events"),
        "aam10_requests_per_s": aam.get("requests_per_s"),
        "latency_rate_offered": phases.get("latency", {}).get("rate_offered"),
        "latency_rate_achieved": phases.get("latency", {}).get("rate_achieved"),
        "latency_max_wait": phases.get("latency", {}).get("max_wait"),
        "workers": workers,
        "destinations": bench.args.destinations,
        "bench_seconds": round(wall, 1),
        "complete": not bench.failed,
        "profiled": bench.args.profile is not None,
        "warnings": bench.warnings,
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "uvloop": _has("uvloop"), "hiredis": _has("hiredis"),
            "redis_server": getattr(bench, "redis_version", None),
            "background_busy_pct": getattr(bench, "background_pct", None),
            "note": "redis-server, the partner, the bench and the worker(s) share these cores",
        },
        "pids": bench.children.started + ([bench.redis_pid] if bench.redis_pid else []),
        "phases": phases,
    }


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _cpu_cell(phase: dict[str, Any], role: str) -> str:
    cpu = phase.get("cpu", {}).get(role)
    if not cpu or (role == "worker" and not phase.get("workers")):
        return "-"
    return f"{cpu['avg_pct']:.0f}/{cpu['peak_pct']:.0f}"


def print_table(summary: dict[str, Any]) -> None:
    phases = summary["phases"]
    m = summary["machine"]
    say()
    say(f"iris benchmark: {m['cpus']} cores, Python {m['python']}, uvloop "
        f"{'yes' if m['uvloop'] else 'no'}, hiredis {'yes' if m['hiredis'] else 'no'}, "
        f"{summary['destinations']} destinations, {summary['bench_seconds']:.0f} s in all")
    say("redis-server, the partner and the worker(s) share these cores. CPU: % of one core, "
        "average/peak (per 0.5 s) over the phase;")
    say("'bench' is this script (the producer in the latency run), 'others' is CPU used by "
        "processes not ours (plus unattributed kernel time), 'all' is the whole machine.")
    head = (f"{'phase':<27}{'events':>9}{'secs':>7}{'events/s':>10}{'req/s':>8}{'users/req':>10}"
            f"{'RSS MB':>7}  {'CPU% worker':>11}{'partner':>9}{'redis':>8}{'bench':>8}"
            f"{'others':>7}{'all':>5}")
    say(head)
    say("-" * len(head))
    labels = {"iris": "iris max_users 1000, K=1", "aam10": "iris max_users 10 (AAM)",
              "naive": "naive 1 event/POST", "latency": "iris latency run"}
    for name, p in phases.items():
        label = labels.get(name, f"iris max_users 1000, K={p.get('workers')}")
        rss = p.get("max_rss_mb")
        rate = p.get("rate_achieved", p.get("events_per_s", 0))
        machine = p["cpu"]["machine"]
        say(f"{label:<27}{p['events']:>9,}{p['seconds']:>7.2f}{rate:>10,.0f}"
            f"{p.get('requests_per_s', 0) or 0:>8,.0f}{p.get('users_per_request', 0):>10}"
            f"{(f'{rss:.0f}' if rss else '-'):>7}  {_cpu_cell(p, 'worker'):>11}"
            f"{_cpu_cell(p, 'partner'):>9}{_cpu_cell(p, 'redis'):>8}{_cpu_cell(p, 'bench'):>8}"
            f"{machine['others_pct']:>7.0f}{machine['avg_pct']:>5.0f}")
        if name == "naive":
            say(f"{'  (the naive loop process)':<27}{'':>51}{_cpu_cell(p, 'naive'):>11}")
    say()
    if summary["iris_events_per_s"] is not None:
        extra = ""
        if summary["iris_events_per_s_after_ready"]:
            extra = (f" ({summary['iris_events_per_s_after_ready']:,.0f} counted from /readyz;"
                     f" worker start-up {summary['worker_startup_s']:.2f} s)")
        say(f"iris end-to-end:  {summary['iris_events_per_s']:>10,.0f} events/s from spawning "
            f"the worker to the last receipt{extra}")
    if summary["naive_events_per_s"] is not None:
        say(f"naive baseline:   {summary['naive_events_per_s']:>10,.0f} events/s   "
            f"ratio iris/naive: {summary['ratio']}x")
    if summary["aam10_events_per_s"] is not None:
        say(f"AAM-sized batches: {summary['aam10_events_per_s']:>9,.0f} events/s with max_users "
            f"10 ({summary['aam10_events']:,} events; a figure only)")
    if summary["p50_ms"] is not None:
        say(f"latency XADD->partner at {summary['latency_rate_achieved']:,.0f} events/s "
            f"(max_wait {summary['latency_max_wait']:g} s): p50 {summary['p50_ms']} ms, "
            f"p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms"
            + (f" (p99 {summary['p99_ms_after_warmup']} ms without the first 2 s)"
               if summary["p99_ms_after_warmup"] is not None else ""))
    if summary["max_rss_mb"] is not None:
        say(f"worker peak RSS (VmHWM) in the {summary['events']:,}-event run: "
            f"{summary['max_rss_mb']:.0f} MB")
    if len(summary["workers"]) > 1:
        say("scale-out: " + ", ".join(f"K={k}: {v:,.0f} events/s"
                                      for k, v in summary["workers"].items() if v))
    for text in summary["warnings"]:
        say(f"WARNING: {text}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="End-to-end benchmark of iris against a naive one-POST-per-event loop, on "
                    "a private redis-server and a local HTTP partner.")
    p.add_argument("--events", type=int, default=200_000,
                   help="events preloaded for the throughput run (default 200000)")
    p.add_argument("--destinations", type=int, default=4, help="destinations (default 4)")
    p.add_argument("--rate", type=float, default=5000,
                   help="offered events/s in the latency run (default 5000)")
    p.add_argument("--latency-seconds", type=float, default=20,
                   help="length of the latency run (default 20)")
    p.add_argument("--latency-max-wait", type=float, default=0.25,
                   help="batch.max_wait in the latency run (default 0.25)")
    p.add_argument("--workers", type=int, default=1,
                   help="also run the throughput phase with this many workers in one group "
                        "(default 1: only K=1)")
    p.add_argument("--aam-events", type=int, default=None,
                   help="events for the max_users 10 run (default: min(events, 50000))")
    p.add_argument("--naive-seconds", type=float, default=10,
                   help="time window of the naive baseline (default 10)")
    p.add_argument("--naive-events", type=int, default=None,
                   help="events preloaded for the naive baseline (default: min(events, 60000))")
    p.add_argument("--read-count", type=int, default=1000,
                   help="stream.read_count of the workers (default 1000)")
    p.add_argument("--max-in-flight", type=int, default=8,
                   help="limits.max_in_flight per destination (default 8)")
    p.add_argument("--requests-per-second", type=float, default=100_000,
                   help="limits.requests_per_second per destination (default 100000)")
    p.add_argument("--skip", action="append", default=[],
                   choices=["aam10", "naive", "latency"], help="leave a phase out (repeatable)")
    p.add_argument("--profile", type=Path, default=None, metavar="FILE",
                   help="run the throughput run's worker under cProfile, write the stats to "
                        "FILE and print the top functions (slows the worker down)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"results file (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    p.add_argument("--json", action="store_true",
                   help="print the results JSON on stdout (the table goes to stderr)")
    p.add_argument("--naive-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.aam_events is None:
        args.aam_events = min(args.events, 50_000)
    if args.naive_events is None:
        args.naive_events = min(args.events, 60_000)
    for name in ("events", "destinations", "workers", "aam_events", "naive_events"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    global _quiet
    args = parse_args(argv)
    if args.naive_child:
        naive_child()
        return 0
    _quiet = args.json
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    phases: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="iris-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("iris", lambda: bench.phase_iris("iris", events=args.events, workers=1,
                                                  max_users=1000)),
                ("aam10", lambda: bench.phase_iris("aam10", events=args.aam_events, workers=1,
                                                   max_users=10)),
                ("naive", bench.phase_naive),
                ("latency", bench.phase_latency),
            ]
            if args.workers > 1:
                plan.append((f"scale{args.workers}", lambda: bench.phase_iris(
                    f"scale{args.workers}", events=args.events, workers=args.workers,
                    max_users=1000)))
            for name, run in plan:
                if name in args.skip:
                    continue
                try:
                    phases[name] = run()
                except PhaseFailed as exc:
                    bench.failed = True
                    bench.warn(f"{name} failed: {exc}")
        except KeyboardInterrupt:
            progress("interrupted; stopping everything")
            return 130
        except SystemExit:
            progress("terminated; stopping everything")
            raise
        finally:
            bench.close()
    summary = summarize(bench, phases, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    say(f"results written to {args.output}")
    if args.json:
        print(json.dumps(summary, indent=2), flush=True)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
