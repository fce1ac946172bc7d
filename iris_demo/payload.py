"""The partner double's second opinion on the standard payload (DESIGN 1.2, seed 000).

It is written from the spec and deliberately shares no code with the iris payload builder, so
that it catches the builder's bugs; it lives apart from the server (``partner``) because tests
also check payloads with it directly. ``validate_payload`` raises ``PayloadError`` at the first
deviation.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_RE = re.compile(
    rf"({'|'.join(DAYS)}) ({'|'.join(MONTHS)}) (\d\d) (\d\d):(\d\d):(\d\d) UTC (\d{{4}})",
    re.ASCII,
)
TOP_KEYS = frozenset(
    {"ProcessTime", "User_DPID", "Client_ID", "AAM_Destination_Id", "User_count", "Users"}
)
USER_KEYS = frozenset({"AAM_UUID", "DataPartner_UUID", "Segments"})
USER_OPTIONAL = frozenset({"AAM_Regions"})
SEGMENT_KEYS = frozenset({"Segment_ID", "Status", "DateTime"})


class PayloadError(ValueError):
    """One violation of the standard payload; ``str()`` says what and where."""


def format_aam_date(dt: datetime) -> str:
    """``Wed Jul 27 16:17:42 UTC 2016`` with English names, whatever the locale."""
    dt = dt.astimezone(UTC)
    return (
        f"{DAYS[dt.weekday()]} {MONTHS[dt.month - 1]} {dt.day:02d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} UTC {dt.year:04d}"
    )


def parse_aam_date(text: str) -> datetime:
    """Parse strictly (right weekday, real date, zero padding); raise ValueError otherwise."""
    m = _DATE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not like 'Wed Jul 27 16:17:42 UTC 2016'")
    _day, mon, dd, hh, mi, ss, yyyy = m.groups()  # weekday checked by re-formatting
    dt = datetime(int(yyyy), MONTHS.index(mon) + 1, int(dd), int(hh), int(mi), int(ss), tzinfo=UTC)
    if format_aam_date(dt) != text:
        raise ValueError(f"{text!r} is not a consistent date (weekday {DAYS[dt.weekday()]})")
    return dt


def loads_strict(body: bytes) -> Any:
    """UTF-8 JSON without duplicate keys, NaN or Infinity."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise PayloadError(f"duplicate JSON key {key!r}")
            out[key] = value
        return out

    def bad_constant(name: str) -> Any:
        raise PayloadError(f"JSON constant {name} is not allowed")

    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=pairs, parse_constant=bad_constant)
    except UnicodeDecodeError as e:
        raise PayloadError(f"body is not UTF-8: {e}") from e
    except json.JSONDecodeError as e:
        raise PayloadError(f"body is not JSON: {e}") from e


def _where(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _keys(obj: Any, path: str, required: frozenset[str],
          optional: frozenset[str]) -> dict[str, Any]:
    """``obj`` must be an object with all of ``required`` and nothing beyond ``optional``."""
    if not isinstance(obj, dict):
        raise PayloadError(f"{path or 'body'}: expected an object, got {type(obj).__name__}")
    missing = sorted(required - obj.keys())
    if missing:
        raise PayloadError(f"{path or 'body'}: missing key(s) {', '.join(missing)}")
    extra = sorted(obj.keys() - required - optional)
    if extra:
        raise PayloadError(f"{path or 'body'}: unexpected key(s) {', '.join(extra)}")
    return obj


def _string(value: Any, path: str, *, expect: str | None = None) -> str:
    """A non-empty str (and equal to ``expect`` when given)."""
    if not isinstance(value, str):
        raise PayloadError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    if not value:
        raise PayloadError(f"{path}: empty string")
    if expect is not None and value != expect:
        raise PayloadError(f"{path}: expected {expect!r}, got {value!r}")
    return value


def _date(value: Any, path: str) -> None:
    text = _string(value, path)
    try:
        parse_aam_date(text)
    except ValueError as e:
        raise PayloadError(f"{path}: {e}") from None


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise PayloadError(f"{path}: expected a list, got {type(value).__name__}")
    if not value:
        raise PayloadError(f"{path}: empty list")
    return value


def _check_segments(value: Any, path: str) -> None:
    seen: set[str] = set()
    for i, seg in enumerate(_list(value, path)):
        where = _where(path, i)
        _keys(seg, where, SEGMENT_KEYS, frozenset())
        sid = _string(seg["Segment_ID"], f"{where}.Segment_ID")
        if sid in seen:
            raise PayloadError(f"{where}.Segment_ID: segment {sid!r} appears twice for this user")
        seen.add(sid)
        status = _string(seg["Status"], f"{where}.Status")
        if status not in ("0", "1"):
            raise PayloadError(f'{where}.Status: expected "0" or "1", got {status!r}')
        _date(seg["DateTime"], f"{where}.DateTime")


def _check_user(user: Any, where: str) -> str:
    _keys(user, where, USER_KEYS, USER_OPTIONAL)
    uuid = _string(user["AAM_UUID"], f"{where}.AAM_UUID")
    _string(user["DataPartner_UUID"], f"{where}.DataPartner_UUID")
    _check_segments(user["Segments"], f"{where}.Segments")
    if "AAM_Regions" in user:
        for j, region in enumerate(_list(user["AAM_Regions"], f"{where}.AAM_Regions")):
            _string(region, f"{where}.AAM_Regions[{j}]")
    return uuid


def validate_payload(doc: Any, *, destination_id: str, user_dpid: str,
                     client_id: str) -> dict[str, Any]:
    """``doc``, once known to be a standard payload; raise PayloadError at the first deviation
    from it."""
    payload = _keys(doc, "", TOP_KEYS, frozenset())
    for key in ("ProcessTime", "User_DPID", "Client_ID", "AAM_Destination_Id", "User_count"):
        _string(payload[key], key)
    _date(payload["ProcessTime"], "ProcessTime")
    _string(payload["User_DPID"], "User_DPID", expect=user_dpid)
    _string(payload["Client_ID"], "Client_ID", expect=client_id)
    _string(payload["AAM_Destination_Id"], "AAM_Destination_Id", expect=destination_id)
    users = _list(payload["Users"], "Users")
    if payload["User_count"] != str(len(users)):
        raise PayloadError(f"User_count: {payload['User_count']!r} but Users has {len(users)}")
    seen: dict[str, int] = {}
    for i, user in enumerate(users):
        uuid = _check_user(user, f"Users[{i}]")
        if uuid in seen:
            raise PayloadError(f"Users[{i}].AAM_UUID: {uuid!r} already in Users[{seen[uuid]}]")
        seen[uuid] = i
    return payload
