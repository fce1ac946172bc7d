"""Dead-letter entries (DESIGN 1.5): the original event fields plus why and where it failed."""

from __future__ import annotations

from datetime import UTC, datetime

from iris.logs import redact

INVALID_EVENT = "invalid_event"
REJECTED = "rejected"
MAX_DELIVERIES = "max_deliveries"
TOO_LARGE = "too_large"
RETRIES_EXHAUSTED = "retries_exhausted"
REASONS = (INVALID_EVENT, REJECTED, MAX_DELIVERIES, TOO_LARGE, RETRIES_EXHAUSTED)

ERROR_MAX_CHARS = 200


def dead_letter_entry(
    fields: dict[str, str], *, reason: str, source_id: str, destination: str = "",
    status: int | None = None, error: str = "",
) -> dict[str, str]:
    """The fields of one dead-letter entry; ``error`` is cut short and scrubbed of secrets."""
    entry = {k: v for k, v in fields.items() if not k.startswith("dlq_")}
    entry.update(
        dlq_reason=reason,
        dlq_destination=destination,
        dlq_status="" if status is None else str(status),
        dlq_error=redact(error)[:ERROR_MAX_CHARS],
        dlq_source_id=source_id,
        dlq_time=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    return entry
