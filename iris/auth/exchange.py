"""What one exchange with a token endpoint is made of (RFC 6749 §4, §5; seed 003): the request
a grant builds, the answer the endpoint gives, the ``Grant`` parsed from it, and the
``Exchange`` that carries a request over HTTP (implemented in ``iris.http.token_endpoint``, so
that auth never imports an HTTP client).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token endpoint answered (seed 003's outputs)."""

    access_token: str
    expires_in: float
    token_type: str = "Bearer"
    refresh_token: str | None = None

    def __repr__(self) -> str:
        return f"Grant(expires_in={self.expires_in}, token_type={self.token_type!r})"


@dataclass(frozen=True, slots=True)
class TokenHttpRequest:
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:  # the body and headers carry secrets
        return f"TokenHttpRequest({self.method} {self.url})"


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    status: int
    headers: dict[str, list[str]]  # lower-case names, every value
    body: bytes
    content_type: str

    def __repr__(self) -> str:
        return f"TokenAnswer(status={self.status}, {len(self.body)} bytes)"


class Exchange(Protocol):
    """Sends token requests: ``build`` one (again for each attempt: a JWT must be fresh), send
    it, ``parse`` the answer; raises ``TokenError``."""

    async def exchange(self, build: Callable[[], TokenHttpRequest],
                       parse: Callable[[TokenAnswer], Grant]) -> Grant: ...
