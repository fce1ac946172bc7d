"""Dead-letter reasons (DESIGN 1.5), and how written dead letters are counted and logged.

The entry itself is ``records.DeadLetter``."""

from __future__ import annotations

import logging
from typing import Any

from iris.core.log_digest import LogDigest
from iris.core.records import DeadLetter

log = logging.getLogger(__name__)

INVALID_EVENT = "invalid_event"
REJECTED = "rejected"
MAX_DELIVERIES = "max_deliveries"
TOO_LARGE = "too_large"
RETRIES_EXHAUSTED = "retries_exhausted"
REDIRECTED = "redirected"  # the partner answered a 3xx: its url changed
REASONS = (INVALID_EVENT, REJECTED, MAX_DELIVERIES, TOO_LARGE, RETRIES_EXHAUSTED, REDIRECTED)

_digests: dict[tuple[str, str], LogDigest] = {}


def report_written(entries: list[DeadLetter], counter: Any) -> None:
    """Count (``iris_events_dead_lettered_total``) and log dead letters once they are written,
    never before: a write that fails is tried again, and must not be counted twice. The log
    has at most one line per destination and reason every 10 s, however many batches fail."""
    groups: dict[tuple[str, str], list[DeadLetter]] = {}
    for entry in entries:
        groups.setdefault((entry.destination, entry.reason), []).append(entry)
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
        digest.add(len(group), _errors(group))


def _errors(group: list[DeadLetter]) -> str:
    """What went wrong, for the log: the first error, and how many others differ (one line
    must not make four events missing a uuid of an event missing a dpuuid)."""
    errors = dict.fromkeys(d.scrubbed_error() or str(d.status or "") for d in group)
    first = next(iter(errors))
    others = len(errors) - 1
    return f"{first} (and {others} other error(s): see the dead-letter stream)" if others else first
