"""Where one destination's tokens come from: its grant's requests, sent to its endpoint."""

from __future__ import annotations

from iris.auth.exchange import Exchange, Grant
from iris.auth.grants import StandardRequests
from iris.config.auth import OAuth2Base, RefreshTokenAuth
from iris.core.logs import register_secret
from iris.errors import TokenError


class EndpointSource:
    """Initial and refresh requests for one grant, standard (RFC 6749) or templated (seed 003)."""

    def __init__(self, destination: str, auth: OAuth2Base, endpoint: Exchange,
                 allow_http: bool) -> None:
        self.destination = destination
        self.auth = auth
        self.endpoint = endpoint
        self.standard = StandardRequests(auth)
        self.templated = None
        if auth.token_request is not None:
            from iris.auth.templated import TemplatedRequests  # Jinja2 only where used

            self.templated = TemplatedRequests(auth, auth.token_request, allow_http)
        configured = auth.refresh_token if isinstance(auth, RefreshTokenAuth) else None
        self.configured_refresh = configured.get_secret_value() if configured else None
        register_secret(self.configured_refresh)
        self.can_start_over = self.standard.initial is not None

    async def initial(self) -> Grant:
        build = self.standard.initial
        if build is None:
            raise TokenError(
                f"no refresh token stored for destination {self.destination}: a person must "
                f"authorise iris once (iris auth login -c CONFIG --destination "
                f"{self.destination})" if self.auth.type == "oauth2_authorization_code" else
                f"no refresh token for destination {self.destination}: set auth.refresh_token",
                permanent=True, error="login_required")
        if self.templated is not None:
            templated = self.templated
            return await self.endpoint.exchange(lambda: templated.build(None), templated.parse)
        return await self.endpoint.exchange(build, self.standard.parse)

    async def refresh(self, refresh_token: str) -> Grant:
        if self.templated is not None:
            templated = self.templated
            return await self.endpoint.exchange(lambda: templated.build(refresh_token),
                                                templated.parse)
        return await self.endpoint.exchange(lambda: self.standard.refresh(refresh_token),
                                            self.standard.parse)

    def describe(self) -> str:
        """Where tokens come from, for ``iris auth test`` (no secret in it)."""
        url = self.auth.token_url or "the templated token_request URL"
        how = "templated token_request" if self.templated is not None else self.auth.method
        return f"token endpoint {url} ({self.auth.type}, {how})"
