"""The benchmark harness works end to end on a small run. No timing is asserted: only that every
phase ran (iris and the FastStream pipeline at both batch sizes, in two rounds, the naive loop,
the latency run), the figures and the comparison are there, and everything it started is
gone."""

from __future__ import annotations

import json

from tests.helpers import process_alive, run_bench

KEYS = ("iris_events_per_s", "naive_events_per_s", "ratio", "p50_ms", "p99_ms", "max_rss_mb",
        "events", "requests_per_s", "users_per_request", "aam10_events_per_s", "workers",
        "faststream_events_per_s", "faststream10_events_per_s", "comparison", "partner_procs")
PHASES = {"iris": ("iris", 1000), "faststream": ("faststream", 1000), "aam10": ("iris", 10),
          "faststream10": ("faststream", 10)}
COLUMNS = ("max_users", "pipeline", "events/s", "from ready", "iris/peer", "worker CPU s",
           "events/CPU-s", "redis CPU s", "cmds/event")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def test_bench_smoke(tmp_path):
    output = tmp_path / "results.json"
    code, stdout, stderr = run_bench(
        "--events", "2000", "--aam-events", "1000", "--json", "--destinations", "2",
        "--latency-seconds", "2", "--rate", "500", "--naive-seconds", "1", "--partner-procs",
        "2", "--rounds", "2", "--output", str(output), timeout=150)
    assert code == 0, stderr[-3000:]
    results = json.loads(output.read_text())
    for key in KEYS:
        assert key in results, key
    assert results["events"] == 2000
    assert results["complete"] is True
    assert results["rounds"] == 2
    for key in ("iris_events_per_s", "naive_events_per_s", "ratio", "p50_ms", "p99_ms",
                "max_rss_mb", "aam10_events_per_s", "faststream_events_per_s",
                "faststream10_events_per_s"):
        assert _positive(results[key]), key
    phases = results["phases"]
    assert set(phases) == {*PHASES, "naive", "latency"}
    assert phases["latency"]["latency"]["count"] == phases["latency"]["events"]

    # every throughput phase: all events delivered once, measured the same way
    for name, (pipeline, max_users) in PHASES.items():
        p = phases[name]
        assert (p["pipeline"], p["max_users"]) == (pipeline, max_users), name
        assert p["partner"]["unique_users"] == p["events"], name
        assert p["partner"]["duplicate_users"] == 0, name
        assert p["partner"]["unauthorized"] == p["partner"]["bad_payloads"] == 0, name
        assert len(p["partner"]["processes"]) == 2, name  # the partner's processes
        assert p["pending_after"] == 0, name  # every read acknowledged
        for key in ("events_per_s", "events_per_s_after_ready", "worker_cpu_s",
                    "events_per_worker_cpu_s"):
            assert _positive(p[key]), (name, key)
        assert p["redis_cpu_s"] >= 0, name
        commands = p["redis_commands"]
        assert _positive(commands["per_event"]) and commands["top"], name
        assert sum(commands["by_command"].values()) == commands["total"], name
        assert "xreadgroup" in commands["by_command"], name
        # each of the two rounds is there, and the phase shown is one of them
        rounds = p["rounds"]
        assert len(rounds) == 2 and all(_positive(r["events_per_s"]) for r in rounds), name
        assert p["events_per_s"] == rounds[p["round"] - 1]["events_per_s"], name
    assert phases["faststream10"]["users_per_request"] <= 10
    assert phases["aam10"]["users_per_request"] <= 10

    # the comparison: iris against FastStream at both batch sizes
    rows = {row["max_users"]: row for row in results["comparison"]}
    assert set(rows) == {1000, 10}
    for row in rows.values():
        for side in ("iris", "faststream"):
            for key in ("events_per_s", "worker_cpu_s", "events_per_worker_cpu_s",
                        "redis_commands_per_event"):
                assert _positive(row[side][key]), (row["max_users"], side, key)
        assert _positive(row["ratio_events_per_s"])
        assert _positive(row["ratio_events_per_worker_cpu_s"])
        # each round's ratio is iris's run against its twin's; the ratio is the lower middle
        # of the two, and the rows shown are that round's, both sides
        iris_name, peer_name = ("iris", "faststream") if row["max_users"] == 1000 else (
            "aam10", "faststream10")
        ratios = [a["events_per_s"] / b["events_per_s"] for a, b in
                  zip(phases[iris_name]["rounds"], phases[peer_name]["rounds"], strict=True)]
        assert row["ratio_events_per_s_rounds"] == [round(r, 2) for r in ratios]
        assert row["ratio_events_per_s"] == round(min(ratios), 2)
        assert phases[iris_name]["round"] == phases[peer_name]["round"]
        assert row["iris"]["events_per_s"] == phases[iris_name]["events_per_s"]
        assert row["ratio_events_per_s"] == round(
            phases[iris_name]["events_per_s"] / phases[peer_name]["events_per_s"], 2)

    assert json.loads(stdout) == results  # --json: stdout is the JSON alone
    assert "iris end-to-end" in stderr  # and the tables went to stderr
    assert "iris vs FastStream" in stderr
    header = next(line for line in stderr.splitlines() if line.lstrip().startswith("max_users"))
    for column in COLUMNS:
        assert column in header, column
    assert "top Redis commands" in stderr
    assert "iris/FastStream at max_users 10:" in stderr
    assert "the rounds' ratios, round by round: events/s" in stderr
    # redis, the partner and its 2 processes, 5 iris workers, 4 FastStream pipelines, naive
    assert len(results["pids"]) >= 14
    assert [pid for pid in results["pids"] if process_alive(pid)] == []  # nothing is left behind
