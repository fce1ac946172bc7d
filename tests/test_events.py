"""iris.core.events.parse_event: one inbound stream entry, validated once (DESIGN 1.1)."""

from __future__ import annotations

from typing import Any

import pytest

from iris.core.events import Event, parse_event
from iris.errors import EventError

ENTRY_ID = "1469636242123-7"
ENTRY_TIME = 1469636242.123


def parse(**fields: str) -> Event:
    return parse_event(ENTRY_ID, {"uuid": "u1", "segment": "14356", "dpuuid": "d1", **fields})


def parse_error(fields: dict[str, str]) -> str:
    with pytest.raises(EventError) as info:
        parse_event(ENTRY_ID, fields)
    return str(info.value)


# --------------------------------------------------------------------------- valid entries

def test_minimal_entry() -> None:
    fields = {"uuid": "u1", "segment": "14356", "dpuuid": "d1"}
    event = parse_event(ENTRY_ID, fields)
    assert event == Event(
        id=ENTRY_ID, uuid="u1", segment="14356", status="1", time=ENTRY_TIME, dpuuid="d1",
        dpuuids=None, destination=None, regions=None, fields=fields,
    )
    assert event.fields is fields  # the original, for the dead-letter stream


def test_entry_time_comes_from_the_entry_id() -> None:
    assert parse_event("0-0", {"uuid": "u", "segment": "s", "dpuuid": "d"}).time == 0.0
    assert parse_event("1700000000000-0", {"uuid": "u", "segment": "s", "dpuuid": "d"}).time \
        == 1700000000.0


def test_all_fields() -> None:
    event = parse(status="0", ts="1469636000", dpuuids='{"12345": "p1"}', destination="423",
                  regions="7,9")
    assert (event.status, event.time, event.dpuuid, event.dpuuids, event.destination,
            event.regions) == ("0", 1469636000.0, "d1", {"12345": "p1"}, "423", ("7", "9"))


@pytest.mark.parametrize("status", ["0", "1", " 1 "])
def test_status(status: str) -> None:
    assert parse(status=status).status == status.strip()


def test_blank_status_means_qualified() -> None:
    assert parse(status="").status == "1"


def test_values_are_stripped() -> None:
    event = parse_event(ENTRY_ID, {"uuid": " u1 ", "segment": " 5\t", "dpuuid": " d ",
                                   "destination": " 423 "})
    assert (event.uuid, event.segment, event.dpuuid, event.destination) == ("u1", "5", "d", "423")


def test_blank_optional_fields_are_absent() -> None:
    event = parse(destination="  ", regions=" , ,", ts="")
    assert event.destination is None
    assert event.regions is None
    assert event.time == ENTRY_TIME


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("1469636242", 1469636242.0),
        ("1469636242.5", 1469636242.5),
        ("0", 0.0),
        (" 1469636242 ", 1469636242.0),
        ("2016-07-27T16:17:22Z", 1469636242.0),
        ("2016-07-27T16:17:22.250Z", 1469636242.25),
        ("2016-07-27T18:17:22+02:00", 1469636242.0),
        ("2016-07-27T11:17:22-05:00", 1469636242.0),
        ("2016-07-27T16:17:22", 1469636242.0),  # naive = UTC
        ("2016-07-27 16:17:22", 1469636242.0),
        ("2016-07-27", 1469577600.0),
    ],
)
def test_ts(ts: str, expected: float) -> None:
    assert parse(ts=ts).time == expected


# --------------------------------------------------------------------------- malformed entries

@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"segment": "1", "dpuuid": "d"}, "uuid"),
        ({"uuid": "", "segment": "1", "dpuuid": "d"}, "uuid"),
        ({"uuid": "  \t", "segment": "1", "dpuuid": "d"}, "uuid"),
        ({"uuid": "u", "dpuuid": "d"}, "segment"),
        ({"uuid": "u", "segment": " ", "dpuuid": "d"}, "segment"),
        ({"uuid": "u", "segment": "1"}, "dpuuid"),
        ({"uuid": "u", "segment": "1", "dpuuid": " "}, "dpuuid"),
        ({"uuid": "u", "segment": "1", "dpuuids": ""}, "dpuuid"),
    ],
)
def test_missing_required_field(fields: dict[str, str], field: str) -> None:
    message = parse_error(fields)
    assert message.startswith(f"missing {field}")


@pytest.mark.parametrize("status", ["7", "2", "-1", "yes", "true", "01"])
def test_bad_status(status: str) -> None:
    message = parse_error({"uuid": "u", "segment": "1", "dpuuid": "d", "status": status})
    assert message == f"status must be 0 or 1, not {status!r}"


@pytest.mark.parametrize("ts", ["yesterday", "2016-13-01T00:00:00Z", "1469636242abc", " ",
                                "27/07/2016"])
def test_unparseable_ts(ts: str) -> None:
    message = parse_error({"uuid": "u", "segment": "1", "dpuuid": "d", "ts": ts})
    assert message == f"ts {ts!r} is neither epoch seconds nor ISO-8601"


