"""What to do next with one batch: the delivery policy as a value, tested transition by transition.

The publisher asks ``DeliveryPolicy.next(outcome, probe)`` after each answer ``retry.classify``
gave (or the sender's own ``failure``/``paused`` outcomes) and carries out the step it returns:

    DELIVERED                    -> Done                  breaker: success
    REFRESH (first time)         -> Send (new token)      breaker: success
    REFRESH (again), REJECT      -> Dead(rejected)        breaker: success
    REDIRECTED                   -> Dead(redirected)      breaker: success
    SPLIT                        -> Split                 breaker: success
    PAUSE                        -> Wait(>= 1 s), no attempt spent         breaker: release
    RETRY as the circuit's probe -> Wait(backoff), no attempt spent        breaker: failure
    RETRY, attempts left         -> Wait(backoff, Retry-After), attempt spent  breaker: failure
    RETRY, last attempt          -> Dead(retries_exhausted)                breaker: failure

Attempts count the requests a batch spent: a paused destination makes no request, and a probe
of an open circuit that fails is the circuit's, not the batch's, so an outage of any length
dead-letters nothing. ``max_attempts`` bounds the failed requests; a 401 gets its one refresh
(once per batch) even on the last attempt, so a batch may send ``max_attempts + 1`` requests.
Each half of a split starts a policy of its own (the partner answered: the halves are new
requests, not retries).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from iris.core.circuit import Feed
from iris.core.dead_letters import REDIRECTED, REJECTED, RETRIES_EXHAUSTED
from iris.core.retry import Action, Outcome, backoff

PAUSE_FLOOR = 1.0  # seconds: a pause is re-checked at most once a second

Jitter = Callable[[float, float], float]


@dataclass(frozen=True, slots=True)
class Send:
    """Send the batch again now (a refreshed token)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait ``seconds``, then send again; ``retry`` says whether it counts as a retry."""

    seconds: float
    retry: bool


@dataclass(frozen=True, slots=True)
class Split:
    """Send each half of the batch on its own (413)."""


@dataclass(frozen=True, slots=True)
class Dead:
    """Dead-letter the batch's events with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """Delivered."""


Step = Send | Wait | Split | Dead | Done


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    feed: Feed


@dataclass(slots=True)
class DeliveryPolicy:
    """One batch's progress: attempts spent, whether its token was refreshed.

    ``max_attempts`` bounds the requests a batch may spend; ``base_delay`` and ``max_delay``
    (seconds) shape the full-jitter backoff; ``jitter(low, high)`` draws the wait (tests pass a
    deterministic one).
    """

    max_attempts: int
    base_delay: float
    max_delay: float
    jitter: Jitter = random.uniform
    attempts: int = 0
    refreshed: bool = False

    def next(self, outcome: Outcome, probe: bool = False) -> Decision:
        """The step after ``outcome``; ``probe`` says the request went as the circuit's probe."""
        match outcome.action:
            case Action.DELIVERED:
                return Decision(Done(), Feed.SUCCESS)
            case Action.REFRESH:
                return self._refresh()
            case Action.REJECT:
                return Decision(Dead(REJECTED), Feed.SUCCESS)
            case Action.REDIRECTED:
                return Decision(Dead(REDIRECTED), Feed.SUCCESS)
            case Action.SPLIT:
                return Decision(Split(), Feed.SUCCESS)
            case Action.PAUSE:
                return self._pause(outcome)
            case Action.RETRY:
                return self._retry(outcome, probe)

    def _refresh(self) -> Decision:
        """401: one new token and one more request; a second 401 is a rejection."""
        self.attempts += 1
        if self.refreshed:
            return Decision(Dead(REJECTED), Feed.SUCCESS)
        self.refreshed = True
        return Decision(Send(), Feed.SUCCESS)

    def _pause(self, outcome: Outcome) -> Decision:
        """No request was made: wait as long as the pause said (at least a second), no attempt
        spent; the token cache says whether the pause is over when the batch tries again."""
        return Decision(Wait(max(outcome.retry_after or 0.0, PAUSE_FLOOR), retry=False),
                        Feed.RELEASE)

    def _retry(self, outcome: Outcome, probe: bool) -> Decision:
        """Back off and retry until ``max_attempts``; a probe's failure spends no attempt."""
        if not probe:
            self.attempts += 1
            if self.attempts >= self.max_attempts:
                return Decision(Dead(RETRIES_EXHAUSTED), Feed.FAILURE)
        delay = backoff(max(self.attempts, 1), self.base_delay, self.max_delay,
                        outcome.retry_after, self.jitter)
        return Decision(Wait(delay, retry=True), Feed.FAILURE)
