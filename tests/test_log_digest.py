"""A flood of retries or dead letters costs at most one log line per kind every 10 s, and what a
burst leaves unsaid is still written: by the next line, or by ``flush_due`` (the worker's
upkeep) once 10 s have passed, when nothing follows the burst. An operator's trial saw "1
request(s) to retry" for a burst of 33, and nothing more."""

from __future__ import annotations

import logging

import pytest

from iris.core.log_digest import LogDigest, flush_due


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "iris.test.digest"]


def test_a_burst_is_summed_up_once_its_10_s_are_over(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    digest = LogDigest(logging.getLogger("iris.test.digest"), logging.WARNING,
                       "%d to retry (%s)", "%d retried in the last %.0f s; last: %s", clock=clock)
    caplog.set_level(logging.INFO)
    digest.add(1, "503")
    for second in range(1, 33):  # 32 more within the next 3.2 s: summed, not logged
        clock.now = 100 + second / 10
        digest.add(1, f"503 #{second}")
    assert lines(caplog) == ["1 to retry (503)"]
    clock.now = 105
    flush_due()  # not yet: at most one line every 10 s
    assert len(lines(caplog)) == 1
    clock.now = 110
    flush_due()  # nothing followed the burst: its sum is written now
    assert lines(caplog) == ["1 to retry (503)", "32 retried in the last 10 s; last: 503 #32"]
    clock.now = 130
    flush_due()  # nothing new: nothing written
    assert len(lines(caplog)) == 2
    digest.add(2, "timeout")  # a line may be written at once again
    assert lines(caplog)[-1] == "2 retried in the last 20 s; last: timeout"
