"""What the sender needs from any auth scheme: a header for the next request, a way to say
"the partner refused this one" (a 401), and whether a refusal at the token endpoint pauses
the destination."""

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

    def pause_remaining(self) -> float:
        """Seconds the destination stays paused by a token endpoint's refusal (0: not paused)."""

    async def close(self, grace: float = 0.0) -> None:
        """Release resources, letting work that must not be cut short run up to ``grace`` s."""
