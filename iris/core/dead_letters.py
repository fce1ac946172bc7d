"""Dead-letter entries (DESIGN 1.5): the original event fields plus why and where it failed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from iris.core.log_digest import LogDigest
from iris.core.logs import redact

log = logging.getLogger(__name__)

INVALID_EVENT = "invalid_event"
REJECTED = "rejected"
MAX_DELIVERIES = "max_deliveries"
TOO_LARGE = "too_large"
RETRIES_EXHAUSTED = "retries_exhausted"
REDIRECTED = "redirected"  # the partner answered a 3xx: its url changed
REASONS = (INVALID_EVENT, REJECTED, MAX_DELIVERIES, TOO_LARGE, RETRIES_EXHAUSTED, REDIRECTED)

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


_digests: dict[tuple[str, str], LogDigest] = {}


def report_written(entries: list[dict[str, str]], counter: Any) -> None:
    """Count (``iris_events_dead_lettered_total``) and log dead letters once they are written,
    never before: a write that fails is tried again, and must not be counted twice. The log
    has at most one line per destination and reason every 10 s, however many batches fail."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for entry in entries:
        groups.setdefault((entry["dlq_destination"], entry["dlq_reason"]), []).append(entry)
    for (destination, reason), group in groups.items():
        counter.labels(destination, reason).inc(len(group))
        digest = _digests.get((destination, reason))
        if digest is None:
            where = f" for {destination}" if destination else ""
            digest = _digests[(destination, reason)] = LogDigest(
                log, logging.INFO if reason == INVALID_EVENT else logging.WARNING,
                f"dead-lettered %d event(s){where} as {reason}: %s",
                f"dead-lettered %d event(s){where} as {reason} in the last %.0f s; last: %s",
                extra={"destination": destination} if destination else None)
        digest.add(len(group), group[0]["dlq_error"] or group[0]["dlq_status"])
