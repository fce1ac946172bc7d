"""``benchmarks/run.py --scale-out``: a tiny run (K = 1, 2; 2,000 events) with every other phase
skipped. No timing is asserted: only that both setups (one redis-server, a Redis Cluster) ran
for every K, every event was delivered once, the table is there, and nothing is left behind."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import process_alive, run_bench

EVENTS = 2000


def test_bench_scale_out_smoke(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    skip = [arg for phase in ("iris", "faststream", "aam10", "naive", "latency")
            for arg in ("--skip", phase)]
    code, stdout, stderr = run_bench(
        "--scale-out", "1,2", "--events", str(EVENTS), "--destinations", "2", "--partner-procs",
        "2", "--json", "--output", str(output), *skip, timeout=90)
    assert code == 0, stderr[-3000:]
    results = json.loads(output.read_text())
    assert json.loads(stdout) == results
    assert results["phases"] == {}  # every other phase skipped
    scale = results["scale_out"]
    assert scale["masters"] == 3 and scale["partitions"] == 8
    rows = {(row["setup"], row["workers"]): row for row in scale["rows"]}
    assert set(rows) == {(s, k) for s in ("redis", "cluster") for k in (1, 2)}
    for (setup, _k), row in rows.items():
        assert row["events"] == row["delivered"] == EVENTS
        assert row["pending_after"] == 0
        assert row["events_per_s"] > 0 and row["worker_cpu_s"] > 0
        assert row["redis_commands_per_event"] > 0
        assert len(row["redis_cpu_s_per_server"]) == (3 if setup == "cluster" else 1)
    for run in scale["runs"].values():
        assert run["partner"]["duplicate_users"] == 0
    header = next(line for line in stderr.splitlines() if line.startswith("setup"))
    for column in ("workers", "events/s", "from ready", "worker CPU s", "partner CPU s",
                   "redis CPU s", "per server CPU s", "cmds/event"):
        assert column in header, column
    assert len(scale["pids"]) == 3
    assert [pid for pid in results["pids"] if process_alive(pid)] == []
