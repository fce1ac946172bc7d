"""Authentication per destination: ``make_auth`` picks the scheme the config names."""

from __future__ import annotations

import aiohttp

from iris.auth.base import Auth, Credential
from iris.auth.client_credentials import ClientCredentials
from iris.auth.static import StaticAuth, basic_header
from iris.auth.tokens import TokenManager
from iris.config import BasicAuth, BearerAuth, ClientCredentialsAuth, Destination
from iris.metrics import Metrics

__all__ = ["Auth", "Credential", "make_auth"]


def make_auth(dest: Destination, session: aiohttp.ClientSession, metrics: Metrics) -> Auth:
    auth = dest.auth
    if isinstance(auth, BasicAuth):
        return StaticAuth(basic_header(auth.username, auth.password.get_secret_value()))
    if isinstance(auth, BearerAuth):
        return StaticAuth(f"Bearer {auth.token.get_secret_value()}")
    if isinstance(auth, ClientCredentialsAuth):
        grant = ClientCredentials(
            auth, session, dest.timeout,
            on_request=lambda outcome: metrics.token_requests.labels(dest.id, outcome).inc(),
        )
        return TokenManager(grant.fetch, on_token=metrics.token_expiry.labels(dest.id).set)
    return StaticAuth(None)
