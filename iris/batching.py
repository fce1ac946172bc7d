"""Batch routed events per destination: one entry per user, flushed at max_users, max_bytes or
max_wait, whichever comes first. Encoded with orjson once, when the batch closes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iris.config import Destination
from iris.events import Event
from iris.payload import DATE_LEN, aam_date, encode_payload, envelope_size

# Fixed JSON overhead of the payload's parts, so the size of a batch is known before encoding.
_USER = len('{"AAM_UUID":"","DataPartner_UUID":"","Segments":[]}')
_SEGMENT = len('{"Segment_ID":"","Status":"","DateTime":""}') + 1 + DATE_LEN
_REGIONS = len(',"AAM_Regions":[]')


def _blen(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


@dataclass(slots=True)
class _User:
    partner_id: str
    segments: dict[str, tuple[str, float]] = field(default_factory=dict)  # id → (status, time)
    regions: tuple[str, ...] | None = None
    events: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def size(self, uuid: str) -> int:
        size = _USER + _blen(uuid) + _blen(self.partner_id)
        size += sum(_SEGMENT + _blen(s) for s in self.segments) + len(self.segments) - 1
        if self.regions:
            size += _REGIONS + sum(_blen(r) + 3 for r in self.regions) - 1
        return size

    def as_payload(self, uuid: str) -> dict[str, Any]:
        user: dict[str, Any] = {
            "AAM_UUID": uuid,
            "DataPartner_UUID": self.partner_id,
            "Segments": [
                {"Segment_ID": sid, "Status": status, "DateTime": aam_date(int(when))}
                for sid, (status, when) in self.segments.items()
            ],
        }
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

    @property
    def source_ids(self) -> list[str]:
        return list(dict.fromkeys(entry_id for entry_id, _ in self.events))


class BatchBuilder:
    """The open batch of one destination."""

    def __init__(self, dest: Destination, clock: Callable[[], float] = time.monotonic) -> None:
        self.dest = dest
        self._clock = clock
        self._envelope = envelope_size(dest.id, dest.user_dpid, dest.client_id)
        self._reset()

    def _reset(self) -> None:
        self._users: dict[str, _User] = {}
        self._sources: set[str] = set()  # inbound entry ids folded into the open batch
        self._size = self._envelope
        self.deadline: float | None = None  # monotonic time at which max_wait expires

    def __len__(self) -> int:
        return len(self._users)

    def holds(self, entry_id: str) -> bool:
        return entry_id in self._sources

    @property
    def source_ids(self) -> set[str]:
        return self._sources

    def add(self, event: Event, partner_id: str) -> list[Batch]:
        """Fold one event in; return the batches this closed (0, 1 or 2)."""
        closed: list[Batch] = []
        user = self._users.get(event.uuid)
        before = user.size(event.uuid) if user else 0
        candidate = _User(partner_id) if user is None else user
        old_partner, old_regions = candidate.partner_id, candidate.regions
        old_segment = candidate.segments.get(event.segment)
        if old_segment is None or event.time >= old_segment[1]:
            candidate.segments[event.segment] = (event.status, event.time)
            candidate.partner_id = partner_id
            if event.regions:
                candidate.regions = event.regions
        growth = candidate.size(event.uuid) - before + (1 if user is None and self._users else 0)
        if self._users and self._size + growth > self.dest.batch.max_bytes:
            # Undo the change, close the current batch, and start the next with this event.
            if user is not None:
                user.partner_id, user.regions = old_partner, old_regions
                if old_segment is None:
                    del user.segments[event.segment]
                else:
                    user.segments[event.segment] = old_segment
            closed.extend(self.close())
            return closed + self.add(event, partner_id)
        if user is None:
            self._users[event.uuid] = candidate
        if self.deadline is None:
            self.deadline = self._clock() + self.dest.batch.max_wait
        candidate.events.append((event.id, event.fields))
        self._sources.add(event.id)
        self._size += growth
        if len(self._users) >= self.dest.batch.max_users:
            closed.extend(self.close())
        return closed

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
        return [
            Batch(
                destination_id=dest.id,
                body=body,
                users=len(users),
                segments=sum(len(u.segments) for _, u in users),
                events=[e for _, u in users for e in u.events],
            )
        ]
