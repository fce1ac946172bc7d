"""Parse and validate inbound stream entries (DESIGN 1.1), once, at the edge."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from iris.errors import EventError


@dataclass(slots=True)
class Event:
    """One segment change for one user, as read from ``iris:events``."""

    id: str  # stream entry id
    uuid: str
    segment: str
    status: str  # "1" qualified, "0" left
    time: float  # epoch seconds: ``ts``, else the entry id's time
    dpuuid: str | None
    dpuuids: dict[str, str] | None
    destination: str | None
    regions: tuple[str, ...] | None
    fields: dict[str, str]  # the original fields, for the dead-letter stream

    def partner_id(self, user_dpid: str) -> str | None:
        """The DataPartner_UUID for a destination's User_DPID, if the event carries one."""
        if self.dpuuid:
            return self.dpuuid
        if self.dpuuids:
            return self.dpuuids.get(user_dpid)
        return None


def entry_time(entry_id: str) -> float:
    """The time a stream entry was added, from its ``<ms>-<seq>`` id."""
    return int(entry_id.partition("-")[0]) / 1000


def parse_ts(ts: str) -> float:
    """``ts`` as epoch seconds: an int or float, or ISO-8601 (naive means UTC)."""
    try:
        value = float(ts)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(ts.strip())
        except ValueError:
            raise EventError(f"ts {ts[:40]!r} is neither epoch seconds nor ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        value = parsed.timestamp()
    if not math.isfinite(value) or value < 0 or value >= 253402300800:  # year 10000
        raise EventError(f"ts {ts[:40]!r} is out of range")
    return value


def _parse_dpuuids(raw: str) -> dict[str, str]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise EventError("dpuuids is not valid JSON") from None
    if not isinstance(value, dict) or not value:
        raise EventError('dpuuids must be a JSON object {"<User_DPID>": "<DataPartner_UUID>"}')
    out: dict[str, str] = {}
    for key, val in value.items():
        if isinstance(val, int | float) and not isinstance(val, bool):
            val = str(val)
        if not isinstance(val, str) or not val or not key:
            raise EventError(f"dpuuids[{key!r}] must be a non-empty string")
        out[key] = val
    return out


def _check_utf8(name: str, value: str) -> None:
    """Bytes that were not UTF-8 arrive as lone surrogates (surrogateescape): refuse them."""
    for text in (name, value):
        try:
            text.encode()
        except UnicodeEncodeError:
            what = "field name" if text is name else "field"
            raise EventError(f"{what} {name[:40]!a} is not valid UTF-8") from None


def parse_event(entry_id: str, fields: dict[str, str]) -> Event:
    """Validate one entry; raise ``EventError`` naming the first problem."""
    get = fields.get
    for name, value in fields.items():
        if not (name.isascii() and value.isascii()):  # O(1) each: CPython flags ASCII text
            _check_utf8(name, value)
    uuid = get("uuid", "").strip()
    if not uuid:
        raise EventError("missing uuid")
    segment = get("segment", "").strip()
    if not segment:
        raise EventError("missing segment")
    status = get("status")
    if status != "1" and status != "0":  # the usual values, as producers write them
        status = (status or "1").strip() or "1"
        if status not in ("0", "1"):
            raise EventError(f"status must be 0 or 1, not {status[:20]!r}")
    ts = get("ts")
    when = parse_ts(ts) if ts else entry_time(entry_id)
    dpuuid = get("dpuuid", "").strip() or None
    raw_dpuuids = get("dpuuids")
    dpuuids = _parse_dpuuids(raw_dpuuids) if raw_dpuuids else None
    if dpuuid is None and dpuuids is None:
        raise EventError("missing dpuuid (or dpuuids)")
    regions = None
    if raw_regions := get("regions"):
        regions = tuple(r.strip() for r in raw_regions.split(",") if r.strip()) or None
    destination = get("destination")
    return Event(entry_id, uuid, segment, status, when, dpuuid, dpuuids,
                 destination.strip() or None if destination else None, regions, fields)
