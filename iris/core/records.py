"""The Redis wire records, encoded and decoded in one place each (DESIGN 1.5, 4).

- ``OutboundBatch``: a closed batch on its destination's outbound stream: the payload as it will
  be POSTed, the events it carries (kept as JSON text, parsed only when a dead letter or a
  split needs them), its counts and its idempotency key.
- ``DeadLetter``: an event that cannot be delivered, with why and where (``dlq_*`` fields).
- ``Trimmed``: an entry still pending for a consumer although the stream no longer holds it
  (a producer's MAXLEN, an XDEL): Redis returns it with no fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from iris.core.logs import redact

ERROR_MAX_CHARS = 200
DLQ_PREFIX = "dlq_"

Fields = dict[str, str]
Events = list[tuple[str, Fields]]  # (inbound entry id, its fields)


@dataclass(frozen=True, slots=True)
class Trimmed:
    """A pending entry whose fields the stream no longer holds."""

    id: str


@dataclass(frozen=True, slots=True)
class OutboundBatch:
    """One closed batch. ``events_json`` is ``[[source id, fields], ...]``."""

    body: bytes
    events_json: bytes
    users: int
    segments: int
    key: str  # the idempotency key (a split half appends ``.0``/``.1``)
    created_ms: int = 0  # when the batch closed (epoch milliseconds)

    def encode(self) -> dict[str, str | bytes]:
        return {"body": self.body, "events": self.events_json, "users": str(self.users),
                "segments": str(self.segments), "created_ms": str(self.created_ms),
                "key": self.key}

    @classmethod
    def decode(cls, fields: Fields, fallback_key: str) -> OutboundBatch:
        """Raise ``KeyError``/``ValueError`` for a corrupt entry (it is then dead-lettered as it
        is, after ``max_deliveries``); ``fallback_key`` serves entries written without a key.
        ``events`` is only checked to be a JSON array here: it is parsed when a dead letter or
        a split needs it, and an entry whose array does not parse takes the same path then."""
        events = fields["events"]
        if not (events.startswith("[") and events.endswith("]")):  # parsed only when needed
            raise ValueError("events is not a JSON array")
        return cls(fields["body"].encode(), events.encode(), int(fields["users"]),
                   int(fields["segments"]), fields.get("key") or fallback_key,
                   int(fields.get("created_ms") or 0))

    def events(self) -> Events:
        """The events, parsed (raises ``ValueError`` on a corrupt entry)."""
        return [(source, event) for source, event in orjson.loads(self.events_json)]


def events_of(entry_id: str, fields: Fields) -> Events:
    """The events a batch entry carries; a corrupt entry is dead-lettered as it is (each field
    cut to 1,000 characters)."""
    try:
        return [(source, event) for source, event in orjson.loads(fields["events"])]
    except (KeyError, ValueError, TypeError):
        return [(entry_id, {k: v[:1000] for k, v in fields.items()})]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that cannot be delivered: its original fields plus why and where it failed."""

    event: Fields
    reason: str
    source_id: str
    destination: str = ""
    status: int | None = None
    error: str = ""

    def scrubbed_error(self) -> str:
        """``error`` cut short and scrubbed of secrets: what is stored and logged."""
        return redact(self.error)[:ERROR_MAX_CHARS]

    def encode(self) -> Fields:
        """The entry's fields."""
        entry = {k: v for k, v in self.event.items() if not k.startswith(DLQ_PREFIX)}
        entry.update(
            dlq_reason=self.reason,
            dlq_destination=self.destination,
            dlq_status="" if self.status is None else str(self.status),
            dlq_error=self.scrubbed_error(),
            dlq_source_id=self.source_id,
            dlq_time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        return entry

    @classmethod
    def decode(cls, fields: Fields) -> DeadLetter:
        """A stored dead letter (missing ``dlq_*`` fields read as empty)."""
        status = fields.get("dlq_status", "")
        return cls({k: v for k, v in fields.items() if not k.startswith(DLQ_PREFIX)},
                   fields.get("dlq_reason", ""), fields.get("dlq_source_id", ""),
                   fields.get("dlq_destination", ""), int(status) if status.isdigit() else None,
                   fields.get("dlq_error", ""))
