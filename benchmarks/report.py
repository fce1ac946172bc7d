"""What a run found: the summary written to ``benchmarks/results.json``, and the tables."""

from __future__ import annotations

import importlib.util
import os
import platform
from typing import Any

from benchmarks.bench import Bench
from benchmarks.console import say, table_head
from benchmarks.scale_out import print_scale_out

PEERS = {1000: ("iris", "faststream"), 10: ("aam10", "faststream10")}  # max_users: phases
LABELS = {"iris": "iris max_users 1000, K=1", "aam10": "iris max_users 10 (AAM)",
          "faststream": "FastStream max_users 1000", "faststream10": "FastStream max_users 10",
          "naive": "naive 1 event/POST", "latency": "iris latency run"}


def _side(phase: dict[str, Any] | None) -> dict[str, Any] | None:
    if not phase:
        return None
    commands = phase.get("redis_commands", {})
    return {
        "events": phase["events"], "events_per_s": phase["events_per_s"],
        "events_per_s_after_ready": phase.get("events_per_s_after_ready"),
        "users_per_request": phase.get("users_per_request"),
        "worker_cpu_s": phase.get("worker_cpu_s"),
        "events_per_worker_cpu_s": phase.get("events_per_worker_cpu_s"),
        "redis_cpu_s": phase.get("redis_cpu_s"),
        "redis_commands": commands.get("total"),
        "redis_commands_per_event": commands.get("per_event"),
        "top_commands": commands.get("top", []),
    }


# each ratio of the comparison (iris's figure divided by FastStream's), its figure and its label
RATIOS = {"ratio_events_per_s": ("events_per_s", "events/s"),
          "ratio_events_per_s_after_ready": ("events_per_s_after_ready", "from readiness"),
          "ratio_events_per_worker_cpu_s": ("events_per_worker_cpu_s", "per CPU-second")}
# the figures of each round kept beside the round shown
ROUND_KEYS = ("seconds", "events_per_s", "events_per_s_after_ready", "worker_cpu_s",
              "events_per_worker_cpu_s", "redis_cpu_s", "max_rss_mb")
COMPARED = {name for pair in PEERS.values() for name in pair}  # the phases run in rounds


