"""iris.core.payload: the AAM date format and the standard payload envelope (DESIGN 1.2)."""

from __future__ import annotations

import calendar
import locale
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from iris.core.payload import DATE_LEN, aam_date, encode_payload, envelope_size

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TOP_KEYS = {"ProcessTime", "User_DPID", "Client_ID", "AAM_Destination_Id", "User_count", "Users"}


def expected_date(epoch: int) -> str:
    """Written independently of iris: English names from tables, not from the C library."""
    dt = datetime.fromtimestamp(epoch, UTC)
    return (
        f"{DAYS[dt.weekday()]} {MONTHS[dt.month - 1]} {dt.day:02d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} UTC {dt.year}"
    )


def user(uuid: str, dpuuid: str, *segments: tuple[str, str, int]) -> dict[str, Any]:
    return {
        "AAM_UUID": uuid,
        "DataPartner_UUID": dpuuid,
        "Segments": [
            {"Segment_ID": sid, "Status": status, "DateTime": aam_date(when)}
            for sid, status, when in segments
        ],
    }


def scalars(value: Any) -> Iterator[Any]:
    """Every leaf of a parsed JSON document."""
    if isinstance(value, dict):
        for item in value.values():
            yield from scalars(item)
    elif isinstance(value, list):
        for item in value:
            yield from scalars(item)
    else:
        yield value


# --------------------------------------------------------------------------- aam_date

def test_aam_date_matches_the_seed_example() -> None:
    assert aam_date(1469636242) == "Wed Jul 27 16:17:22 UTC 2016"
    assert aam_date(1469636262) == "Wed Jul 27 16:17:42 UTC 2016"
    assert len(aam_date(1469636242)) == DATE_LEN


def test_aam_date_zero_pads_day_and_time() -> None:
    # 2016-07-03 04:05:06 UTC, a Sunday
    epoch = calendar.timegm((2016, 7, 3, 4, 5, 6))
    assert aam_date(epoch) == "Sun Jul 03 04:05:06 UTC 2016"
    assert aam_date(0) == "Thu Jan 01 00:00:00 UTC 1970"


def test_aam_date_every_weekday_and_month() -> None:
    start = datetime(2016, 1, 1, 23, 59, 59, tzinfo=UTC)
    seen_days: set[str] = set()
    seen_months: set[str] = set()
    for offset in range(366):  # 2016 is a leap year: every day of it
        epoch = int((start + timedelta(days=offset)).timestamp())
        text = aam_date(epoch)
        assert text == expected_date(epoch)
        assert len(text) == DATE_LEN
        seen_days.add(text[:3])
        seen_months.add(text[4:7])
    assert seen_days == set(DAYS)
    assert seen_months == set(MONTHS)
    assert aam_date(calendar.timegm((2016, 2, 29, 12, 0, 0))) == "Mon Feb 29 12:00:00 UTC 2016"
    assert aam_date(calendar.timegm((2016, 12, 31, 23, 59, 59))) == "Sat Dec 31 23:59:59 UTC 2016"


_NON_C_LOCALES = (
    "de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "es_ES.UTF-8", "ja_JP.UTF-8",
    "ru_RU.UTF-8", "de_DE", "fr_FR",
)


@pytest.fixture
def foreign_time_locale() -> Iterator[str]:
    """LC_TIME set to a non-English locale for the test, restored afterwards."""
    saved = locale.setlocale(locale.LC_TIME)
    for name in _NON_C_LOCALES:
        try:
            locale.setlocale(locale.LC_TIME, name)
        except locale.Error:
            continue
        break
    else:
        pytest.skip(f"no non-C locale installed (tried {', '.join(_NON_C_LOCALES)})")
    try:
        yield name
    finally:
        locale.setlocale(locale.LC_TIME, saved)


def test_aam_date_is_english_whatever_the_locale(foreign_time_locale: str) -> None:
    aam_date.cache_clear()  # results cached under the C locale must not hide a locale bug
    try:
        assert aam_date(1469636242) == "Wed Jul 27 16:17:22 UTC 2016"
        for month in range(1, 13):
            epoch = calendar.timegm((2017, month, 1, 0, 0, 0))
            assert aam_date(epoch) == expected_date(epoch), foreign_time_locale
    finally:
        aam_date.cache_clear()


