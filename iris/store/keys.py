"""Every Redis key iris writes, named in one place (DESIGN 4), and the order of entry ids.

All live under the inbound stream's key, so one ACL key pattern (``~<stream.key>*``) covers a
worker, except the token store's keys, which live under ``token_store.key_prefix``
(``<stream.key>:auth`` by default) so that several deployments may share one token.

With partitions (``core.partitions``), each partition's inbound stream is ``<stream.key>:{p}``
and its outbound, dead-letter and ``written`` keys are named after it, so they share its hash
slot; the keys shared by every partition (rate schedules, consumer leases) keep
``stream.key``'s name: each is used alone, in any slot. On a cluster the token store's keys of
one destination share the hash tag ``{<destination>}``: its scripts touch several.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iris.config.model import RedisSettings
from iris.core.partitions import MAX_PARTITIONS, inbound_keys, partition_key


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one inbound stream: ``stream.key``, or one partition of it (``inbound``),
    with ``base`` the configured ``stream.key`` (the same, without partitions)."""

    inbound: str
    base: str = field(default="")

    def __post_init__(self) -> None:
        if not self.base:
            object.__setattr__(self, "base", self.inbound)

    @classmethod
    def partitions(cls, settings: RedisSettings) -> list[Keys]:
        """The keys of every partition of the configured stream, partition 0 first."""
        stream = settings.stream
        return [cls(key, stream.key)
                for key in inbound_keys(stream.key, stream.partitions, settings.redis.cluster)]

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
        return f"{self.base}:permission-check"

    def outbound(self, destination_id: str) -> str:
        """The per-destination stream of closed batches: a failing partner's backlog waits here."""
        return f"{self.inbound}:out:{destination_id}"

    def rate(self, destination_id: str) -> str:
        """A destination's shared request schedule (GCRA)."""
        return f"{self.base}:rate:{destination_id}"

    def consumer_lease(self, name: str) -> str:
        """The lease on a consumer name: one live worker per name."""
        return f"{self.base}:consumer:{name}"


def stray_inbound(settings: RedisSettings) -> list[str]:
    """Inbound streams that no worker with these settings reads: ``stream.key`` itself with
    partitions (a producer that does not partition), and every partition stream outside
    ``stream.partitions`` (left when the count changed)."""
    stream = settings.stream
    read = set(inbound_keys(stream.key, stream.partitions, settings.redis.cluster))
    every = [stream.key, *(partition_key(stream.key, p) for p in range(MAX_PARTITIONS))]
    return [key for key in every if key not in read]


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """One destination's token, its refresh lock, fence counter and pause (named after the
    credentials' ``fingerprint``: new credentials never read an old token), and its refresh
    token (kept across credential changes)."""

    token: str
    lock: str
    fence: str
    pause: str
    refresh: str

    @classmethod
    def of(cls, prefix: str, destination: str, fingerprint: str,
           cluster: bool = False) -> TokenKeys:
        """On a cluster the destination is a hash tag, ``<prefix>:{<destination>}``: its
        scripts touch several keys; the prefix stays in front, for ACL key patterns."""
        base = f"{prefix}:{{{destination}}}" if cluster else f"{prefix}:{destination}"
        named = f"{base}:{fingerprint}"
        return cls(f"{named}:token", f"{named}:lock", f"{named}:fence", f"{named}:pause",
                   f"{base}:refresh")


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
