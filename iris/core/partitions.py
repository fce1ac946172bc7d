"""Partitions of the inbound stream: which stream an event goes to, and the streams' names.

With ``stream.partitions: P`` greater than 1 (or on Redis Cluster), the inbound stream is P
streams, ``<stream.key>:{0}`` … ``<stream.key>:{P-1}``. The braces are a Redis Cluster hash
tag: a partition's inbound stream, its outbound streams (``<inbound>:out:<destination>``), its
dead-letter stream and its ``written`` hash all hash to one slot, so each script of iris
touches one slot. With P = 1 and no cluster the inbound stream is ``stream.key`` itself, as
before partitions existed.

An event's partition is ``crc32(uuid) mod P``: CRC-32 (IEEE 802.3, as zlib, Java's
``java.util.zip.CRC32``, Go's ``hash/crc32.ChecksumIEEE`` and Node's ``zlib.crc32`` compute it)
of the event's ``uuid`` field encoded in UTF-8, as an unsigned 32-bit integer. All the events
of one user land in one partition, so one user's events keep their order.
Worked example: ``crc32(b"user-1") = 2,116,437,524``, and 2,116,437,524 mod 8 = 4: with
P = 8 the events of user ``user-1`` go to partition 4, ``iris:events:{4}``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

MAX_PARTITIONS = 1024


def partition_of(uuid: str, partitions: int) -> int:
    """The partition (0 … ``partitions`` - 1) of an event whose ``uuid`` field is ``uuid``.
    Raises ValueError for fewer than one partition."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    return zlib.crc32(uuid.encode("utf-8", "surrogateescape")) % partitions


def by_partition(events: Sequence[Mapping[str, str]], partitions: int) -> dict[int, list[int]]:
    """The indexes of ``events`` (their fields) that go to each partition, in order; an event
    without a ``uuid`` goes to partition 0 (where a worker dead-letters it as invalid)."""
    placed: dict[int, list[int]] = {}
    for index, fields in enumerate(events):
        placed.setdefault(partition_of(fields.get("uuid", ""), partitions), []).append(index)
    return placed


def partition_key(stream_key: str, partition: int) -> str:
    """Partition ``partition``'s inbound stream: ``<stream.key>:{<partition>}``."""
    return f"{stream_key}:{{{partition}}}"


def inbound_keys(stream_key: str, partitions: int, cluster: bool) -> list[str]:
    """Every inbound stream, partition 0 first: ``[stream_key]`` alone for one partition on a
    single Redis (today's name), else one hash-tagged key per partition."""
    if partitions == 1 and not cluster:
        return [stream_key]
    return [partition_key(stream_key, p) for p in range(partitions)]
