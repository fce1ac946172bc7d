"""The delivery policy, transition by transition, and the bounded backoffs: every action of
state that matters, with a jitter that always draws the top of its range."""

from __future__ import annotations

import pytest

from iris.auth.waits import Waits
from iris.core.circuit import Feed
from iris.core.dead_letters import REDIRECTED, REJECTED, RETRIES_EXHAUSTED
from iris.core.policy import Dead, DeliveryPolicy, Done, Send, Split, Wait
from iris.core.retry import Action, Outcome, doubling, failure, paused
from iris.errors import TokenError


def policy(attempts: int = 0, refreshed: bool = False, max_attempts: int = 3) -> DeliveryPolicy:
    p = DeliveryPolicy(max_attempts=max_attempts, base_delay=0.5, max_delay=8.0,
                       jitter=lambda _low, high: high)
    p.attempts, p.refreshed = attempts, refreshed
    return p


def answer(action: Action, retry_after: float | None = None) -> Outcome:
    return Outcome(action, "x", None, retry_after)


# (attempts, refreshed), outcome, probe -> step, breaker feed, attempts and refreshed after
TABLE = [
    ((0, False), answer(Action.DELIVERED), False, Done(), Feed.SUCCESS, 0, False),
    ((2, True), answer(Action.DELIVERED), False, Done(), Feed.SUCCESS, 2, True),
    ((0, False), answer(Action.DELIVERED), True, Done(), Feed.SUCCESS, 0, False),
    ((0, False), answer(Action.REFRESH), False, Send(), Feed.SUCCESS, 1, True),
    # the refresh's one more request goes out even on the last attempt
    ((2, False), answer(Action.REFRESH), False, Send(), Feed.SUCCESS, 3, True),
    ((1, True), answer(Action.REFRESH), False, Dead(REJECTED), Feed.SUCCESS, 2, True),
    ((0, False), answer(Action.REJECT), False, Dead(REJECTED), Feed.SUCCESS, 0, False),
    ((0, False), answer(Action.REDIRECTED), False, Dead(REDIRECTED), Feed.SUCCESS, 0, False),
    ((1, False), answer(Action.SPLIT), False, Split(), Feed.SUCCESS, 1, False),
    # a pause makes no request: no attempt, the probe's turn goes back, at least 1 s
    ((2, False), paused("refused", 30.0), False, Wait(30.0, retry=False), Feed.RELEASE, 2, False),
    ((2, False), paused("refused", None), True, Wait(1.0, retry=False), Feed.RELEASE, 2, False),
    ((0, False), paused("refused", 0.2), False, Wait(1.0, retry=False), Feed.RELEASE, 0, False),
    # retries: full jitter up to base * 2^(attempt-1), capped; Retry-After lengthens only
    ((0, False), answer(Action.RETRY), False, Wait(0.5, retry=True), Feed.FAILURE, 1, False),
    ((1, False), failure("timeout", "t"), False, Wait(1.0, retry=True), Feed.FAILURE, 2, False),
    ((1, False), answer(Action.RETRY, 5.0), False, Wait(5.0, retry=True), Feed.FAILURE, 2, False),
    ((1, False), answer(Action.RETRY, 0.1), False, Wait(1.0, retry=True), Feed.FAILURE, 2, False),
    ((1, False), answer(Action.RETRY, 60.0), False, Wait(8.0, retry=True), Feed.FAILURE, 2, False),
    ((2, False), answer(Action.RETRY), False, Dead(RETRIES_EXHAUSTED), Feed.FAILURE, 3, False),
    # the circuit's probe spends no attempt, even on what would be the last one
    ((2, False), answer(Action.RETRY), True, Wait(1.0, retry=True), Feed.FAILURE, 2, False),
    ((0, False), answer(Action.RETRY), True, Wait(0.5, retry=True), Feed.FAILURE, 0, False),
    # a probe the partner answers is an ordinary request: the circuit closes, the answer counts
    ((1, False), answer(Action.REFRESH), True, Send(), Feed.SUCCESS, 2, True),
    ((1, False), answer(Action.REJECT), True, Dead(REJECTED), Feed.SUCCESS, 1, False),
    ((1, False), answer(Action.REDIRECTED), True, Dead(REDIRECTED), Feed.SUCCESS, 1, False),
    ((1, False), answer(Action.SPLIT), True, Split(), Feed.SUCCESS, 1, False),
    # past the limit after a refresh's extra request: the next failure ends it
    ((3, True), answer(Action.RETRY), False, Dead(RETRIES_EXHAUSTED), Feed.FAILURE, 4, True),
    # ... unless it failed as the circuit's probe (before policy.py: dead-lettered here)
    ((3, True), answer(Action.RETRY), True, Wait(2.0, retry=True), Feed.FAILURE, 3, True),
]


@pytest.mark.parametrize(("state", "outcome", "probe", "step", "feed", "attempts", "refreshed"),
                         TABLE)
def test_transition(state: tuple[int, bool], outcome: Outcome, probe: bool, step: object,
                    feed: Feed, attempts: int, refreshed: bool) -> None:
    p = policy(*state)
    decision = p.next(outcome, probe)
    assert (decision.step, decision.feed) == (step, feed)
    assert (p.attempts, p.refreshed) == (attempts, refreshed)


def test_every_action_has_a_row() -> None:
    assert {row[1].action for row in TABLE} == set(Action)


def test_a_batch_spends_exactly_max_attempts_requests() -> None:
    p = policy(max_attempts=4)
    steps = [p.next(failure("timeout", "t")).step for _ in range(4)]
    assert [type(s) for s in steps] == [Wait, Wait, Wait, Dead]
    assert steps[-1] == Dead(RETRIES_EXHAUSTED)


def test_pauses_and_probes_between_retries_never_exhaust_a_batch() -> None:
    p = policy(max_attempts=2)
    assert isinstance(p.next(failure("timeout", "t")).step, Wait)
    for _ in range(50):  # a long outage: the circuit probes, the token endpoint refuses
        assert isinstance(p.next(failure("timeout", "t"), probe=True).step, Wait)
        assert isinstance(p.next(paused("refused", 5.0)).step, Wait)
    assert p.next(answer(Action.DELIVERED)).step == Done()


def test_one_attempt_means_one_failed_request_plus_a_refresh() -> None:
    p = policy(max_attempts=1)
    assert p.next(answer(Action.REFRESH)).step == Send()
    assert p.next(answer(Action.RETRY)).step == Dead(RETRIES_EXHAUSTED)
    p = policy(max_attempts=1)
    assert p.next(failure("timeout", "t")).step == Dead(RETRIES_EXHAUSTED)


def test_a_huge_max_attempts_never_overflows_the_backoff() -> None:
    """An operator's "retry for ever" (max_attempts: 100000) past 1,024 attempts."""
    p = policy(attempts=5000, max_attempts=100_000)
    assert p.next(failure("timeout", "t")).step == Wait(8.0, retry=True)
    assert doubling(1.0, 10**9, 60.0) == 60.0 and doubling(0.05, -1, 2.0) == 0.05


def test_a_token_endpoint_failing_for_days_keeps_a_bounded_wait() -> None:
    """1,024 failures in a row (about 17 hours at the longest wait) used to overflow."""
    now = [0.0]
    waits = Waits("423", lambda: now[0])
    for _ in range(2000):
        waits.failed(TokenError("token endpoint timed out"))
        now[0] = waits.retry_at
    before = now[0]
    waits.failed(TokenError("token endpoint timed out"))
    assert waits.retry_at - before == 60.0
