"""The benchmark's child processes, and the CPU and memory they use (from /proc).

Every process the benchmark starts dies with it (``PR_SET_PDEATHSIG``), even when the benchmark
is killed; :class:`Monitor` samples each role's CPU time (worker, partner, redis, ...) in a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
MONITOR_INTERVAL = 0.5


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Every process the benchmark starts (but redis-server, which RedisProcess owns)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started: list[int] = []  # every pid ever started, for the record

    def spawn(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, preexec_fn=die_with_parent, **kw)
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