def _median_index(values: list[float | None]) -> int | None:
    """The position of the median of the values present (the lower middle one of an even
    count, so that it is always a value that was measured); None if none is."""
    present = sorted((value, index) for index, value in enumerate(values) if value is not None)
    return present[(len(present) - 1) // 2][1] if present else None


def paired(runs: dict[str, list[dict[str, Any] | None]], iris_name: str, peer_name: str,
           key: str) -> list[float | None]:
    """Per round, iris's ``key`` divided by FastStream's in the same round; None for a round
    where either did not run or lacks the figure. Empty if either phase never ran."""
    iris_runs, peer_runs = runs.get(iris_name, []), runs.get(peer_name, [])
    if not iris_runs or not peer_runs:
        return []
    return [a[key] / b[key] if a and b and a.get(key) and b.get(key) else None
            for a, b in zip(iris_runs, peer_runs, strict=True)]


def chosen_rounds(runs: dict[str, list[dict[str, Any] | None]]) -> dict[str, int]:
    """The round shown for each phase that ran: for an iris run and its FastStream twin, the
    round whose events/s ratio is the median, so that the rows shown are a pair measured side
    by side and their ratio is the one reported; for a phase without its twin, its median
    round by events/s."""
    chosen = {}
    for iris_name, peer_name in PEERS.values():
        index = _median_index(paired(runs, iris_name, peer_name, "events_per_s"))
        if index is not None:
            chosen[iris_name] = chosen[peer_name] = index
    for name, results in runs.items():
        if name in chosen:
            continue
        if len(results) == 1:  # a phase run once (naive and latency count no events/s)
            if results[0] is not None:
                chosen[name] = 0
        elif (index := _median_index([None if r is None else r["events_per_s"]
                                      for r in results])) is not None:
            chosen[name] = index
    return chosen


def shown(name: str, results: list[dict[str, Any] | None], index: int) -> dict[str, Any]:
    """A phase as its round ``index``; the phases run in rounds also carry ``round`` (from 1)
    and every round's figures under ``rounds`` (None: that round's run failed)."""
    result = results[index]
    assert result is not None
    if name not in COMPARED:
        return result
    return {**result, "round": index + 1,
            "rounds": [None if r is None else {k: r.get(k) for k in ROUND_KEYS}
                       for r in results]}


def comparison(runs: dict[str, list[dict[str, Any] | None]], chosen: dict[str, int],
               ) -> list[dict[str, Any]]:
    """iris against the FastStream pipeline, per batch size either ran at. Each ratio is the
    median of the rounds' ratios, each iris run against its FastStream twin (``<ratio>_rounds``
    lists them by round); both sides are the round of the median events/s ratio."""
    rows = []
    for max_users, (iris_name, peer_name) in PEERS.items():
        sides = {name: _side(runs[name][chosen[name]]) if name in chosen else None
                 for name in (iris_name, peer_name)}
        if not any(sides.values()):
            continue
        row: dict[str, Any] = {"max_users": max_users, "iris": sides[iris_name],
                               "faststream": sides[peer_name]}
        for name, (key, _) in RATIOS.items():
            ratios = paired(runs, iris_name, peer_name, key)
            index = _median_index(ratios)
            row[name] = None if index is None else round(ratios[index] or 0, 2)
            row[f"{name}_rounds"] = [None if r is None else round(r, 2) for r in ratios]
        rows.append(row)
    return rows


def summarize(bench: Bench, runs: dict[str, list[dict[str, Any] | None]], wall: float,
              ) -> dict[str, Any]:
    """The summary of a run; ``runs`` holds each phase's result per round (None: failed)."""
    chosen = chosen_rounds(runs)
    phases = {name: shown(name, results, chosen[name]) for name, results in runs.items()
              if name in chosen}
    iris_ = phases.get("iris", {})
    rss = [r["max_rss_mb"] for r in runs.get("iris", []) if r and r.get("max_rss_mb")]
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
        "max_rss_mb": max(rss, default=None),  # of every round
        "events": iris_.get("events"),
        "requests_per_s": iris_.get("requests_per_s"),
        "users_per_request": iris_.get("users_per_request"),
        "iris_events_per_s_after_ready": iris_.get("events_per_s_after_ready"),
        "worker_startup_s": iris_.get("startup_s"),
        "aam10_events_per_s": aam.get("events_per_s"),
        "aam10_events": aam.get("events"),
        "aam10_requests_per_s": aam.get("requests_per_s"),
        "faststream_events_per_s": phases.get("faststream", {}).get("events_per_s"),
        "faststream10_events_per_s": phases.get("faststream10", {}).get("events_per_s"),
        "comparison": comparison(runs, chosen),
        "rounds": bench.args.rounds,
        "latency_rate_offered": phases.get("latency", {}).get("rate_offered"),
        "latency_rate_achieved": phases.get("latency", {}).get("rate_achieved"),
        "latency_max_wait": phases.get("latency", {}).get("max_wait"),
        "workers": workers,
        "destinations": bench.args.destinations,
        "partner_procs": bench.args.partner_procs,
        "bench_seconds": round(wall, 1),
        "complete": not bench.failed,
        "profiled": bench.args.profile is not None,
        "iris_build": "source" if bench.args.from_source else "mypyc",
        "warnings": bench.warnings,
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "uvloop": _has("uvloop"), "hiredis": _has("hiredis"),
            "redis_server": getattr(bench, "redis_version", None),
            "background_busy_pct": getattr(bench, "background_pct", None),
            "note": "redis-server, the partner, the bench and the worker(s) share these cores",
        },
        "pids": bench.pids,
        "phases": phases,
    }


def _has(module: str) -> bool:
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
        f"{summary['destinations']} destinations, {summary['partner_procs']} partner "
        f"processes, {summary['bench_seconds']:.0f} s in all")
    build = summary.get("iris_build")  # absent from results written before it was recorded
    if build == "source":
        say("iris: from this checkout, as it is (--from-source)")
    elif build == "mypyc":
        say("iris: compiled with mypyc (IRIS_MYPYC=1), as the container image ships it")
    if phases:
        _print_phases(phases)
    print_comparison(summary["comparison"])
    if "scale_out" in summary:
        print_scale_out(summary["scale_out"])
    print_lines(summary)