@pytest.mark.parametrize("ts", ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "-0.5",
                                "1e300", "253402300800", "1960-01-01T00:00:00Z"])
def test_ts_out_of_range(ts: str) -> None:
    message = parse_error({"uuid": "u", "segment": "1", "dpuuid": "d", "ts": ts})
    assert message == f"ts {ts!r} is out of range"


def test_long_bad_ts_is_cut_in_the_message() -> None:
    message = parse_error({"uuid": "u", "segment": "1", "dpuuid": "d", "ts": "x" * 500})
    assert message == f"ts {'x' * 40!r} is neither epoch seconds nor ISO-8601"


@pytest.mark.parametrize(
    ("dpuuids", "message"),
    [
        ("{", "dpuuids is not valid JSON"),
        ("{'12345': 'p'}", "dpuuids is not valid JSON"),
        ("12345:p", "dpuuids is not valid JSON"),
        ('["p"]', 'dpuuids must be a JSON object {"<User_DPID>": "<DataPartner_UUID>"}'),
        ('"p"', 'dpuuids must be a JSON object {"<User_DPID>": "<DataPartner_UUID>"}'),
        ("42", 'dpuuids must be a JSON object {"<User_DPID>": "<DataPartner_UUID>"}'),
        ("null", 'dpuuids must be a JSON object {"<User_DPID>": "<DataPartner_UUID>"}'),
        ("{}", 'dpuuids must be a JSON object {"<User_DPID>": "<DataPartner_UUID>"}'),
        ('{"12345": null}', "dpuuids['12345'] must be a non-empty string"),
        ('{"12345": true}', "dpuuids['12345'] must be a non-empty string"),
        ('{"12345": ["p"]}', "dpuuids['12345'] must be a non-empty string"),
        ('{"12345": {"a": "b"}}', "dpuuids['12345'] must be a non-empty string"),
        ('{"12345": ""}', "dpuuids['12345'] must be a non-empty string"),
        ('{"1": "a", "": "b"}', "dpuuids[''] must be a non-empty string"),
    ],
)
def test_bad_dpuuids(dpuuids: str, message: str) -> None:
    fields = {"uuid": "u", "segment": "1", "dpuuids": dpuuids}
    assert parse_error(fields) == message
    assert parse_error({**fields, "dpuuid": "d"}) == message  # a dpuuid does not excuse it


def test_dpuuids_numbers_become_strings() -> None:
    assert parse(dpuuids='{"12345": 4250}').dpuuids == {"12345": "4250"}


def test_first_problem_is_reported() -> None:
    assert parse_error({"status": "7"}) == "missing uuid"
    assert parse_error({"uuid": "u", "segment": "1", "status": "7", "ts": "x"}).startswith(
        "status"
    )


GOOD = {"uuid": "u", "segment": "s", "dpuuid": "d"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({**GOOD, "dpuuid": "d\udcff"}, "field 'dpuuid' is not valid UTF-8"),  # a later field
        ({**GOOD, "n\udcffte": "x"}, "field name 'n\\udcffte' is not valid UTF-8"),
        ({**GOOD, "uuid": "\udce9", "n\udce9": "\udce9"}, "field 'uuid' is not valid UTF-8"),
    ],
    ids=["later-field", "field-name", "first-of-two"],
)
def test_bytes_that_were_not_utf8_are_refused_wherever_they_are(fields: dict[str, str],
                                                                message: str) -> None:
    """Redis's bytes come decoded with surrogateescape: a lone surrogate is a byte that was
    not UTF-8, in any field name or value; the first one is named."""
    assert parse_error(fields) == message


def test_text_beyond_ascii_is_fine_in_names_and_values() -> None:
    event = parse_event("1-0", {**GOOD, "uuid": "ünï", "café": "crème"})
    assert event.uuid == "ünï" and event.fields["café"] == "crème"


# --------------------------------------------------------------------------- regions

@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ("7, 9,,", ("7", "9")),
        ("7", ("7",)),
        (" 7 ,9 , 11", ("7", "9", "11")),
        (",,", None),
    ],
)
def test_regions(regions: str, expected: Any) -> None:
    assert parse(regions=regions).regions == expected


# --------------------------------------------------------------------------- partner_id

def test_partner_id_with_dpuuid() -> None:
    event = parse_event(ENTRY_ID, {"uuid": "u", "segment": "1", "dpuuid": "d1"})
    assert event.partner_id("12345") == "d1"
    assert event.partner_id("anything") == "d1"


def test_partner_id_with_dpuuids() -> None:
    event = parse_event(ENTRY_ID, {"uuid": "u", "segment": "1",
                                   "dpuuids": '{"12345": "p1", "67890": "p2"}'})
    assert event.dpuuid is None
    assert event.partner_id("12345") == "p1"
    assert event.partner_id("67890") == "p2"
    assert event.partner_id("11111") is None


def test_partner_id_prefers_dpuuid_over_dpuuids() -> None:
    event = parse(dpuuids='{"12345": "p1"}')
    assert event.partner_id("12345") == "d1"
    assert event.partner_id("67890") == "d1"
