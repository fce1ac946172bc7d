"""What every fault scenario needs: a worker in its own process (to kill, stop and measure),
and the three promises checked after each fault."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml

from iris.config.model import Config, parse_config
from iris.runtime.worker import Worker
from iris_demo.partner import PartnerServer
from tests.conftest import Partner, config_data, destination_config, wait_for
from tests.helpers import group_pending, xadd_all

REQUIRED_LOG_FIELDS = ("time", "level", "logger", "message")
Pairs = set[tuple[str, str]]


def log_problems(text: str, secrets: list[str]) -> list[str]:
    """Lines of a worker's log that are not one JSON object with the required fields, or that
    show a secret or an Authorization value."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"line {number} is not JSON: {line[:120]!r}")
            continue
        missing = [f for f in REQUIRED_LOG_FIELDS if f not in record]
        if not isinstance(record, dict) or missing:
            problems.append(f"line {number} lacks {missing}: {line[:120]!r}")
        if "Bearer " in line or "Basic " in line or any(s in line for s in secrets):
            problems.append(f"line {number} shows a credential")
    return problems


class WorkerProcess:
    """``iris run`` as a child process, its log in a file the tests can scan."""

    def __init__(self, config: dict[str, Any], directory: Path, name: str = "worker") -> None:
        # port 0: the kernel picks a free one as the worker binds, and the worker logs which
        # (a port picked here could be taken by another test's server before the worker binds)
        self._port: int | None = None
        self._log_start = 0  # where this run's log begins (a restart appends to the file)
        config = {**config, "http": {"listen": "127.0.0.1:0"}}
        self.config = config
        self.config_path = directory / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra_env: tuple[str, str]) -> WorkerProcess:
        self._port, self._log_start = None, len(self.log())
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iris", "--log-level", "DEBUG", "--log-format", "json",
             "run", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **dict(extra_env)},
        )
        log.close()
        STARTED.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        """The port the worker's HTTP server listens on, as its log says (0 until it does)."""
        if self._port is None:
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics",
                              self.log()[self._log_start:])
            if found is None:
                return 0
            self._port = int(found.group(1))
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        """The worker's JSON log records, from line ``start`` on."""
        return [json.loads(line) for line in self.log().splitlines()[start:] if line.strip()]

    async def get(self, path: str) -> tuple[int, str]:
        """GET one of the worker's HTTP endpoints; (0, reason) when it does not answer."""
        if not self.port:
            return 0, "not listening yet"
        try:
            async with aiohttp.ClientSession() as session, session.get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, type(exc).__name__

    async def ready(self) -> bool:
        return (await self.get("/readyz"))[0] == 200

    async def metric(self, name: str, **labels: str) -> float:
        """One sample from the worker's /metrics (0 when absent)."""
        status, text = await self.get("/metrics")
        if status != 200:
            return 0.0
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name + ("{" + wanted + "}" if labels else " ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


async def check_promises(
    redis: aioredis.Redis, stream_key: str, group: str, partners: dict[str, PartnerServer],
    expected: dict[str, set[tuple[str, str]]], dead_reasons: dict[str, str] | None = None,
) -> dict[str, Counter[tuple[str, str]]]:
    """The three promises of every fault scenario.

    ``expected[dest]`` holds the (uuid, segment) pairs sent to each destination;
    ``dead_reasons[uuid]`` the dead-letter reason expected for an event instead of delivery.
    1. every event was delivered at least once, or is dead-lettered with the right reason;
    2. nothing is pending, inbound or outbound;
    3. an event delivered twice came both times under the same Idempotency-Key.
    Returns how often each pair reached each destination.
    """
    dead_reasons = dead_reasons or {}
    dead = {(f.get("dlq_destination", ""), f.get("uuid", ""), f.get("segment", "")):
            f["dlq_reason"] for _, f in await redis.xrange(f"{stream_key}:dlq")}
    counts: dict[str, Counter[tuple[str, str]]] = {}
    for dest, pairs in expected.items():
        keys: dict[tuple[str, str], set[str]] = defaultdict(set)
        seen: Counter[tuple[str, str]] = Counter()
        for batch in partners[dest].received:
            for user in batch.payload["Users"]:
                for seg in user["Segments"]:
                    pair = (user["AAM_UUID"], seg["Segment_ID"])
                    seen[pair] += 1
                    keys[pair].add(batch.idempotency_key or "")
        for uuid, segment in pairs:
            reason = dead_reasons.get(uuid)
            if reason is None:
                assert seen[(uuid, segment)] >= 1, f"{dest}: {uuid}/{segment} never delivered"
            else:
                assert dead.get((dest, uuid, segment)) == reason or (
                    seen[(uuid, segment)] == 0 and dead.get(("", uuid, segment)) == reason
                ), f"{dest}: {uuid}/{segment} not dead-lettered as {reason}"
        unexpected = set(seen) - pairs
        assert not unexpected, f"{dest}: delivered events never sent: {sorted(unexpected)[:5]}"
        dups = {pair: k for pair, k in keys.items() if seen[pair] > 1 and len(k) > 1}
        assert not dups, f"{dest}: duplicates under different idempotency keys: {dups}"
        counts[dest] = seen
    for key in [stream_key, *(f"{stream_key}:out:{d}" for d in expected)]:
        if await redis.exists(key):
            pending = (await redis.xpending(key, group))["pending"]
            assert pending == 0, f"{pending} entries still pending on {key}"
    return counts


STARTED: list[WorkerProcess] = []  # every worker started, for the log scan after each test


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


# --------------------------------------------------------------------------- scenario helpers


def dest_config(partner: Partner, **overrides: Any) -> dict[str, Any]:
    """A destination that flushes fast and retries fast, for fault tests."""
    settings: dict[str, Any] = {
        "batch": {"max_users": 10, "max_wait": 0.2},
        "retry": {"base_delay": 0.05, "max_delay": 0.5},
        "timeout": 2,
        **overrides,
    }
    return destination_config(partner, **settings)


def raw_config(redis_url: str, stream_key: str, partner: Partner, *,
               socket_timeout: float | None = None, dest: dict[str, Any] | None = None,
               **stream: Any) -> dict[str, Any]:
    stream = {"claim_idle_ms": 5000, **stream}
    data = config_data(redis_url, stream_key, [dest_config(partner, **(dest or {}))], **stream)
    data["shutdown_timeout"] = 3
    if socket_timeout is not None:
        data["redis"]["socket_timeout"] = socket_timeout
    return data


def as_config(data: dict[str, Any]) -> Config:
    return parse_config(data, env={})


def worker_config(redis_url: str, stream_key: str, destinations: list[dict[str, Any]],
                  *, shutdown_timeout: float = 5, **stream: Any) -> dict[str, Any]:
    """A raw config mapping for ``WorkerProcess``, validated here so a bad one fails fast."""
    data = config_data(redis_url, stream_key, destinations, **stream)
    data["shutdown_timeout"] = shutdown_timeout
    parse_config(data, env={})
    return data


async def start_all(*procs: WorkerProcess) -> None:
    """Start every worker at once, then wait until each one's /readyz says ready."""
    for proc in procs:
        proc.start()
    for proc in procs:
        await wait_for(proc.ready, 30, f"{proc.config_path.stem} ready",
                       lambda p=proc: p.log()[-3000:])


async def started(proc: WorkerProcess) -> WorkerProcess:
    """Start ``proc`` and wait until /readyz says it is ready."""
    await start_all(proc)
    return proc


async def produce(client: aioredis.Redis, key: str, tag: str, count: int) -> Pairs:
    """XADD ``count`` events with (uuid, segment) pairs unique to ``tag``; return the pairs."""
    pairs = {(f"{tag}-{i:04d}", "s1") for i in range(count)}
    await xadd_all(client, key, [{"uuid": uuid, "segment": segment, "dpuuid": f"dp-{uuid}"}
                                 for uuid, segment in sorted(pairs)], chunk=len(pairs) or 1)
    return pairs


def delivered(partner: Partner) -> Pairs:
    return {(u, s) for u, _dp, s, _st in partner.server.segment_changes()}


def missing(partner: Partner, pairs: Pairs) -> str:
    lost = pairs - delivered(partner)
    return f"({len(lost)} of {len(pairs)} missing, e.g. {sorted(lost)[:3]})"


async def pending(client: aioredis.Redis, stream_key: str, dest_id: str) -> int:
    return await group_pending(client, [stream_key, f"{stream_key}:out:{dest_id}"])


async def settled(client: aioredis.Redis, stream_key: str, dest_id: str,
                  timeout: float = 15.0) -> None:
    """Wait until nothing is pending (deliveries are acknowledged just after the partner's 2xx)."""
    async def none_pending() -> bool:
        return await pending(client, stream_key, dest_id) == 0

    async def state() -> str:
        return f"(pending={await pending(client, stream_key, dest_id)})"

    await wait_for(none_pending, timeout, "nothing pending", state)


async def http_status(port: int, path: str) -> int:
    """A real GET on the worker's HTTP server; 0 when it does not answer."""
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=2)
        ) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def ready_in_process(worker: Worker) -> bool:
    """Ready by the health state AND by a real GET /readyz (they must agree)."""
    return worker.health.readiness()[0] and await http_status(worker.http.port, "/readyz") == 200


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; field 3 is state
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, **times: float) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v:.2f}s" for k, v in times.items()))
