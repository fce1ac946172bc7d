"""The benchmark harness works end to end on a small run. No timing is asserted: only that every
phase ran, the figures are there, and everything it started is gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("iris_events_per_s", "naive_events_per_s", "ratio", "p50_ms", "p99_ms", "max_rss_mb",
        "events", "requests_per_s", "users_per_request", "aam10_events_per_s", "workers")


def _alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_bench_smoke(tmp_path):
    output = tmp_path / "results.json"
    proc = subprocess.Popen(
        [sys.executable, "benchmarks/run.py", "--events", "2000", "--json", "--destinations", "2",
         "--latency-seconds", "2", "--rate", "500", "--naive-seconds", "1",
         "--output", str(output)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    results = json.loads(output.read_text())
    for key in KEYS:
        assert key in results, key
    assert results["events"] == 2000
    assert results["complete"] is True
    for key in ("iris_events_per_s", "naive_events_per_s", "ratio", "p50_ms", "p99_ms",
                "max_rss_mb", "aam10_events_per_s"):
        assert isinstance(results[key], int | float) and results[key] > 0, key
    assert set(results["phases"]) == {"iris", "aam10", "naive", "latency"}
    assert results["phases"]["latency"]["latency"]["count"] == results["phases"]["latency"][
        "events"]
    assert json.loads(stdout) == results  # --json: stdout is the JSON alone
    assert "iris end-to-end" in stderr  # and the table went to stderr
    assert len(results["pids"]) >= 6  # redis, partner, 3 workers, the naive loop
    assert [pid for pid in results["pids"] if _alive(pid)] == []  # nothing is left behind
