"""Why a destination waits for its token, and until when.

The token manager decides *when* to wait; this keeps *what* a wait is apart from it, so the
two kinds cannot blur: a refusal pauses the destination (``until`` comes from the token store,
shared by every replica, and is looked at again every ``PAUSE_RECHECK`` seconds in case it was
lifted early), while any other failed token request only backs off, 1 s doubling to
``MAX_WAIT``, and the current token is still served while it is valid. Each wait logs once
when it starts and once when it ends, tells ``on_pause`` (readiness and the metric), and
answers callers with the ``TokenError`` that says how long to wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from iris.core.retry import doubling
from iris.errors import TokenError

log = logging.getLogger("iris.auth.tokens")  # the logger operators already filter on

PAUSE_RECHECK = 5.0  # seconds between looks at whether a pause was lifted early
MAX_WAIT = 60.0  # seconds: the longest wait between token requests after failures
REFUSED = "paused (token endpoint refused the credentials)"
REJECTED = "paused (the partner refuses the tokens its token endpoint issues)"
REJECTED_TOKEN = "rejected_token"  # a pause's error code: the partner refused fresh tokens

_UNTIL = {  # what ends a pause, by whether the partner (True) or the endpoint refused
    False: "no deliveries until the token endpoint accepts the credentials (check them with "
           "`iris auth test`)",
    True: "no deliveries meanwhile; once the partner accepts the tokens, `iris auth test` "
          "resumes deliveries at once (it asks the token endpoint, not the partner)",
}


class Waits:
    """One destination's pause (after a refusal) and backoff (after other failures)."""

    def __init__(self, destination: str, clock: Callable[[], float],
                 on_pause: Callable[[str | None], None] | None = None) -> None:
        self.destination = destination
        self._clock = clock
        self._on_pause = on_pause  # told why the destination waits (None: it does not)
        self.paused_until = 0.0
        self.checked = 0.0  # when the store's pause was last looked at
        self.retry_at = 0.0  # after a failed token request: no other one before this
        self._reason = ""  # the refusal's error code
        self._failures = 0
        self._waiting = ""  # why the destination waits for a token ("" while it does not)

    def recheck_due(self, now: float) -> bool:
        """Paused, and the last look at the store is ``PAUSE_RECHECK`` old."""
        return now < self.paused_until and now >= self.checked + PAUSE_RECHECK

    def remaining(self, now: float, *, has_valid_token: bool) -> float:
        """Seconds before sending again: a pause (at most ``PAUSE_RECHECK``, to look again),
        or the backoff when there is no valid token to send meanwhile."""
        if now < self.paused_until:
            return min(PAUSE_RECHECK, self.paused_until - now)
        if now < self.retry_at and not has_valid_token:
            return self.retry_at - now
        return 0.0

    # -- refusals -----------------------------------------------------------------------------

    def pause(self, until: float, reason: str, *, first: bool, message: str = "") -> None:
        """Paused until ``until`` by a refusal this process saw (``first``) or found recorded."""
        was_paused = self.paused_until > self._clock()
        self.paused_until, self._reason = until, reason
        if first:
            log.error("%s: %s; destination paused for %.0f s: %s", self.destination, message,
                      until - self._clock(), _UNTIL[reason == REJECTED_TOKEN],
                      extra={"destination": self.destination})
        elif not was_paused:
            log.warning("%s: paused until %s by a refusal another worker saw (%s)",
                        self.destination, time.strftime("%H:%M:%S", time.localtime(until)),
                        reason, extra={"destination": self.destination})
        if not was_paused and self._on_pause:
            self._on_pause(REJECTED if reason == REJECTED_TOKEN else REFUSED)

    def paused_error(self, now: float) -> TokenError:
        remaining = max(0.0, self.paused_until - now)
        return TokenError(f"destination paused for {remaining:.0f} s more: the token endpoint "
                          f"refused ({self._reason})", permanent=True,
                          error=self._reason, retry_in=min(remaining, PAUSE_RECHECK))

    # -- other failures -------------------------------------------------------------------------

    def failed(self, error: TokenError) -> None:
        """A token request failed for a reason that may pass: no other one for a while
        (1 s, doubling to ``MAX_WAIT``); the destination waits if it has no valid token."""
        self._failures += 1
        delay = doubling(1.0, self._failures - 1, MAX_WAIT)
        self.retry_at = self._clock() + delay
        if not self._waiting:
            log.warning("%s: no token (%s); trying again in %.0f s, the destination waits "
                        "meanwhile if its token expires", self.destination, error, delay,
                        extra={"destination": self.destination})
        self._waiting = f"waiting for a token: {error}"
        if self._on_pause and not self.paused_until:
            self._on_pause(self._waiting)

    def waiting_error(self, now: float) -> TokenError:
        remaining = max(0.0, self.retry_at - now)
        return TokenError(f"{self._waiting or 'waiting for a token'} (next try in "
                          f"{remaining:.0f} s)", retry_in=max(remaining, 0.1))

    # -- the end of every wait ------------------------------------------------------------------

    def token_taken(self) -> None:
        """A token was issued (here, by another replica, a login or ``iris auth test``): the
        backoff starts over, and a pause or a wait is over."""
        self.retry_at, self._failures = 0.0, 0
        if not (self.paused_until or self._waiting):
            return
        if self.paused_until:
            log.info("%s: the pause is over; resuming deliveries", self.destination)
        else:
            log.info("%s: got a token again", self.destination)
        self.paused_until, self._waiting = 0.0, ""
        if self._on_pause:
            self._on_pause(None)
