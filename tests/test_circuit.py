"""The circuit breaker, on a fake clock: when it opens, lets one probe through, and closes."""

from __future__ import annotations

import logging

import pytest

from iris.core.circuit import CircuitBreaker, Feed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[bool]) -> CircuitBreaker:
    return CircuitBreaker("423", failure_threshold=3, cooldown=10.0, on_change=changes.append,
                          clock=clock)


def test_opens_after_the_threshold_of_consecutive_failures_only() -> None:
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    b.feed(Feed.FAILURE, False)
    b.feed(Feed.FAILURE, False)
    b.feed(Feed.SUCCESS, False)  # a success resets the count
    b.feed(Feed.FAILURE, False)
    b.feed(Feed.FAILURE, False)
    assert (b.is_open, b.turn(), changes) == (False, False, [])
    b.feed(Feed.FAILURE, False)
    assert (b.is_open, changes, b.capacity(8, 0), b.turn()) == (True, [True], 0, None)
    assert b.seconds_to_probe() == 10.0


def test_after_the_cooldown_one_probe_at_a_time() -> None:
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(3):
        b.feed(Feed.FAILURE, False)
    clock.now += 10.0
    assert b.capacity(8, 0) == 1 and b.capacity(8, 1) == 0  # nothing else in flight
    assert b.turn() is True  # the probe
    assert b.turn() is None  # a second request waits for the probe's answer
    b.feed(Feed.RELEASE, True)  # the probe made no request (a paused token): the turn goes back
    assert b.turn() is True
    b.feed(Feed.FAILURE, True)  # a failed probe: open again, for a whole cooldown
    assert (b.turn(), b.seconds_to_probe()) == (None, 10.0)
    clock.now += 10.0
    assert b.turn() is True
    b.feed(Feed.SUCCESS, True)
    assert (b.is_open, changes, b.turn(), b.capacity(8, 3)) == (False, [True, False], False, 8)


def test_the_warning_names_the_last_failure(caplog: pytest.LogCaptureFixture) -> None:
    """An operator sees why the circuit opened without searching the log for it."""
    b = breaker(Clock(), [])
    b.feed(Feed.FAILURE, False, "HTTP 503: busy")
    b.feed(Feed.FAILURE, False, "timeout after 30 s")
    with caplog.at_level(logging.WARNING, logger="iris.core.circuit"):
        b.feed(Feed.FAILURE, False, "cannot connect to p.example:443: connection refused")
    assert [r.getMessage() for r in caplog.records] == [
        "destination 423 failed 3 times in a row (the last: cannot connect to p.example:443: "
        "connection refused): circuit open, pausing reads for 10 s"]


def test_release_of_a_normal_turn_changes_nothing() -> None:
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    b.feed(Feed.RELEASE, False)
    assert (b.is_open, b.turn(), changes) == (False, False, [])
