"""The log line of written dead letters names every kind of error they carry, not only the
first (an operator trial read "dead-lettered 4 event(s) as invalid_event: missing uuid" for
three events missing a uuid and one missing a dpuuid)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, Counter

from iris.core.dead_letters import INVALID_EVENT, report_written
from iris.core.records import DeadLetter


def dead(error: str, destination: str) -> DeadLetter:
    return DeadLetter({"segment": "s"}, INVALID_EVENT, "1-0", destination, error=error)


def test_a_group_with_several_errors_says_so(caplog: pytest.LogCaptureFixture) -> None:
    counter = Counter("dead", "d", ["destination", "reason"], registry=CollectorRegistry())
    caplog.set_level(logging.INFO, logger="iris.core.dead_letters")
    report_written([dead("missing uuid", "log-a")] * 3 + [dead("missing dpuuid", "log-a")],
                   counter)
    report_written([dead("missing uuid", "log-b")] * 2, counter)
    lines = [r.getMessage() for r in caplog.records]
    assert ("dead-lettered 4 event(s) for log-a as invalid_event: missing uuid (and 1 other "
            "error(s): see the dead-letter stream)") in lines
    assert "dead-lettered 2 event(s) for log-b as invalid_event: missing uuid" in lines
    assert counter.labels("log-a", INVALID_EVENT)._value.get() == 4
