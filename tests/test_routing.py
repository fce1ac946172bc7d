"""iris.core.routing.RouteTable: which destinations take an event, and why the others do not."""

from __future__ import annotations

from typing import Any

import pytest

from iris.config.model import Destination, parse_config
from iris.core.events import Event, parse_event
from iris.core.routing import (
    NO_DESTINATION,
    NO_PARTNER_ID,
    SKIP_REASONS,
    UNKNOWN_DESTINATION,
    RouteTable,
)


def destinations(*specs: dict[str, Any]) -> list[Destination]:
    raw = [
        {"url": f"https://{spec['id']}.example/aam", "client_id": "74323", **spec}
        for spec in specs
    ]
    return parse_config({"destinations": raw}, env={}).destinations


def event(segment: str = "100", **fields: str) -> Event:
    return parse_event("1469636242000-0", {"uuid": "u1", "segment": segment, **fields})


def routed(routes: list[tuple[Destination, str]]) -> list[tuple[str, str]]:
    return [(dest.id, partner_id) for dest, partner_id in routes]


@pytest.fixture
def table() -> RouteTable:
    return RouteTable(destinations(
        {"id": "all", "user_dpid": "1", "segments": ["*"]},
        {"id": "a", "user_dpid": "2", "segments": ["100", "200"]},
        {"id": "b", "user_dpid": "3", "segments": ["200", "300", "200"]},
    ))


def test_skip_reasons_are_the_metric_labels() -> None:
    assert SKIP_REASONS == ("no_destination", "unknown_destination", "no_partner_id")


def test_star_destination_takes_every_segment(table: RouteTable) -> None:
    routes, skips = table.route(event("999", dpuuid="d"))
    assert routed(routes) == [("all", "d")]
    assert skips == []


@pytest.mark.parametrize(
    ("segment", "expected"),
    [("100", ["all", "a"]), ("200", ["all", "a", "b"]), ("300", ["all", "b"]), ("4", ["all"])],
)
def test_segment_mappings(table: RouteTable, segment: str, expected: list[str]) -> None:
    routes, skips = table.route(event(segment, dpuuid="d"))
    assert routed(routes) == [(dest_id, "d") for dest_id in expected]  # each destination once
    assert skips == []


def test_default_segments_is_star() -> None:
    table = RouteTable(destinations({"id": "x", "user_dpid": "1"}))
    assert routed(table.route(event("anything", dpuuid="d"))[0]) == [("x", "d")]


def test_star_among_other_segments_routes_everything_once() -> None:
    table = RouteTable(destinations({"id": "x", "user_dpid": "1", "segments": ["5", "*"]}))
    assert routed(table.route(event("5", dpuuid="d"))[0]) == [("x", "d")]
    assert routed(table.route(event("6", dpuuid="d"))[0]) == [("x", "d")]


def test_no_match_is_no_destination() -> None:
    table = RouteTable(destinations({"id": "a", "user_dpid": "2", "segments": ["100"]}))
    assert table.route(event("999", dpuuid="d")) == ([], [NO_DESTINATION])


def test_explicit_destination_sends_only_there(table: RouteTable) -> None:
    routes, skips = table.route(event("200", dpuuid="d", destination="b"))
    assert routed(routes) == [("b", "d")]
    assert skips == []


def test_explicit_destination_ignores_its_segment_mapping(table: RouteTable) -> None:
    # Documented behaviour: an explicit destination is honoured even if its segments differ.
    routes, skips = table.route(event("100", dpuuid="d", destination="b"))
    assert routed(routes) == [("b", "d")]
    assert skips == []


def test_unknown_destination(table: RouteTable) -> None:
    assert table.route(event("100", dpuuid="d", destination="nope")) == (
        [], [UNKNOWN_DESTINATION]
    )


def test_dpuuids_fan_out_to_each_partner_with_its_own_id(table: RouteTable) -> None:
    routes, skips = table.route(event("200", dpuuids='{"1": "p-all", "2": "p-a", "3": "p-b"}'))
    assert routed(routes) == [("all", "p-all"), ("a", "p-a"), ("b", "p-b")]
    assert skips == []


def test_missing_partner_id_skips_only_that_destination(table: RouteTable) -> None:
    routes, skips = table.route(event("200", dpuuids='{"1": "p-all", "3": "p-b"}'))
    assert routed(routes) == [("all", "p-all"), ("b", "p-b")]
    assert skips == [NO_PARTNER_ID]


def test_one_skip_per_destination_lacking_a_partner_id(table: RouteTable) -> None:
    assert table.route(event("200", dpuuids='{"9": "p"}')) == (
        [], [NO_PARTNER_ID, NO_PARTNER_ID, NO_PARTNER_ID]
    )


def test_explicit_destination_without_its_partner_id(table: RouteTable) -> None:
    assert table.route(event("200", dpuuids='{"1": "p-all"}', destination="a")) == (
        [], [NO_PARTNER_ID]
    )


def test_routes_carry_the_configured_destination_objects() -> None:
    dests = destinations({"id": "a", "user_dpid": "2"})
    routes, _ = RouteTable(dests).route(event(dpuuid="d"))
    assert routes[0][0] is dests[0]


def test_no_destinations_at_all() -> None:
    assert RouteTable([]).route(event(dpuuid="d")) == ([], [NO_DESTINATION])
