"""What ``iris auth test`` and ``iris auth login`` print: where a token came from and until when
it is valid; never the token, a refresh token or a signature."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from iris.auth.signing import Signer
from iris.cli.login import login
from iris.config.auth import OAuth2Base
from iris.config.model import Destination
from iris.errors import IrisError, RedisUnavailable, TokenError
from iris.http.sender import make_session, tls_context
from iris.runtime.metrics import Metrics
from iris.runtime.wiring import SharedTokens, make_token_manager

STATIC = {"none": "no authentication", "basic": "HTTP Basic (a fixed header)",
          "bearer": "a fixed bearer token"}


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(epoch: float) -> str:
    return f"{_moment(epoch)} (in {epoch - time.time():.0f} s)"


async def describe(dest: Destination, shared: SharedTokens, metrics: Metrics,
                   *, fresh: bool) -> str:
    """One line about ``dest``'s token; raises ``TokenError`` when none can be had."""
    if not isinstance(dest.auth, OAuth2Base):
        return f"{dest.id}: {STATIC[dest.auth.type]}; nothing to fetch"
    async with make_session(dest, tls_context(dest)) as session:
        manager = make_token_manager(dest, session, metrics, shared)
        try:
            stored = await manager.current(fresh=fresh)
        finally:
            await manager.close()
    if manager.last_source == "store":
        origin = (f"the shared token store ({manager.store.token_key}), obtained by "
                  f"{stored.obtained_by} at {_moment(stored.obtained_at)}")
    else:
        origin = manager.source.describe()
    return (f"{dest.id}: {stored.token_type} token, expires {_when(stored.expires_at)}, "
            f"from {origin}")


async def test_command(dests: list[Destination], shared: SharedTokens, *, fresh: bool) -> int:
    metrics = Metrics([d.id for d in dests], "auth-test", "auth-test",
                      longest_timeout=max(d.timeout for d in dests))
    failed = 0
    for dest in dests:
        try:
            line = await describe(dest, shared, metrics, fresh=fresh)
        except (TokenError, RedisUnavailable) as exc:
            failed += 1
            line = f"{dest.id}: FAILED: {exc}"
        print(line, flush=True)
        if dest.signing is not None:
            key = Signer(dest.signing).current()
            print(f"{dest.id}: requests signed with HMAC-{dest.signing.algorithm.upper()} in "
                  f"{dest.signing.header}, key {key.id!r}", flush=True)
    return 1 if failed else 0


async def login_command(dest: Destination, shared: SharedTokens, timeout: float) -> int:
    try:
        result = await login(dest, shared, timeout=timeout, show=lambda t: print(t, flush=True))
    except TokenError as exc:
        raise IrisError(f"the token endpoint refused the code: {exc}") from None
    at_rest = "encrypted" if result.encrypted else "not encrypted (set token_store.encryption_key)"
    print(f"Logged in: destination {dest.id} has a refresh token in Redis at "
          f"{result.refresh_key} ({at_rest}); its first access token lasts "
          f"{result.expires_in:.0f} s. Workers renew it from now on.", flush=True)
    return 0
