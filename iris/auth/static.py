"""Schemes whose header never changes: none, basic (RFC 7617) and a fixed bearer token."""

from __future__ import annotations

import base64

from iris.auth.base import Credential
from iris.core.logs import register_secret


class StaticAuth:
    """A fixed header (or none); a 401 cannot be cured by asking again."""

    def __init__(self, header: str | None) -> None:
        register_secret(header)
        self._credential = Credential(header) if header else None

    async def credential(self) -> Credential | None:
        return self._credential

    async def refused(self, credential: Credential | None, *, blames_token: bool = True) -> bool:
        return True  # once more; a second 401 is a rejection: the header cannot change

    def accepted(self, credential: Credential | None) -> None:
        return None

    def pause_remaining(self) -> float:
        return 0.0

    async def close(self, grace: float = 0.0) -> None:
        return None


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
