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

    async def refused(self, credential: Credential | None, *, blames_token: bool = True) -> bool:
        """The partner answered 401 to ``credential`` (``blames_token``: naming the token as
        the cause): drop it if it is still the current one. True: send once more now; False:
        the destination is paused instead."""

    def accepted(self, credential: Credential | None) -> None:
        """The partner accepted ``credential`` (a delivery); called for every one, so cheap."""

    def pause_remaining(self) -> float:
        """Seconds the destination waits before sending (a refusal's pause, or no token)."""

    async def close(self, grace: float = 0.0) -> None:
        """Release resources, letting work that must not be cut short run up to ``grace`` s."""
