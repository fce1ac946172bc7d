"""iris.core.batching.BatchBuilder: one destination's open batch, closed at max_users, max_bytes or
max_wait (DESIGN 1.2 and Part 2 "Batch"). Every body is checked by the mock partner's validator,
which shares no code with the builder."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from iris.config.model import Destination, parse_config
from iris.core.batching import Batch, BatchBuilder
from iris.core.events import Event, parse_event
from iris.core.payload import aam_date, envelope_size
from iris_demo.payload import validate_payload

T0 = 1469636242  # Wed Jul 27 16:17:22 UTC 2016


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def destination(**batch: Any) -> Destination:
    raw = {"id": "423", "url": "https://partner.example/aam", "user_dpid": "12345",
           "client_id": "74323", "batch": batch}
    return parse_config({"destinations": [raw]}, env={}).destinations[0]


_seq = iter(range(1, 10**9))


def event(uuid: str, segment: str = "1", *, status: str = "1", ts: float = T0,
          entry_id: str | None = None, **extra: str) -> Event:
    fields = {"uuid": uuid, "segment": segment, "status": status, "ts": str(ts),
              "dpuuid": f"dp-{uuid}", **extra}
    return parse_event(entry_id or f"1469636242000-{next(_seq)}", fields)


def add(builder: BatchBuilder, ev: Event, partner_id: str | None = None) -> list[Batch]:
    return builder.add(ev, partner_id or ev.dpuuid or "")


def check(batch: Batch, dest: Destination) -> dict[str, Any]:
    """The parsed body, after the partner-side validator has accepted it."""
    doc = orjson.loads(batch.body)
    validate_payload(doc, destination_id=dest.id, user_dpid=dest.user_dpid,
                     client_id=dest.client_id)
    assert batch.destination_id == dest.id
    assert batch.users == len(doc["Users"]) == int(doc["User_count"])
    assert batch.segments == sum(len(u["Segments"]) for u in doc["Users"])
    return doc


def users_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["AAM_UUID"]: u for u in doc["Users"]}


def segments_of(user: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {s["Segment_ID"]: (s["Status"], s["DateTime"]) for s in user["Segments"]}


def only(batches: list[Batch]) -> Batch:
    assert len(batches) == 1, batches
    return batches[0]


# --------------------------------------------------------------------------- folding

def test_one_entry_per_user_with_all_its_segments() -> None:
    dest = destination()
    builder = BatchBuilder(dest)
    for ev in (event("u1", "10"), event("u2", "10", ts=T0 + 1), event("u1", "20", status="0"),
               event("u1", "30", ts=T0 + 2)):
        assert add(builder, ev) == []
    assert len(builder) == 2
    batch = only(builder.close())
    doc = check(batch, dest)
    assert [u["AAM_UUID"] for u in doc["Users"]] == ["u1", "u2"]
    assert doc["Users"][0] == {
        "AAM_UUID": "u1",
        "DataPartner_UUID": "dp-u1",
        "Segments": [
            {"Segment_ID": "10", "Status": "1", "DateTime": aam_date(T0)},
            {"Segment_ID": "20", "Status": "0", "DateTime": aam_date(T0)},
            {"Segment_ID": "30", "Status": "1", "DateTime": aam_date(T0 + 2)},
        ],
    }
    assert doc["Users"][1] == {
        "AAM_UUID": "u2",
        "DataPartner_UUID": "dp-u2",
        "Segments": [{"Segment_ID": "10", "Status": "1", "DateTime": aam_date(T0 + 1)}],
    }
    assert (batch.users, batch.segments) == (2, 4)
    assert len(builder) == 0
    assert builder.close() == []


def test_latest_change_per_user_and_segment_wins_by_event_time() -> None:
    dest = destination()
    builder = BatchBuilder(dest)
    add(builder, event("u1", "10", status="1", ts=T0 + 10))
    add(builder, event("u1", "10", status="0", ts=T0 + 20))  # newer: wins
    add(builder, event("u1", "10", status="1", ts=T0 + 15))  # older, arrives later: ignored
    add(builder, event("u1", "11", status="0", ts=T0 + 5))
    add(builder, event("u1", "11", status="1", ts=T0 + 5))  # same time: the later one wins
    doc = check(only(builder.close()), dest)
    assert segments_of(users_of(doc)["u1"]) == {
        "10": ("0", aam_date(T0 + 20)),
        "11": ("1", aam_date(T0 + 5)),
    }


def test_partner_id_follows_the_latest_applied_change() -> None:
    dest = destination()
    builder = BatchBuilder(dest)
    add(builder, event("u1", "10", ts=T0 + 10), "p-old")
    add(builder, event("u1", "10", ts=T0 + 20), "p-new")
    add(builder, event("u1", "10", ts=T0 + 15), "p-stale")  # not applied
    doc = check(only(builder.close()), dest)
    assert users_of(doc)["u1"]["DataPartner_UUID"] == "p-new"


def test_regions_become_aam_regions() -> None:
    dest = destination()
    builder = BatchBuilder(dest)
    add(builder, event("u1", "10", regions="7, 9,,"))
    add(builder, event("u1", "11"))  # no regions: keeps the user's regions
    add(builder, event("u2", "10"))
    doc = check(only(builder.close()), dest)
    users = users_of(doc)
    assert users["u1"]["AAM_Regions"] == ["7", "9"]
    assert "AAM_Regions" not in users["u2"]


def test_time_is_truncated_to_the_second() -> None:
    dest = destination()
    builder = BatchBuilder(dest)
    add(builder, event("u1", "10", ts=T0 + 0.999))
    doc = check(only(builder.close()), dest)
    assert doc["Users"][0]["Segments"][0]["DateTime"] == "Wed Jul 27 16:17:22 UTC 2016"


# --------------------------------------------------------------------------- max_users

def test_closes_exactly_at_max_users() -> None:
    dest = destination(max_users=3)
    builder = BatchBuilder(dest)
    assert add(builder, event("u1")) == []
    assert add(builder, event("u2")) == []
    assert add(builder, event("u1", "2")) == []  # same user: still two
    assert add(builder, event("u2", "3")) == []
    assert len(builder) == 2
    batch = only(add(builder, event("u3")))
    doc = check(batch, dest)
    assert [u["AAM_UUID"] for u in doc["Users"]] == ["u1", "u2", "u3"]
    assert batch.users == 3
    assert len(builder) == 0
    assert builder.deadline is None
    assert builder.close() == []


def test_max_users_one_closes_on_every_user() -> None:
    dest = destination(max_users=1)
    builder = BatchBuilder(dest)
    for uuid in ("a", "b", "c"):
        batch = only(add(builder, event(uuid)))
        assert users_of(check(batch, dest)).keys() == {uuid}


def test_default_is_aam_sized_messages() -> None:
    dest = destination()
    builder = BatchBuilder(dest)
    closed = [b for i in range(25) for b in add(builder, event(f"u{i}"))]
    closed += builder.close()
    assert [b.users for b in closed] == [10, 10, 5]
    for b in closed:
        check(b, dest)


# --------------------------------------------------------------------------- max_bytes

def estimate(dest: Destination, users: list[dict[str, Any]]) -> int:
    """The documented size budget: the envelope (with its 5 bytes of slack) plus the users."""
    return envelope_size(dest.id, dest.user_dpid, dest.client_id) + len(orjson.dumps(users)) - 2


def fill(builder: BatchBuilder, events: Iterable[Event]) -> list[Batch]:
    closed = [b for ev in events for b in add(builder, ev)]
    return closed + builder.close()


@pytest.mark.parametrize(("seed", "pad"), [(1, "x"), (2, "x"), (3, "x"), (4, "é日")])
def test_max_bytes_is_never_exceeded_and_batches_are_full(seed: int, pad: str) -> None:
    rng = random.Random(seed)
    dest = destination(max_users=10_000, max_bytes=2000)
    builder = BatchBuilder(dest)
    events = [
        event(f"u{i}-" + pad * rng.randrange(0, 120), str(rng.randrange(1, 10**6)),
              ts=T0 + rng.randrange(0, 10**6), **({"regions": "7,9"} if i % 3 == 0 else {}))
        for i in range(300)
    ]
    batches = fill(builder, events)
    assert len(batches) > 10
    docs = [check(b, dest) for b in batches]
    assert sum(len(d["Users"]) for d in docs) == 300
    for i, (batch, doc) in enumerate(zip(batches, docs, strict=True)):
        assert len(batch.body) <= dest.batch.max_bytes
        assert estimate(dest, doc["Users"]) <= dest.batch.max_bytes
        if i + 1 < len(docs):
            # The estimate is exact (orjson writes UTF-8 raw): one more user would not fit.
            one_more = doc["Users"] + docs[i + 1]["Users"][:1]
            assert estimate(dest, one_more) > dest.batch.max_bytes, i


def payload_user(ev: Event) -> dict[str, Any]:
    user: dict[str, Any] = {
        "AAM_UUID": ev.uuid, "DataPartner_UUID": ev.dpuuid,
        "Segments": [{"Segment_ID": ev.segment, "Status": ev.status,
                      "DateTime": aam_date(int(ev.time))}],
    }
    if ev.regions:
        user["AAM_Regions"] = list(ev.regions)
    return user


@pytest.mark.parametrize(("pad", "closes"), [(0, False), (1, True)])
def test_max_bytes_boundary_is_exact(pad: int, closes: bool) -> None:
    """A second user that brings the estimate to exactly max_bytes fits; one byte more does not."""
    dest = destination(max_users=10_000, max_bytes=2000)
    first = event("first", "1", regions="7,9")
    probe = event("second-", "2", dpuuid="dp2")
    room = dest.batch.max_bytes - estimate(dest, [payload_user(first), payload_user(probe)])
    second = event("second-" + "y" * (room + pad), "2", dpuuid="dp2")
    builder = BatchBuilder(dest)
    assert add(builder, first) == []
    closed = add(builder, second)
    if closes:
        assert users_of(check(only(closed), dest)).keys() == {"first"}
        assert len(builder) == 1
    else:
        assert closed == []
        batch = only(builder.close())
        check(batch, dest)
        assert len(batch.body) == dest.batch.max_bytes - 5  # the envelope's documented slack


def test_max_bytes_with_many_segments_per_user() -> None:
    dest = destination(max_bytes=1024)
    builder = BatchBuilder(dest)
    events = [event(f"u{i % 3}", f"seg-{i}", ts=T0 + i) for i in range(120)]
    batches = fill(builder, events)
    assert len(batches) > 5
    seen: Counter[tuple[str, str]] = Counter()
    for batch in batches:
        assert len(batch.body) <= dest.batch.max_bytes
        for user in check(batch, dest)["Users"]:
            for sid in segments_of(user):
                seen[(user["AAM_UUID"], sid)] += 1
    assert seen == Counter({(f"u{i % 3}", f"seg-{i}"): 1 for i in range(120)})


def test_max_bytes_with_non_ascii_and_escaped_input() -> None:
    dest = destination(max_users=10_000, max_bytes=1500)
    builder = BatchBuilder(dest)
    events = [event(f"ü{i}-日本-" + '"\\' * (i % 7), f"s\t{i}") for i in range(200)]
    batches = fill(builder, events)
    assert sum(len(check(b, dest)["Users"]) for b in batches) == 200
    assert all(len(b.body) <= dest.batch.max_bytes for b in batches)


def test_a_user_larger_than_max_bytes_comes_out_alone() -> None:
    dest = destination(max_bytes=1024)
    builder = BatchBuilder(dest)
    big = event("big-" + "x" * 2000, "1")
    assert add(builder, event("small-1")) == []
    first = only(add(builder, big))  # closes what was open
    assert users_of(check(first, dest)).keys() == {"small-1"}
    alone = only(add(builder, event("small-2")))
    assert alone.users == 1
    assert len(alone.body) > dest.batch.max_bytes  # the consumer dead-letters it (too_large)
    assert users_of(check(alone, dest)).keys() == {big.uuid}
    assert alone.events == [(big.id, big.fields)]
    last = only(builder.close())
    assert users_of(check(last, dest)).keys() == {"small-2"}


def test_a_user_larger_than_max_bytes_in_an_empty_builder() -> None:
    dest = destination(max_bytes=1024)
    builder = BatchBuilder(dest)
    big = event("u", "1", dpuuid="p" * 3000)
    assert add(builder, big) == []
    batch = only(builder.close())
    assert batch.users == 1
    assert len(batch.body) > dest.batch.max_bytes


# --------------------------------------------------------------------------- max_wait

def test_deadline_follows_max_wait() -> None:
    clock = FakeClock(100.0)
    dest = destination(max_wait=2.5)
    builder = BatchBuilder(dest, clock=clock)
    assert builder.deadline is None
    assert not builder.due(10**9)
    add(builder, event("u1"))
    assert builder.deadline == 102.5
    clock.now = 101.0
    add(builder, event("u2"))
    assert builder.deadline == 102.5  # set by the first event of the batch
    assert not builder.due(102.4)
    assert builder.due(102.5)
    assert builder.due(500.0)
    clock.now = 103.0
    assert len(only(builder.close()).events) == 2
    assert builder.deadline is None
    assert not builder.due(10**9)
    add(builder, event("u3"))
    assert builder.deadline == 105.5


def test_deadline_restarts_after_a_batch_closes_on_size() -> None:
    clock = FakeClock(0.0)
    dest = destination(max_users=2, max_wait=86400)
    builder = BatchBuilder(dest, clock=clock)
    add(builder, event("u1"))
    clock.now = 50.0
    assert len(add(builder, event("u2"))) == 1
    assert builder.deadline is None
    clock.now = 60.0
    add(builder, event("u3"))
    assert builder.deadline == 86460.0


def test_deadline_of_the_batch_started_by_an_overflowing_event() -> None:
    clock = FakeClock(0.0)
    dest = destination(max_users=10_000, max_bytes=1024, max_wait=5)
    builder = BatchBuilder(dest, clock=clock)
    add(builder, event("u0"))
    closed: list[Batch] = []
    i = 0
    while not closed:
        i += 1
        clock.now = float(i)
        closed = add(builder, event(f"u{i}-" + "x" * 50))
    assert len(builder) == 1
    assert builder.deadline == i + 5


# --------------------------------------------------------------------------- bookkeeping

def test_batch_events_and_source_ids() -> None:
    dest = destination()
    builder = BatchBuilder(dest)
    e1 = event("u1", "10", ts=T0 + 10)
    e2 = event("u1", "10", ts=T0 + 5)  # older: not applied, but still folded
    e3 = event("u2", "10")
    for ev in (e1, e2, e3, e1):  # e1 redelivered
        add(builder, ev)
    batch = only(builder.close())
    assert Counter(entry_id for entry_id, _ in batch.events) == Counter(
        {e1.id: 2, e2.id: 1, e3.id: 1}
    )
    fields = {entry_id: f for entry_id, f in batch.events}
    assert fields == {e1.id: e1.fields, e2.id: e2.fields, e3.id: e3.fields}
    assert sorted(batch.source_ids) == sorted([e1.id, e2.id, e3.id])
    assert len(batch.source_ids) == 3


def test_source_ids_of_the_open_batch() -> None:
    dest = destination(max_users=2)
    builder = BatchBuilder(dest)
    e1, e2, e3 = event("u1"), event("u2"), event("u3")
    assert e1.id not in builder.source_ids
    add(builder, e1)
    assert e1.id in builder.source_ids
    assert e2.id not in builder.source_ids
    assert only(add(builder, e2)).source_ids == [e1.id, e2.id]
    assert e1.id not in builder.source_ids
    assert e2.id not in builder.source_ids
    add(builder, e3)
    assert e3.id in builder.source_ids
    builder.close()
    assert e3.id not in builder.source_ids


def test_batches_never_mix_destinations() -> None:
    raw = [
        {"id": d, "url": f"https://{d}.example/", "user_dpid": f"dpid-{d}", "client_id": f"c{d}"}
        for d in ("a", "b")
    ]
    dests = parse_config({"destinations": raw}, env={}).destinations
    builders = [BatchBuilder(d) for d in dests]
    ev = event("u1")
    for builder in builders:
        add(builder, ev, f"p-{builder.dest.id}")
    for dest, builder in zip(dests, builders, strict=True):
        doc = check(only(builder.close()), dest)
        assert doc["AAM_Destination_Id"] == dest.id
        assert doc["Users"][0]["DataPartner_UUID"] == f"p-{dest.id}"
