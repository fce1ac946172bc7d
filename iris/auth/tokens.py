"""One destination's token, shared by every replica through the token store.

Each process keeps the token in memory until its refresh point. Past it, the process looks in
the store: a newer token there (another replica fetched it) is taken as is. Otherwise the one
process that wins the store's lock asks the token endpoint and writes the answer; the others go
on serving the current token until its hard expiry, or wait for the new one. So however many
replicas and batches ask, one token request is made per token lifetime.

A refusal (invalid_client, invalid_grant, ...), or a partner that rejects freshly issued tokens
(401 on a token younger than ``fresh_token_age``), pauses the destination for every replica for
at least ``refusal_pause`` seconds: no delivery, no token request, one clear error in the log.
Any other token trouble (the endpoint down, an answer without a token, the token store away)
makes the destination wait with a growing backoff, serving the current token while it is valid.
Token trouble never spends a batch's attempts, so it never dead-letters events. What a pause
or a backoff is (its state, log lines and errors) lives in ``iris.auth.waits``; this module
decides when one starts and ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from iris.auth.base import Credential
from iris.auth.exchange import Grant
from iris.auth.waits import REJECTED_TOKEN, Waits
from iris.errors import RedisUnavailable, TokenError
from iris.store.tokens import StoredRefresh, StoredToken, TokenStore, digest

log = logging.getLogger(__name__)

RECHECK = 0.1  # seconds between looks at the store while another replica fetches the token
CLOSE_GRACE = 10.0  # seconds a stopping worker waits for a token exchange under way


class TokenSource(Protocol):
    """Where tokens come from: one destination's grant at its token endpoint."""

    configured_refresh: str | None  # a refresh token from the config, if the grant has one
    can_start_over: bool  # a refused refresh token can be replaced by the initial grant

    async def initial(self) -> Grant: ...

    async def refresh(self, refresh_token: str) -> Grant: ...

    def describe(self) -> str:
        """Where tokens come from, for ``iris auth test`` (no secret in it)."""


@dataclass(frozen=True, slots=True)
class Token:
    credential: Credential  # generation = the store's fence number
    refresh_at: float  # epoch: start fetching the next one
    hard_expiry: float  # epoch: stop sending this one
    stored: StoredToken


def schedule(started: float, ttl: float) -> tuple[float, float]:
    """(refresh_at, hard_expiry) for a token requested at ``started`` that lives ``ttl`` s.

    The clock starts when the request was sent, not answered, so transit time only makes us
    early. The hard expiry keeps a margin for the request that carries it to reach the partner.
    """
    margin = min(5.0, ttl * 0.1)
    early = min(60.0, ttl * 0.2) + random.uniform(0, min(5.0, ttl * 0.05))
    return started + ttl - max(early, margin), started + ttl - margin


