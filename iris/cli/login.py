"""``iris auth login``: a person authorises iris once (RFC 6749 §4.1, with RFC 7636 PKCE).

iris prints the authorisation URL, listens on the loopback redirect URI (RFC 8252 §7.3), checks
that the redirect carries the ``state`` it sent, exchanges the code once, and stores the refresh
token where every worker finds it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from iris.auth.grants import StandardRequests
from iris.auth.tokens import schedule
from iris.config.auth import AuthorizationCodeAuth
from iris.config.model import Destination
from iris.errors import IrisError, TokenError
from iris.http.sender import make_session, tls_context
from iris.http.token_endpoint import TokenEndpoint
from iris.runtime.wiring import SharedTokens, make_store
from iris.store.tokens import StoredToken

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoginResult:
    refresh_key: str
    expires_in: float
    encrypted: bool


def pkce_pair() -> tuple[str, str]:
    """RFC 7636 §4.1–4.2: a 43–128 character verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorization_url(auth: AuthorizationCodeAuth, state: str, challenge: str | None) -> str:
    params = {"response_type": "code", "client_id": auth.client_id or "",
              "redirect_uri": auth.redirect_uri, "state": state}
    if auth.scope_text:
        params["scope"] = auth.scope_text
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    separator = "&" if "?" in auth.authorization_url else "?"
    return auth.authorization_url + separator + urlencode(params, quote_via=quote)


class RedirectListener:
    """The loopback redirect URI: the first redirect with our ``state`` wins; others get 400."""

    def __init__(self, redirect_uri: str, state: str) -> None:
        parts = urlsplit(redirect_uri)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._path = parts.path or "/"
        self._state = state
        self.code: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.rejected = 0  # redirects with a wrong or missing state
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self._path, self._redirected)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise IrisError(f"cannot listen on the redirect URI's {self._host}:{self._port}: "
                            f"{exc.strerror}") from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _redirected(self, request: web.Request) -> web.Response:
        query = request.query
        if not hmac.compare_digest(query.get("state", "").encode(), self._state.encode()):
            self.rejected += 1
            log.warning("ignored a redirect whose state does not match this login")
            return _page(400, "This response does not belong to the login iris started "
                              "(state mismatch); it was ignored.")
        if self.code.done():
            return _page(400, "This login is already complete.")
        if "error" in query:
            error = query.get("error", "")[:60]
            detail = query.get("error_description", "")[:200]
            self.code.set_exception(IrisError(f"authorisation refused: {error} {detail}".strip()))
            return _page(400, f"Authorisation refused ({error}). See the terminal.")
        code = query.get("code")
        if not code:
            return _page(400, "The redirect carries no code.")
        self.code.set_result(code)
        return _page(200, "iris is authorised. You may close this window.")


def _page(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


async def login(dest: Destination, shared: SharedTokens, *, timeout: float,
                show: Callable[[str], None]) -> LoginResult:
    """Run one login for ``dest``; ``show`` prints what the person must see."""
    auth = dest.auth
    if not isinstance(auth, AuthorizationCodeAuth):
        raise IrisError(f"destination {dest.id} uses auth type {auth.type}: only "
                        "oauth2_authorization_code needs a login")
    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair() if auth.pkce else (None, None)
    listener = RedirectListener(auth.redirect_uri, state)
    await listener.start()
    try:
        show(f"Open this URL in a browser to authorise iris for destination {dest.id}:\n\n"
             f"  {authorization_url(auth, state, challenge)}\n\n"
             f"Waiting up to {timeout:.0f} s for the redirect to {auth.redirect_uri} ...")
        try:
            code = await asyncio.wait_for(asyncio.shield(listener.code), timeout)
        except TimeoutError:
            raise IrisError(f"no authorisation arrived within {timeout:.0f} s") from None
    finally:
        await listener.stop()
    return await _exchange(dest, auth, shared, code, verifier)


async def _exchange(dest: Destination, auth: AuthorizationCodeAuth, shared: SharedTokens,
                    code: str, verifier: str | None) -> LoginResult:
    """Exchange the code exactly once (a code is single use: no retry) and store the result."""
    requests = StandardRequests(auth)
    started = time.time()
    async with make_session(dest, tls_context(dest)) as session:
        answer = await TokenEndpoint(session, dest.timeout,
                                     proxy=dest.proxy).send(
            requests.code(code, auth.redirect_uri, verifier))
    answered = time.time()  # a token's age counts from here (fresh_token_age)
    grant = requests.parse(answer)
    if grant.refresh_token is None:
        raise TokenError("the token endpoint issued no refresh_token, so workers could not "
                         "renew access after this token expires (does the scope need "
                         "offline access?)", permanent=True)
    store = make_store(dest, shared)
    await store.put_refresh_token(grant.refresh_token, f"login:{started:.0f}")
    fence = await store.acquire()
    if fence is not None:  # otherwise a worker is fetching right now; it will use the new one
        try:
            refresh_at, _ = schedule(started, grant.expires_in)
            await store.save(StoredToken(grant.access_token, "Bearer",
                                         started + grant.expires_in, refresh_at, answered,
                                         "iris auth login", fence))
        finally:
            await store.release(fence)
    await store.clear_pause()
    return LoginResult(store.refresh_key, grant.expires_in, shared.encryption_key is not None)


