"""Batch routed events per destination: one entry per user, flushed at max_users, max_bytes or
max_wait, whichever comes first. Encoded with orjson once, when the batch closes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from iris.config.model import Destination
from iris.core.events import Event
from iris.core.payload import DATE_LEN, aam_date, encode_payload, envelope_size
from iris.core.records import OutboundBatch

# Fixed JSON overhead of the payload's parts, so the size of a batch is known before encoding.
_USER = len('{"AAM_UUID":"","DataPartner_UUID":"","Segments":[]}')
_SEGMENT = len('{"Segment_ID":"","Status":"","DateTime":""}') + 1 + DATE_LEN
_REGIONS = len(',"AAM_Regions":[]')


def _blen(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _regions_size(regions: tuple[str, ...] | None) -> int:
    return _REGIONS + sum(_blen(r) + 3 for r in regions) - 1 if regions else 0


def _new_user_size(uuid: str, partner_id: str, event: Event) -> int:
    size = _USER + _SEGMENT + _blen(uuid + partner_id + event.segment)
    return size + _regions_size(event.regions) if event.regions else size


class _User:
    """One user of an open batch (a plain slotted class: one is made per user, on the hot path)."""

    __slots__ = ("events", "partner_id", "regions", "segments")

    def __init__(self, event: Event, partner_id: str) -> None:
        """The user of ``event``, with ``event`` folded in."""
        self.partner_id = partner_id
        self.segments: dict[str, tuple[str, float]] = {event.segment: (event.status, event.time)}
        self.regions: tuple[str, ...] | None = event.regions or None
        self.events: list[tuple[str, dict[str, str]]] = [(event.id, event.fields)]

    def growth(self, event: Event, partner_id: str) -> int:
        """Bytes this user's JSON grows by if ``event`` is folded in (0 if it is older)."""
        old = self.segments.get(event.segment)
        if old is not None and event.time < old[1]:
            return 0
        grow = 0 if old is not None else _SEGMENT + _blen(event.segment) + 1
        if partner_id != self.partner_id:
            grow += _blen(partner_id) - _blen(self.partner_id)
        if event.regions and event.regions != self.regions:
            grow += _regions_size(event.regions) - _regions_size(self.regions)
        return grow

    def fold(self, event: Event, partner_id: str) -> None:
        """Keep the latest change per segment; partner id and regions follow the latest."""
        old = self.segments.get(event.segment)
        if old is None or event.time >= old[1]:
            self.segments[event.segment] = (event.status, event.time)
            self.partner_id = partner_id
            if event.regions:
                self.regions = event.regions
        self.events.append((event.id, event.fields))

    def as_payload(self, uuid: str) -> dict[str, Any]:
        # a loop, not a comprehension: on Python 3.11 a comprehension is a call of its own,
        # a fifth of this method's time for the usual user of one segment
        segments = []
        for sid, (status, when) in self.segments.items():
            segments.append({"Segment_ID": sid, "Status": status, "DateTime": aam_date(int(when))})
        user: dict[str, Any] = {"AAM_UUID": uuid, "DataPartner_UUID": self.partner_id,
                                "Segments": segments}
        if self.regions:
            user["AAM_Regions"] = list(self.regions)
        return user


@dataclass(slots=True)
class Batch:
    """A closed batch: the exact bytes to POST and the events folded into it."""

    destination_id: str
    body: bytes
    users: int
    segments: int
    events: list[tuple[str, dict[str, str]]]  # (source entry id, original fields)
    source_ids: list[str]  # the distinct inbound entry ids of ``events``, in order

    def idempotency_key(self, stream: str = "") -> str:
        """Derived from the inbound entries in the batch, so that the same events carry the
        same key however often the batch is written or sent. Entry ids are unique within one
        stream only: with partitions, ``stream`` (the partition's inbound stream) is part of
        the digest, so batches of two partitions never share a key."""
        scope = f"{stream}\n" if stream else ""
        digest = hashlib.blake2b((scope + ",".join(self.source_ids)).encode(),
                                 digest_size=16).hexdigest()
        return f"{self.destination_id}-{digest}"


class BatchBuilder:
    """The open batch of one destination."""

    def __init__(self, dest: Destination, clock: Callable[[], float] = time.monotonic) -> None:
        self.dest = dest
        self._clock = clock
        self._envelope = envelope_size(dest.id, dest.user_dpid, dest.client_id)
        self._max_users, self._max_bytes = dest.batch.max_users, dest.batch.max_bytes
        self._reset()

    def _reset(self) -> None:
        self._users: dict[str, _User] = {}
        self._sources: set[str] = set()  # inbound entry ids folded into the open batch
        self._size = self._envelope
        self.deadline: float | None = None  # monotonic time at which max_wait expires

    def __len__(self) -> int:
        return len(self._users)

    @property
    def source_ids(self) -> set[str]:
        return self._sources

    def add(self, event: Event, partner_id: str) -> list[Batch]:
        """Fold one event in; return the batches this closed (0, 1 or 2)."""
        users = self._users
        user = users.get(event.uuid)
        if user is None:
            growth = _new_user_size(event.uuid, partner_id, event) + (1 if users else 0)
        else:
            growth = user.growth(event, partner_id)
        if users and self._size + growth > self._max_bytes:
            # Close the current batch, and start the next with this event.
            return self.close() + self.add(event, partner_id)
        if user is None:
            users[event.uuid] = _User(event, partner_id)
        else:
            user.fold(event, partner_id)
        if self.deadline is None:
            self.deadline = self._clock() + self.dest.batch.max_wait
        self._sources.add(event.id)
        self._size += growth
        return self.close() if len(users) >= self._max_users else []

    def due(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def close(self) -> list[Batch]:
        """Encode the open batch; a batch that encodes larger than max_bytes is halved."""
        users = list(self._users.items())
        self._reset()
        return self._encode(users) if users else []

    def _encode(self, users: list[tuple[str, _User]]) -> list[Batch]:
        dest = self.dest
        body = encode_payload(
            destination_id=dest.id, user_dpid=dest.user_dpid, client_id=dest.client_id,
            users=[u.as_payload(uuid) for uuid, u in users],
        )
        if len(body) > dest.batch.max_bytes and len(users) > 1:
            half = len(users) // 2
            return self._encode(users[:half]) + self._encode(users[half:])
        events = [e for _, u in users for e in u.events]
        return [
            Batch(
                destination_id=dest.id,
                body=body,
                users=len(users),
                segments=sum(len(u.segments) for _, u in users),
                events=events,
                source_ids=list(dict.fromkeys([entry_id for entry_id, _ in events])),
            )
        ]


def split_in_halves(batch: OutboundBatch, dest: Destination) -> list[OutboundBatch]:
    """A batch the partner found too large (413) as two halves of its users, each with its own
    events and a stable idempotency key (``key.0``, ``key.1``); none when it holds one user."""
    users: list[dict[str, Any]] = orjson.loads(batch.body)["Users"]
    if len(users) < 2:
        return []
    events = batch.events()
    half = len(users) // 2
    halves = []
    for index, part in enumerate((users[:half], users[half:])):
        uuids = {u["AAM_UUID"] for u in part}
        body = encode_payload(destination_id=dest.id, user_dpid=dest.user_dpid,
                              client_id=dest.client_id, users=part)
        part_events = [e for e in events if e[1].get("uuid", "").strip() in uuids]
        halves.append(OutboundBatch(body, orjson.dumps(part_events), len(part),
                                    sum(len(u["Segments"]) for u in part), f"{batch.key}.{index}"))
    return halves
