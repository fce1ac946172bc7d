"""``make bench``: end-to-end throughput, CPU, Redis work, latency and memory of iris, against a
pipeline built with FastStream and a naive loop.

Everything runs on this machine, in separate processes, and is torn down on exit or Ctrl-C:

- a private ``redis-server`` (a free port, never 6379);
- a keep-alive HTTP partner (``benchmarks/partner.py``): ``--partner-procs`` processes on one
  port (``SO_REUSEPORT``), so that it is not the bottleneck, with an OAuth 2 token endpoint per
  destination; it counts users, segment changes and distinct users (duplicates show) and XADD
  → receipt latency;
- ``iris run -c CONFIG`` worker processes (``python -m iris run``), exactly as deployed, and the
  FastStream pipeline (``benchmarks/faststream_peer.py``) in its own process.

Phases (each on a flushed Redis, so none sees another's entries):

1. **iris**: preload N events (default 200,000; pipelined XADD) over D destinations (disjoint
   segment mappings: one destination per event; every event a distinct user, so nothing
   collapses), start one worker with ``max_users: 1000``, and time from spawning the worker
   until the partner has received every event.
2. **faststream**: the same events delivered by the FastStream pipeline at ``max_users: 1000``.
3. **aam10** and 4. **faststream10**: both again with AAM's default ``max_users: 10``.
   For each of these four: events/s (from spawning and from readiness), requests/s,
   users/request, the worker's CPU seconds and peak RSS, redis-server's CPU seconds, and Redis
   commands per event (``INFO commandstats`` before and after). These four run ``--rounds``
   times (default 3), each iris run beside its FastStream twin (iris first in odd rounds,
   FastStream first in even ones); each iris/FastStream ratio is the median of the rounds'
   ratios (``benchmarks/report.py``).
5. **naive**: one process: XREADGROUP one entry, one POST (same standard payload, one user,
   cached token, keep-alive), XACK; for a fixed time window. ``ratio`` = iris / naive.
6. **latency**: a steady offered load (``--rate`` events/s for ``--latency-seconds``) with
   ``max_wait: 0.25``: p50/p99/max milliseconds from XADD to receipt at the partner.
7. **scale-out** (``--workers K`` with K > 1): phase 1 again with K workers in one group.
8. **scale-out on a cluster** (``--scale-out K1,K2,...``, only when asked): for each K, K workers
   on the one redis-server, then K workers on a private Redis Cluster of ``--cluster-masters``
   masters (``benchmarks/scale_out.py``); one table.

Prints the tables and writes ``benchmarks/results.json``. The numbers are only meaningful as
ratios on the same machine in the same run: redis-server, the partner and the worker share the
cores, and the CPU columns say who used them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: benchmarks/ and iris/ are at ROOT
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import Bench, PhaseFailed  # noqa: E402
from benchmarks.compiled import BuildFailed  # noqa: E402
from benchmarks.console import progress, say, set_quiet  # noqa: E402
from benchmarks.naive import naive_child  # noqa: E402
from benchmarks.phases import phase_latency, phase_naive, phase_throughput  # noqa: E402
from benchmarks.report import print_table, summarize  # noqa: E402
from benchmarks.scale_out import parse_counts, run_scale_out  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="End-to-end benchmark of iris against a FastStream pipeline and a naive "
                    "one-POST-per-event loop, on a private redis-server and a local HTTP "
                    "partner.")
    p.add_argument("--events", type=int, default=200_000,
                   help="events preloaded for the max_users 1000 runs, iris and FastStream "
                        "(default 200000)")
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
    p.add_argument("--scale-out", type=parse_counts, default=None, metavar="K1,K2,...",
                   help="also, for each K: K workers on the one redis-server, then K workers on "
                        "a private Redis Cluster (--events events each); one table")
    p.add_argument("--cluster-masters", type=int, default=3,
                   help="masters of the --scale-out cluster (default 3, at least 3)")
    p.add_argument("--aam-events", type=int, default=None,
                   help="events for the max_users 10 runs, iris and FastStream (default: "
                        "min(events, 100000))")
    p.add_argument("--naive-seconds", type=float, default=10,
                   help="time window of the naive baseline (default 10)")
    p.add_argument("--naive-events", type=int, default=None,
                   help="events preloaded for the naive baseline (default: min(events, 60000))")
    p.add_argument("--read-count", type=int, default=1000,
                   help="entries per read: stream.read_count of the workers and max_records of "
                        "the FastStream pipeline (default 1000)")
    p.add_argument("--max-in-flight", type=int, default=8,
                   help="limits.max_in_flight per destination (default 8)")
    p.add_argument("--requests-per-second", type=float, default=100_000,
                   help="limits.requests_per_second per destination (default 100000)")
    p.add_argument("--partner-procs", type=int, default=max(2, os.cpu_count() or 1),
                   help="processes of the HTTP partner, on one port (default: the CPU count, "
                        "at least 2)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of the four iris/FastStream runs, each iris run beside its "
                        "FastStream twin; each ratio is the median of the rounds' ratios (the "
                        "lower middle one for an even count), and the rows shown are the round "
                        "of the median events/s ratio (default 3; 1 with --profile)")
    p.add_argument("--skip", action="append", default=[],
                   choices=["iris", "aam10", "faststream", "naive", "latency"],
                   help="leave a phase out (repeatable; faststream: both FastStream runs)")
    p.add_argument("--profile", type=Path, default=None, metavar="FILE",
                   help="run the throughput run's worker under cProfile, write the stats to "
                        "FILE and print the top functions (slows the worker down)")
    p.add_argument("--profile-phase", choices=["iris", "aam10"], default="iris",
                   help="the iris run --profile profiles: max_users 1000 (iris, the default) "
                        "or max_users 10 (aam10)")
    p.add_argument("--from-source", action="store_true",
                   help="run the iris workers from this checkout as it is: pure Python, "
                        "unless compiled modules sit beside its sources (by default they run "
                        "iris compiled with mypyc, as the container image ships it: built "
                        "once per source version into .build/, a minute or two; --profile "
                        "implies this)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"results file (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    p.add_argument("--json", action="store_true",
                   help="print the results JSON on stdout (the table goes to stderr)")
    p.add_argument("--naive-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.aam_events is None:
        args.aam_events = min(args.events, 100_000)
    if args.naive_events is None:
        args.naive_events = min(args.events, 60_000)
    if args.profile is not None:
        args.from_source = True  # cProfile sees nothing inside compiled modules
    if args.rounds is None:
        args.rounds = 1 if args.profile is not None else 3
    elif args.profile is not None and args.rounds > 1:
        p.error("--profile profiles one run: leave --rounds out (or give 1)")
    for name in ("events", "destinations", "workers", "aam_events", "naive_events",
                 "partner_procs", "rounds"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.cluster_masters < 3:
        p.error("--cluster-masters must be at least 3 (redis-cli --cluster create needs 3)")
    return args


class Step(NamedTuple):
    name: str  # the phase (the key of its results)
    round: int  # 1, 2, ... for the rounds of the iris/FastStream runs; 0 for a phase run once
    run: Callable[[], Any]


def plan(bench: Bench, args: argparse.Namespace) -> list[Step]:
    """The phases of this run, in order: the four iris/FastStream runs ``--rounds`` times, each
    iris run beside its FastStream twin (iris first in odd rounds, FastStream first in even
    ones, so that neither always runs first), then the phases run once."""
    def throughput(name: str, pipeline: str, events: int, max_users: int, workers: int = 1,
                   number: int = 0) -> Step:
        return Step(name, number, lambda: phase_throughput(
            bench, name, pipeline=pipeline, events=events, workers=workers,
            max_users=max_users))

    pairs = ((1000, args.events, (("iris", "iris"), ("faststream", "faststream"))),
             (10, args.aam_events, (("aam10", "iris"), ("faststream10", "faststream"))))
    steps = []
    for number in range(1, args.rounds + 1):
        for max_users, events, pair in pairs:
            steps += [throughput(name, pipeline, events, max_users, number=number)
                      for name, pipeline in (pair if number % 2 else pair[::-1])]
    steps += [
        Step("naive", 0, lambda: phase_naive(bench)),
        Step("latency", 0, lambda: phase_latency(bench)),
    ]
    if args.workers > 1:
        steps.append(throughput(f"scale{args.workers}", "iris", args.events, 1000,
                                workers=args.workers))
    skipped = set(args.skip) | ({"faststream10"} if "faststream" in args.skip else set())
    return [step for step in steps if step.name not in skipped]


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_child:
        naive_child()
        return 0
    set_quiet(args.json)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any] | None]] = {}  # phase → its result in each round
    scale_out: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="iris-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            announced = 0
            for step in plan(bench, args):
                if args.rounds > 1 and step.round > announced:
                    announced = step.round
                    progress(f"round {step.round} of {args.rounds}")
                results = runs.setdefault(step.name, [])
                results.append(None)  # a failed run stays None: the rounds stay aligned
                try:
                    results[-1] = step.run()
                except PhaseFailed as exc:
                    bench.failed = True
                    bench.warn(f"{step.name} failed: {exc}")
            if args.scale_out:
                scale_out = run_scale_out(bench, args)
        except BuildFailed as exc:
            progress(f"error: {exc}\n--from-source runs iris from this checkout without "
                     "compiling it")
            return 1
        except KeyboardInterrupt:
            progress("interrupted; stopping everything")
            return 130
        except SystemExit:
            progress("terminated; stopping everything")
            raise
        finally:
            bench.close()
    summary = summarize(bench, runs, time.monotonic() - started)
    if scale_out is not None:
        summary["scale_out"] = scale_out
        summary["pids"] += scale_out["pids"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    say(f"results written to {args.output}")
    if args.json:
        print(json.dumps(summary, indent=2), flush=True)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
