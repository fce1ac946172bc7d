"""``make bench``'s rounds (``benchmarks/run.py``, ``benchmarks/report.py``): the iris and
FastStream runs go in rounds, each iris run beside its FastStream twin and neither always first;
each iris/FastStream ratio is the median of the rounds' ratios, and the rows shown are the round
of the median events/s ratio, so that one noisy pair, or one failed run, does not decide the
comparison, and the rows shown agree with the ratio beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench import Bench
from benchmarks.report import chosen_rounds, comparison, summarize
from benchmarks.run import parse_args, plan

Runs = dict[str, list[dict[str, Any] | None]]


def _run(events_per_s: float, cpu_s: float = 1.0, rss: float = 80.0) -> dict[str, Any]:
    return {"phase": "x", "events": 1000, "seconds": 1000 / events_per_s,
            "events_per_s": events_per_s, "events_per_s_after_ready": events_per_s * 1.1,
            "worker_cpu_s": cpu_s, "events_per_worker_cpu_s": 1000 / cpu_s,
            "redis_cpu_s": 0.1, "max_rss_mb": rss,
            "redis_commands": {"total": 10, "per_event": 0.01, "top": []}}


def test_each_ratio_is_the_median_of_the_rounds_ratios_and_the_rows_are_that_round() -> None:
    runs: Runs = {
        "aam10": [_run(150.0), _run(300.0), _run(130.0)],
        "faststream10": [_run(100.0), _run(120.0), _run(50.0)],
    }
    # ratios by round: 1.5, 2.5, 2.6 -> round 2's; the ratio of each side's median round
    # would be 150 / 100 = 1.5, and the mean of the ratios 2.2
    chosen = chosen_rounds(runs)
    assert chosen == {"aam10": 1, "faststream10": 1}
    (row,) = comparison(runs, chosen)
    assert row["max_users"] == 10
    assert row["ratio_events_per_s_rounds"] == [1.5, 2.5, 2.6]
    assert row["ratio_events_per_s"] == 2.5
    assert (row["iris"]["events_per_s"], row["faststream"]["events_per_s"]) == (300.0, 120.0)


def test_rounds_are_paired_by_their_number() -> None:
    runs: Runs = {"iris": [_run(200.0), _run(300.0)],
                  "faststream": [_run(100.0), _run(300.0)]}
    (row,) = comparison(runs, chosen_rounds(runs))
    assert row["ratio_events_per_s_rounds"] == [2.0, 1.0]  # not [0.67, 3.0]


def test_an_even_count_takes_the_lower_middle_ratio_a_round_that_was_measured() -> None:
    runs: Runs = {"iris": [_run(300.0), _run(200.0)],
                  "faststream": [_run(100.0), _run(125.0)]}
    chosen = chosen_rounds(runs)
    (row,) = comparison(runs, chosen)
    assert row["ratio_events_per_s_rounds"] == [3.0, 1.6]
    assert row["ratio_events_per_s"] == 1.6  # round 2's, not the mean 2.3
    assert chosen["iris"] == chosen["faststream"] == 1


def test_readiness_and_cpu_ratios_are_medians_of_their_own_rounds() -> None:
    first = {**_run(150.0, cpu_s=1.0), "events_per_s_after_ready": 400.0}
    runs: Runs = {"iris": [first, _run(300.0, cpu_s=4.0), _run(130.0, cpu_s=2.0)],
                  "faststream": [_run(100.0), _run(120.0), _run(50.0)]}
    (row,) = comparison(runs, chosen_rounds(runs))
    assert row["ratio_events_per_s"] == 2.5  # round 2, the rows shown
    # readiness: 3.64, 2.5, 2.6 by round -> 2.6 (round 3's); CPU: 1.0, 0.25, 0.5 -> 0.5
    assert row["ratio_events_per_s_after_ready_rounds"] == [3.64, 2.5, 2.6]
    assert row["ratio_events_per_s_after_ready"] == 2.6
    assert row["ratio_events_per_worker_cpu_s"] == 0.5


def test_a_round_where_one_side_failed_is_left_out_and_stays_in_its_place() -> None:
    runs: Runs = {
        "iris": [_run(200.0), _run(900.0), _run(330.0)],
        "faststream": [_run(100.0), None, _run(150.0)],
    }
    (row,) = comparison(runs, chosen_rounds(runs))
    assert row["ratio_events_per_s_rounds"] == [2.0, None, 2.2]
    assert row["ratio_events_per_s"] == 2.0
    assert row["ratio_events_per_worker_cpu_s_rounds"] == [1.0, None, 1.0]


def test_a_phase_without_its_twin_shows_its_median_round() -> None:
    assert chosen_rounds({"iris": [_run(300.0), _run(100.0)]}) == {"iris": 1}  # lower middle
    runs: Runs = {"iris": [_run(300.0), _run(100.0), _run(200.0)], "faststream": [None] * 3}
    chosen = chosen_rounds(runs)
    assert chosen == {"iris": 2}
    (row,) = comparison(runs, chosen)
    assert row["iris"]["events_per_s"] == 200.0 and row["faststream"] is None
    assert row["ratio_events_per_s"] is None
    assert row["ratio_events_per_s_rounds"] == [None, None, None]


def test_the_summary_shows_the_chosen_round_with_every_round_and_the_peak_memory_of_all(
        tmp_path: Path) -> None:
    bench = Bench(parse_args([]), tmp_path)
    runs: Runs = {
        "iris": [_run(200.0, rss=70.0), _run(330.0, rss=90.0), None],
        "faststream": [_run(100.0), _run(150.0), _run(100.0)],
        "naive": [_run(10.0)],
    }
    summary = summarize(bench, runs, 1.0)
    iris = summary["phases"]["iris"]
    assert iris["events_per_s"] == 200.0 and iris["round"] == 1  # ratios 2.0, 2.2
    assert [r and r["events_per_s"] for r in iris["rounds"]] == [200.0, 330.0, None]
    assert summary["phases"]["faststream"]["round"] == 1
    assert summary["iris_events_per_s"] == 200.0 and summary["faststream_events_per_s"] == 100.0
    assert summary["max_rss_mb"] == 90.0  # round 2's: the highest, not the round shown's
    assert "rounds" not in summary["phases"]["naive"]  # run once
    assert summary["rounds"] == 3


def _order(*argv: str) -> list[tuple[str, int]]:
    args = parse_args(list(argv))
    return [(step.name, step.round) for step in plan(Bench(args, Path("/nonexistent")), args)]


def test_the_plan_interleaves_the_rounds_and_alternates_who_goes_first() -> None:
    assert _order("--rounds", "2", "--workers", "2") == [
        ("iris", 1), ("faststream", 1), ("aam10", 1), ("faststream10", 1),
        ("faststream", 2), ("iris", 2), ("faststream10", 2), ("aam10", 2),
        ("naive", 0), ("latency", 0), ("scale2", 0),
    ]
    assert _order("--rounds", "3", "--skip", "faststream", "--skip", "naive") == [
        ("iris", 1), ("aam10", 1), ("iris", 2), ("aam10", 2), ("iris", 3), ("aam10", 3),
        ("latency", 0),
    ]


def test_rounds_are_checked_and_a_profile_is_of_one_run() -> None:
    assert parse_args([]).rounds == 3
    assert parse_args(["--profile", "/tmp/p"]).rounds == 1
    assert parse_args(["--profile", "/tmp/p", "--rounds", "1"]).rounds == 1
    for argv in (["--rounds", "0"], ["--rounds", "-2"], ["--profile", "/tmp/p", "--rounds", "3"],
                 ["--profile", "/tmp/p", "--rounds", "0"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
