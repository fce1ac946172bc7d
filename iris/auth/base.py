"""What the sender needs from any auth scheme: a header for the next request, and a way to say
"the partner refused this one" (a 401)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Credential:
    """One Authorization header value; ``generation`` tells a stale one from the current one."""

    header: str
    generation: int = 0

    def __repr__(self) -> str:  # never print the value
        return f"Credential(generation={self.generation})"


class Auth(Protocol):
    async def credential(self) -> Credential | None:
        """The Authorization value to send now, or None for no header."""

    def refused(self, credential: Credential | None) -> None:
        """The partner answered 401 to ``credential``: drop it if it is still the current one."""

    async def close(self) -> None: ...