class TokenManager:
    def __init__(
        self,
        destination: str,
        source: TokenSource,
        store: TokenStore,
        *,
        consumer: str,
        refusal_pause: float = 60.0,
        fresh_token_age: float = 5.0,
        on_token: Callable[[float], None] | None = None,
        on_pause: Callable[[str | None], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.destination = destination
        self.source = source
        self.store = store
        self._consumer = consumer
        self._refusal_pause = refusal_pause
        self._fresh_age = fresh_token_age
        self._on_token = on_token  # told the expiry (epoch) of each token taken into use
        self._clock = clock
        self._waits = Waits(destination, clock, on_pause)  # a refusal's pause, or a backoff
        self._token: Token | None = None
        self._refused: int | None = None  # fence of the last token a partner refused
        self._replacing = False  # the next token taken into use replaces a refused one
        self._replacement: int | None = None  # fence of the token that replaced a refused one
        self._young_refused = 0  # fence of the last token the partner refused while fresh
        self._rejection_seen = False  # a rejected-token pause's record may be in the store
        self._clearing: asyncio.Task[None] | None = None  # accepted() ending that record
        self._inflight: asyncio.Task[Token] | None = None
        self.last_source = ""  # "store" or "endpoint": where the current token came from

    async def credential(self) -> Credential:
        """The header for the next request; ``TokenError`` while the destination is paused or
        waits for a token (``retry_in`` says how long: the caller waits, spending nothing)."""
        token, now, waits = self._token, self._clock(), self._waits
        if token is not None and now < token.refresh_at:
            return token.credential
        if now < waits.paused_until and not waits.recheck_due(now):
            raise waits.paused_error(now)
        current = token is not None and now < token.hard_expiry
        if now < waits.retry_at:
            if current and token is not None:
                return token.credential  # the next token request waits its turn
            raise waits.waiting_error(now)
        if current and token is not None:
            self._start_refresh()  # serve the current token while the next one comes
            return token.credential
        try:
            return (await asyncio.shield(self._start_refresh())).credential
        except TokenError as exc:
            if exc.permanent:
                raise
            raise waits.waiting_error(self._clock()) from None

    async def refused(self, credential: Credential | None, *, blames_token: bool = True) -> bool:
        """The partner answered 401 to ``credential``; True: send again at once, with a new
        token; False: wait (the next ``credential()`` says how long).

        A token the partner blames is replaced, but not before it is ``fresh_token_age`` old:
        a younger one cannot have expired, and asking at once would fetch token after token
        (a partner that refused iris's tokens drew one token request per batch). If its
        replacement is refused too while fresh, the partner refuses the tokens iris gets: the
        destination pauses for every replica, as for a refusal at the token endpoint. So does
        the first token after such a pause, when it is refused that fresh: one token request
        per pause.

        A 401 on a token another request already reported as refused while fresh is that same
        refusal: the batch waits for the replacement (False), and does not spend its one
        refresh on it (a batch in flight beside the reporting one was dead-lettered)."""
        token = self._token
        if token is None or credential is None or (
            credential.generation != token.credential.generation
        ):  # already replaced: the next request carries the current token
            return not (blames_token and credential is not None
                        and credential.generation <= self._young_refused)
        self._token = None
        self._refused = token.credential.generation
        age = self._clock() - token.stored.obtained_at
        young = blames_token and age < self._fresh_age
        if young:
            self._young_refused = token.credential.generation
        if young and (self._replacement == token.credential.generation
                      or await self._issued_after_rejection(token.stored)):
            await self._pause_rejected(age)
            return False
        self._replacing = True
        if not young:
            if await self._joined_pause():
                return False  # another replica paused the destination: this 401 is its cause
            log.info("partner refused the current token of %s (%.0f s old); fetching a new one",
                     self.destination, age)
            return True
        self._waits.retry_at = token.stored.obtained_at + self._fresh_age
        log.info("partner refused the current token of %s, issued %.1f s ago; a new one in "
                 "%.1f s (a token that young has not expired)", self.destination, age,
                 self._fresh_age - age)
        return False

    def accepted(self, credential: Credential | None) -> None:
        """The partner accepted ``credential`` (a delivery). The first token it accepts after
        it had refused fresh ones ends the record of that pause: the next fresh refusal is a
        new streak, and its pause starts again at ``refusal_pause``. Called for every
        delivery: costs one attribute read unless such a record may exist."""
        token = self._token
        if not self._rejection_seen or token is None or credential is None or (
                credential.generation != token.credential.generation):
            return  # an older token: the partner may accept old ones and refuse new ones
        self._rejection_seen = False
        self._clearing = asyncio.get_running_loop().create_task(
            self._end_rejection(token.stored.obtained_at),
            name=f"token-{self.destination}-accepted")
        self._clearing.add_done_callback(_consume_exception)

    async def _end_rejection(self, obtained_at: float) -> None:
        """End the record if the accepted token was issued after that pause ended."""
        try:
            ended = await self.store.end_pause(REJECTED_TOKEN, obtained_at)
        except RedisUnavailable:
            ended = False
        if not ended:
            self._rejection_seen = True  # again at the next delivery

    async def _issued_after_rejection(self, stored: StoredToken) -> bool:
        """``stored`` was issued after a pause for rejected tokens (this replica's or another's)
        had ended, and the partner has accepted no token since: it is that pause's
        replacement. (The record outlives its pause, to count the pauses in a row.)"""
        try:
            pause = await self.store.paused(include_expired=True)
        except RedisUnavailable:
            return False
        if pause is None or pause.error != REJECTED_TOKEN:
            return False
        self._rejection_seen = True
        return stored.obtained_at >= pause.until

    async def _joined_pause(self) -> bool:
        """A pause another replica recorded is running: this one joins it (True)."""
        try:
            await self._raise_if_paused()
        except TokenError:
            return True
        except RedisUnavailable:
            pass
        return False

    async def _pause_rejected(self, age: float) -> None:
        """The partner refused a token that had just replaced a refused one: pause (or join
        the pause another replica recorded)."""
        self._rejection_seen = True
        try:
            await self._raise_if_paused()
            await self._refuse(TokenError(
                f"the partner refused (401) a token issued {age:.1f} s ago, which replaced "
                "another it had refused: it does not accept the tokens its token endpoint "
                "issues to iris (check the partner's client registration, audience or scope)",
                permanent=True, error=REJECTED_TOKEN))
        except TokenError:
            pass
        except RedisUnavailable:  # pause this worker at least
            self._waits.pause(self._clock() + self._refusal_pause, REJECTED_TOKEN, first=True,
                              message="the partner refused a freshly issued token (401)")

    def pause_remaining(self) -> float:
        """Seconds to wait before sending again: a refusal's pause (at most ``PAUSE_RECHECK``),
        or the wait for the next token request while there is no valid token.

        Each time the re-check is due, one look at the store goes out in the background: a
        pause lifted early (a login, a successful ``iris auth test``) ends here too."""
        now, token = self._clock(), self._token
        if self._waits.recheck_due(now):
            self._waits.checked = now
            self._start_refresh()
        return self._waits.remaining(now, has_valid_token=token is not None
                                     and now < token.hard_expiry)

    async def current(self, *, fresh: bool = False) -> StoredToken:
        """The token a worker would use now, for ``iris auth test``: the stored one, else (or
        with ``fresh``) one from the endpoint, even while paused: a success lifts the pause."""
        try:
            if not fresh and (adopted := await self._adopt_stored()) is not None:
                return adopted.stored
            fence = await self._acquire_or_wait()
            try:
                if not fresh and (adopted := await self._adopt_stored()) is not None:
                    return adopted.stored
                return (await self._fetch(fence, lift=True)).stored
            finally:
                await self.store.release(fence)
        except RedisUnavailable as exc:
            raise TokenError(f"token store unavailable: {exc}") from None

    def _start_refresh(self) -> asyncio.Task[Token]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(
                self._refresh(), name=f"token-{self.destination}")
            self._inflight.add_done_callback(_consume_exception)
        return self._inflight

    async def _refresh(self) -> Token:
        try:
            return await self._refresh_shared()
        except RedisUnavailable as exc:
            error = TokenError(f"token store unavailable: {exc}")
        except TokenError as exc:
            error = exc
        if not error.permanent:
            self._waits.failed(error)
        raise error

    async def _refresh_shared(self) -> Token:
        """Take a newer token from the store, or win the lock and fetch one, or wait."""
        waited_since = self._clock()
        while True:
            adopted = await self._adopt_stored()
            if adopted is not None:
                return adopted
            await self._raise_if_paused()
            fence = await self.store.acquire()
            if fence is not None:
                try:
                    if (adopted := await self._adopt_stored()) is not None:
                        return adopted
                    await self._raise_if_paused()  # a refusal may have come meanwhile
                    return await self._fetch(fence)
                finally:
                    await self.store.release(fence)
            token, now = self._token, self._clock()
            if token is not None and now < token.hard_expiry:
                self._token = replace(token, refresh_at=now + RECHECK)  # look again soon
                return self._token
            if now - waited_since > 600:
                raise TokenError("waited 10 minutes for another worker's token request")
            await asyncio.sleep(RECHECK)

    async def _raise_if_paused(self) -> None:
        """Take part in a pause another replica (or this one) recorded in the store."""
        pause = await self.store.paused()
        self._waits.checked = self._clock()
        if pause is not None:
            self._rejection_seen |= pause.error == REJECTED_TOKEN
            self._waits.pause(pause.until, pause.error, first=False)
            raise self._waits.paused_error(self._clock())

    async def _acquire_or_wait(self) -> int:
        while (fence := await self.store.acquire()) is None:
            await asyncio.sleep(RECHECK)
        return fence

    async def _adopt_stored(self) -> Token | None:
        """The stored token, if it is usable and not the one we are replacing."""
        stored = await self.store.load()
        if stored is None:
            return None
        if stored.fence == self._refused:
            await self.store.invalidate(stored.fence)
            return None
        if self._clock() >= stored.refresh_at:
            return None
        self.last_source = "store"
        return self._use(stored)

    async def _fetch(self, fence: int, *, lift: bool = False) -> Token:
        """Ask the endpoint (this process holds the lock under ``fence``) and store the answer.

        The token ends a refusal's pause, and its count starts again: the endpoint accepts the
        credentials. A pause for tokens the partner rejected is not shown over by a token
        issued: its record, which keeps the count of such pauses in a row, stays until the
        partner accepts a token issued after it (:meth:`accepted`) or it expires, unless
        ``lift`` (``iris auth test``: an operator says the partner was put right)."""
        started = self._clock()
        spent = await self._refresh_token()
        try:
            grant = await self._exchange(spent)
        except TokenError as exc:
            if exc.permanent:
                await self._refuse(exc)
            raise
        if grant.token_type.lower() != "bearer":
            refusal = TokenError(f"the token endpoint issued an unsupported token_type "
                                 f"{grant.token_type[:20]!r} (iris sends Bearer tokens)",
                                 permanent=True, error="unsupported_token_type")
            await self._refuse(refusal)
            raise refusal
        # Expiry counts from the request (the endpoint's clock started no earlier). A token's
        # age, which fresh_token_age is compared with, counts from the answer: a replacement
        # is never asked for sooner than fresh_token_age after the endpoint issued the token,
        # however long the request took on the way.
        refresh_at, hard_expiry = schedule(started, grant.expires_in)
        stored = StoredToken(grant.access_token, "Bearer", started + grant.expires_in,
                             refresh_at, self._clock(), self._consumer, fence)
        rotated = None
        if grant.refresh_token and (spent is None or grant.refresh_token != spent.token):
            seed = spent.seed if spent is not None else "issued"
            rotated = (grant.refresh_token, spent.digest if spent is not None else "", seed)
        saved = await self.store.save(stored, rotated)
        if saved == -1:
            log.warning("%s: the stored refresh token changed while this one was spent (a new "
                        "login?); keeping the stored one", self.destination)
        if not await self.store.clear_pause(keep="" if lift else REJECTED_TOKEN):
            self._rejection_seen = True  # kept: the partner has yet to accept a token
        self.last_source = "endpoint"
        return self._use(stored, hard_expiry)

    async def _refresh_token(self) -> StoredRefresh | None:
        """The refresh token to spend: the config's, if it is newer than the store's lineage."""
        stored = await self.store.refresh_token()
        configured = self.source.configured_refresh
        if configured is not None:
            seed = "config:" + digest(configured)[:16]
            if stored is None or stored.seed != seed:
                spent = stored.digest if stored is not None else ""
                return StoredRefresh(configured, spent, seed)
        return stored

    async def _exchange(self, spent: StoredRefresh | None) -> Grant:
        if spent is not None:
            try:
                return await self.source.refresh(spent.token)
            except TokenError as exc:
                if not (exc.permanent and self.source.can_start_over):
                    raise
                log.warning("%s: the refresh token was refused (%s); requesting a new token "
                            "with the initial grant", self.destination, exc.error or exc.status)
                await self.store.drop_refresh_token(spent.digest)
        return await self.source.initial()

    def _use(self, stored: StoredToken, hard_expiry: float | None = None) -> Token:
        if hard_expiry is None:
            ttl = stored.expires_at - stored.obtained_at
            hard_expiry = stored.expires_at - min(5.0, ttl * 0.1)
        token = Token(Credential(f"Bearer {stored.access_token}", stored.fence),
                      stored.refresh_at, hard_expiry, stored)
        self._token = token
        if stored.fence < self._young_refused:  # the store's fence counter started over
            self._young_refused, self._refused, self._replacement = 0, None, None
        if self._replacing:
            self._replacing, self._replacement = False, stored.fence
        self._waits.token_taken()
        if self._on_token:
            self._on_token(stored.expires_at)
        return token

    async def _refuse(self, exc: TokenError) -> None:
        reason = exc.error or (f"HTTP {exc.status}" if exc.status else "refused")
        pause, first = await self.store.pause(self._refusal_pause, reason)
        self._waits.pause(pause.until, pause.error, first=first, message=str(exc))

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Let a token exchange under way finish (within ``grace``): cancelling it after the
        endpoint rotated the refresh token would lose the new one, and need a new login."""
        task = self._inflight
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=grace)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._clearing is not None and not self._clearing.done():
            self._clearing.cancel()  # one write to spare: the next delivery makes it again
            await asyncio.gather(self._clearing, return_exceptions=True)


def _consume_exception(task: asyncio.Task[object]) -> None:
    """A background refresh that fails is retried on next use; do not warn 'never retrieved'."""
    if not task.cancelled():
        task.exception()