def _print_phases(phases: dict[str, dict[str, Any]]) -> None:
    say("redis-server, the partner and the worker(s) share these cores. CPU: % of one core, "
        "average/peak (per 0.5 s) over the phase;")
    in_rounds = {name: p for name, p in phases.items() if len(p.get("rounds", ())) > 1}
    if in_rounds:
        count = max(len(p["rounds"]) for p in in_rounds.values())
        which = ("each pair of rows is the round of the median iris/FastStream events/s ratio "
                 "(a phase without its twin: its median round by events/s)"
                 if any(name.startswith("faststream") for name in in_rounds)
                 else "each row is the phase's median round by events/s")
        say(f"these runs ran in {count} rounds; {which}: "
            + ", ".join(f"{name} round {p['round']}" for name, p in in_rounds.items()) + ".")
    say("'bench' is this script (the producer in the latency run), 'others' is CPU used by "
        "processes not ours (plus unattributed kernel time), 'all' is the whole machine.")
    head = (f"{'phase':<27}{'events':>9}{'secs':>7}{'events/s':>10}{'req/s':>8}{'users/req':>10}"
            f"{'RSS MB':>7}  {'CPU% worker':>11}{'partner':>9}{'redis':>8}{'bench':>8}"
            f"{'others':>7}{'all':>5}")
    table_head(head)
    for name, p in phases.items():
        label = LABELS.get(name, f"iris max_users 1000, K={p.get('workers')}")
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


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_comparison(rows: list[dict[str, Any]]) -> None:
    """iris against the FastStream pipeline, per batch size."""
    if not rows:
        return
    say()
    say("iris vs FastStream (same Redis, partner and events; 'from ready' counts from the "
        "pipeline's readiness; CPU s: the worker process(es)")
    say("and redis-server from spawning the pipeline to the last receipt; cmds/event: Redis's "
        "INFO commandstats from start to exit, per event)")
    if any(len(row["ratio_events_per_s_rounds"]) > 1 for row in rows):
        say("iris/peer and the ratios below: the median of the rounds' ratios (the lower middle "
            "one of an even count), each iris run against its FastStream twin; the rows: the "
            "round of the median events/s ratio")
    head = (f"{'max_users':>9}  {'pipeline':<11}{'events':>9}{'events/s':>10}{'from ready':>12}"
            f"{'iris/peer':>11}{'worker CPU s':>14}{'events/CPU-s':>14}{'redis CPU s':>13}"
            f"{'cmds/event':>12}")
    table_head(head)
    for row in rows:
        for side, label in (("iris", "iris"), ("faststream", "FastStream")):
            s = row[side]
            if s is None:
                continue
            ratio = row["ratio_events_per_s"] if side == "iris" else None
            say(f"{row['max_users']:>9}  {label:<11}{s['events']:>9,}"
                f"{s['events_per_s']:>10,.0f}{_num(s['events_per_s_after_ready'], ',.0f'):>12}"
                f"{(f'{ratio:.2f}x' if ratio else '-'):>11}"
                f"{_num(s['worker_cpu_s'], '.2f'):>14}"
                f"{_num(s['events_per_worker_cpu_s'], ',.0f'):>14}"
                f"{_num(s['redis_cpu_s'], '.2f'):>13}"
                f"{_num(s['redis_commands_per_event'], '.4f'):>12}")
    say("top Redis commands (calls):")
    for row in rows:
        for side, label in (("iris", "iris"), ("faststream", "FastStream")):
            s = row[side]
            if s is not None:
                top = ", ".join(f"{name} {calls:,}" for name, calls in s["top_commands"])
                say(f"  {label} max_users {row['max_users']}: {top or '-'}")
    for row in rows:
        if row["ratio_events_per_s"] is not None:
            say(f"iris/FastStream at max_users {row['max_users']}: "
                f"{row['ratio_events_per_s']:.2f}x events/s "
                f"({_num(row['ratio_events_per_s_after_ready'], '.2f')}x from readiness), "
                f"{_num(row['ratio_events_per_worker_cpu_s'], '.2f')}x events per worker "
                "CPU-second")
            if len(row["ratio_events_per_s_rounds"]) > 1:
                say("  the rounds' ratios, round by round: " + "; ".join(
                    f"{label} " + ", ".join(_num(r, ".2f") for r in row[f"{name}_rounds"])
                    for name, (_, label) in RATIOS.items()))


def print_lines(summary: dict[str, Any]) -> None:
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
            f"10 ({summary['aam10_events']:,} events)")
    if summary["p50_ms"] is not None:
        say(f"latency XADD->partner at {summary['latency_rate_achieved']:,.0f} events/s "
            f"(max_wait {summary['latency_max_wait']:g} s): p50 {summary['p50_ms']} ms, "
            f"p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms"
            + (f" (p99 {summary['p99_ms_after_warmup']} ms without the first 2 s)"
               if summary["p99_ms_after_warmup"] is not None else ""))
    if summary["max_rss_mb"] is not None:
        say(f"worker peak RSS (VmHWM) in the {summary['events']:,}-event runs: "
            f"{summary['max_rss_mb']:.0f} MB")
    if len(summary["workers"]) > 1:
        say("scale-out: " + ", ".join(f"K={k}: {v:,.0f} events/s"
                                      for k, v in summary["workers"].items() if v))
    for text in summary["warnings"]:
        say(f"WARNING: {text}")
