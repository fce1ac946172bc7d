"""Every Redis key iris writes, named in one place (DESIGN 4), and the order of entry ids.

All live under the inbound stream's key, so one ACL key pattern (``~<stream.key>*``) covers a
worker, except the token store's keys, which live under ``token_store.key_prefix``
(``<stream.key>:auth`` by default) so that several deployments may share one token.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one inbound stream (``stream.key``)."""

    inbound: str

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream (DESIGN 1.5)."""
        return f"{self.inbound}:dlq"

    @property
    def written(self) -> str:
        """Hash: inbound entry id → destinations whose batches already hold it."""
        return f"{self.inbound}:written"

    @property
    def permission_probe(self) -> str:
        """Never written: the permission check's harmless commands name it."""
        return f"{self.inbound}:permission-check"

    def outbound(self, destination_id: str) -> str:
        """The per-destination stream of closed batches: a failing partner's backlog waits here."""
        return f"{self.inbound}:out:{destination_id}"

    def rate(self, destination_id: str) -> str:
        """A destination's shared request schedule (GCRA)."""
        return f"{self.inbound}:rate:{destination_id}"

    def consumer_lease(self, name: str) -> str:
        """The lease on a consumer name: one live worker per name."""
        return f"{self.inbound}:consumer:{name}"


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """One destination's token, its refresh lock and its fence counter."""

    token: str
    lock: str
    fence: str

    @classmethod
    def of(cls, prefix: str, destination: str, fingerprint: str) -> TokenKeys:
        """``fingerprint`` names the credentials: new credentials never read an old token."""
        base = f"{prefix}:{destination}:{fingerprint}"
        return cls(f"{base}:token", f"{base}:lock", f"{base}:fence")


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