# --------------------------------------------------------------------------- encode_payload

def test_encode_payload_round_trip() -> None:
    users = [
        user("19393713347508998471543946036483", "4250", ("14356", "1", 1469636242)),
        user("u2", "p2", ("1", "0", 1469636243), ("2", "1", 1469636244)),
    ]
    body = encode_payload(destination_id="423", user_dpid="12345", client_id="74323",
                          users=users, process_time=1469636262.9)
    doc = orjson.loads(body)
    assert set(doc) == TOP_KEYS
    assert doc == {
        "ProcessTime": "Wed Jul 27 16:17:42 UTC 2016",  # fraction truncated, not rounded
        "User_DPID": "12345",
        "Client_ID": "74323",
        "AAM_Destination_Id": "423",
        "User_count": "2",
        "Users": users,
    }
    assert set(doc["Users"][0]) == {"AAM_UUID", "DataPartner_UUID", "Segments"}
    assert set(doc["Users"][0]["Segments"][0]) == {"Segment_ID", "Status", "DateTime"}
    assert all(isinstance(v, str) for v in scalars(doc))


@pytest.mark.parametrize("count", [0, 1, 9, 10, 11, 100])
def test_user_count_is_the_number_of_users(count: int) -> None:
    users = [user(f"u{i}", f"p{i}", ("7", "1", 1469636242)) for i in range(count)]
    doc = orjson.loads(encode_payload(destination_id="d", user_dpid="1", client_id="2",
                                      users=users, process_time=0))
    assert doc["User_count"] == str(count)
    assert len(doc["Users"]) == count
    assert all(isinstance(v, str) for v in scalars(doc))


def test_encode_payload_defaults_process_time_to_now() -> None:
    before = int(datetime.now(UTC).timestamp())
    doc = orjson.loads(encode_payload(destination_id="d", user_dpid="1", client_id="2",
                                      users=[]))
    after = int(datetime.now(UTC).timestamp())
    assert doc["ProcessTime"] in {expected_date(t) for t in range(before, after + 1)}


def test_encode_payload_is_compact_utf8() -> None:
    users = [user("ü-日本", "p", ("1", "1", 0))]
    body = encode_payload(destination_id="d", user_dpid="1", client_id="2", users=users,
                          process_time=0)
    assert b" " not in body.replace(b"Thu Jan 01 00:00:00 UTC 1970", b"")
    assert "ü-日本".encode() in body  # raw UTF-8, not \\u escapes
    assert orjson.loads(body)["Users"][0]["AAM_UUID"] == "ü-日本"


# --------------------------------------------------------------------------- envelope_size

def test_envelope_size_is_the_empty_envelope_plus_five_bytes_of_slack() -> None:
    empty = encode_payload(destination_id="423", user_dpid="12345", client_id="74323", users=[])
    assert envelope_size("423", "12345", "74323") == len(empty) + 5


@pytest.mark.parametrize("count", [1, 9, 10, 99, 100, 1000])
def test_envelope_size_accounts_for_every_byte_but_users(count: int) -> None:
    """body = envelope + the Users items; the slack covers a User_count of up to 6 digits."""
    users = [user(f"uuid-{i}", f"dp-{i}", ("14356", "1", 1469636242)) for i in range(count)]
    body = encode_payload(destination_id="423", user_dpid="12345", client_id="74323",
                          users=users)
    items = len(orjson.dumps(users)) - len(b"[]")
    envelope = len(body) - items
    slack = 5 - (len(str(count)) - 1)
    assert envelope_size("423", "12345", "74323") == envelope + slack
    assert envelope_size("423", "12345", "74323") >= envelope


def test_envelope_size_grows_with_the_ids() -> None:
    small = envelope_size("1", "2", "3")
    assert envelope_size("1234", "2", "3") == small + 3
    assert envelope_size("1", "2é", "3") == small + 2  # bytes, not characters
