"""Token cache for one destination: proactive refresh before expiry, single flight, 401 handling.

However many batches ask at once, at most one token request is in flight. A token is served
until its refresh point; between the refresh point and its hard expiry the old token is still
served while one background request fetches the next; past the hard expiry callers wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from iris.auth.base import Credential
from iris.errors import TokenError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token endpoint answered."""

    access_token: str
    expires_in: float
    token_type: str = "Bearer"


@dataclass(frozen=True, slots=True)
class Token:
    credential: Credential
    refresh_at: float  # monotonic: start fetching the next one
    hard_expiry: float  # monotonic: stop sending this one


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
        fetch: Callable[[], Awaitable[Grant]],
        *,
        on_token: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._on_token = on_token  # told the wall-clock expiry of each new token
        self._clock = clock
        self._token: Token | None = None
        self._inflight: asyncio.Task[Token] | None = None
        self._generation = 0

    async def credential(self) -> Credential:
        token, now = self._token, self._clock()
        if token is not None and now < token.refresh_at:
            return token.credential
        if token is not None and now < token.hard_expiry:
            self._start_refresh()  # serve the current token while the next one comes
            return token.credential
        return (await asyncio.shield(self._start_refresh())).credential

    def refused(self, credential: Credential | None) -> None:
        token = self._token
        if token is not None and credential is not None and (
            credential.generation == token.credential.generation
        ):
            log.info("partner refused the current token; fetching a new one")
            self._token = None

    def _start_refresh(self) -> asyncio.Task[Token]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(
                self._refresh(), name="token-refresh"
            )
            self._inflight.add_done_callback(_consume_exception)
        return self._inflight

    async def _refresh(self) -> Token:
        started = self._clock()
        grant = await self._fetch()
        if grant.token_type.lower() != "bearer":
            raise TokenError(f"unsupported token_type {grant.token_type[:20]!r}", permanent=True)
        self._generation += 1
        refresh_at, hard_expiry = schedule(started, grant.expires_in)
        self._token = Token(
            Credential(f"Bearer {grant.access_token}", self._generation), refresh_at, hard_expiry
        )
        if self._on_token:
            self._on_token(time.time() + grant.expires_in - (self._clock() - started))
        return self._token

    async def close(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)


def _consume_exception(task: asyncio.Task[Token]) -> None:
    """A background refresh that fails is retried on next use; do not warn 'never retrieved'."""
    if not task.cancelled():
        task.exception()
