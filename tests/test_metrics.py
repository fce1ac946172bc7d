"""iris.runtime.metrics: request duration buckets that reach past the configured timeouts, and every
destination's request series present from start."""

from __future__ import annotations

import pytest

from iris.runtime.metrics import SHORT_DURATION_BUCKETS, Metrics, duration_buckets


@pytest.mark.parametrize(("longest", "beyond_ten"), [
    (5, ()),
    (10, (15.0,)),
    (14, (15.0,)),
    (30, (15.0, 20.0, 30.0, 45.0)),
    (31, (15.0, 20.0, 30.0, 45.0)),
    (60, (15.0, 20.0, 30.0, 45.0, 60.0, 90.0)),
    (3600, (15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 450.0, 600.0, 900.0,
            1200.0, 1800.0, 2700.0, 3600.0, 3601.0)),
    (5000.5, (15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 450.0, 600.0,
              900.0, 1200.0, 1800.0, 2700.0, 3600.0, 5001.0)),
])
def test_duration_buckets_reach_past_the_longest_timeout(longest: float,
                                                         beyond_ten: tuple[float, ...]) -> None:
    assert duration_buckets(longest) == SHORT_DURATION_BUCKETS + beyond_ten
    assert SHORT_DURATION_BUCKETS[-1] == 10.0 and duration_buckets(longest)[-1] > longest


def bucket(metrics: Metrics, destination: str, le: str) -> float | None:
    return metrics.registry.get_sample_value("iris_request_duration_seconds_bucket",
                                             {"destination": destination, "le": le})


def test_a_14_second_request_is_counted_below_15() -> None:
    metrics = Metrics(["423"], "s", "g", longest_timeout=30)
    metrics.request_duration.labels("423").observe(14.2)
    assert (bucket(metrics, "423", "10.0"), bucket(metrics, "423", "15.0")) == (0.0, 1.0)
    assert bucket(metrics, "423", "45.0") == 1.0 and bucket(metrics, "423", "60.0") is None


def test_the_default_covers_the_default_timeout() -> None:
    metrics = Metrics(["423"], "s", "g")
    assert bucket(metrics, "423", "45.0") == 0.0  # a 30 s timeout lands in a finite bucket
    metrics = Metrics(["423"], "s", "g", longest_timeout=120)
    assert bucket(metrics, "423", "180.0") == 0.0


def test_every_destination_has_its_request_series_from_start() -> None:
    metrics = Metrics(["423", "424"], "s", "g")
    for dest in ("423", "424"):
        assert metrics.registry.get_sample_value(
            "iris_requests_total", {"destination": dest, "code": "200"}) == 0.0
        assert metrics.registry.get_sample_value(
            "iris_request_duration_seconds_count", {"destination": dest}) == 0.0
    text = metrics.render().decode()
    assert 'iris_requests_total{code="200",destination="424"} 0.0' in text
