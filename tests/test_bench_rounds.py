"""``make bench``'s rounds (``benchmarks/report.py``): each phase shown is its median round, and
each iris/FastStream ratio is the median of the ratios of the rounds where both ran, so that one
noisy pair, or one failed run, does not decide the comparison."""

from __future__ import annotations

from typing import Any

from benchmarks.report import comparison, median_round


def _run(events_per_s: float, cpu_s: float = 1.0) -> dict[str, Any]:
    return {"phase": "x", "events": 1000, "seconds": 1000 / events_per_s,
            "events_per_s": events_per_s, "events_per_s_after_ready": events_per_s * 1.1,
            "worker_cpu_s": cpu_s, "events_per_worker_cpu_s": 1000 / cpu_s,
            "redis_cpu_s": 0.1, "redis_commands": {"total": 10, "per_event": 0.01, "top": []}}


def test_one_round_is_the_phase_as_it_ran() -> None:
    run = _run(100.0)
    assert median_round([run]) is run
    assert median_round([None]) is None


def test_the_median_round_is_shown_with_every_round() -> None:
    phase = median_round([_run(300.0), None, _run(100.0), _run(200.0)])
    assert phase is not None
    assert phase["events_per_s"] == 200.0  # of 100, 200, 300; the failed round left out
    assert [r and r["events_per_s"] for r in phase["rounds"]] == [300.0, None, 100.0, 200.0]
    even = median_round([_run(300.0), _run(100.0)])
    assert even is not None and even["events_per_s"] == 100.0  # the lower middle one


def test_each_ratio_is_the_median_of_the_rounds_ratios() -> None:
    runs = {
        "aam10": [_run(150.0), _run(300.0), _run(130.0)],
        "faststream10": [_run(100.0), _run(100.0), _run(100.0)],
    }
    (row,) = comparison(runs)
    assert row["max_users"] == 10
    assert row["ratio_events_per_s_rounds"] == [1.5, 3.0, 1.3]
    assert row["ratio_events_per_s"] == 1.5  # not 3.0, the one lucky round
    assert row["iris"]["events_per_s"] == 150.0  # each side: its median round
    assert row["faststream"]["events_per_s"] == 100.0


def test_a_round_where_one_side_failed_is_left_out_of_the_ratios() -> None:
    runs = {
        "iris": [_run(200.0), _run(900.0), _run(220.0)],
        "faststream": [_run(100.0), None, _run(100.0)],
    }
    (row,) = comparison(runs)
    assert row["ratio_events_per_s_rounds"] == [2.0, 2.2]
    assert row["ratio_events_per_s"] == 2.1
    assert row["ratio_events_per_worker_cpu_s_rounds"] == [1.0, 1.0]


def test_a_side_that_never_ran_gives_no_ratio() -> None:
    (row,) = comparison({"iris": [_run(200.0)], "faststream": [None]})
    assert row["faststream"] is None
    assert row["ratio_events_per_s"] is None and row["ratio_events_per_s_rounds"] == []
