"""The Redis wire records: what is written is what is read back, field for field."""

from __future__ import annotations

import orjson
import pytest

from iris.config.model import parse_config
from iris.core.batching import split_in_halves
from iris.core.logs import register_secret
from iris.core.payload import encode_payload
from iris.core.records import DeadLetter, OutboundBatch, events_of

EVENTS = [("1-0", {"uuid": "u1", "segment": "s1"}), ("2-0", {"uuid": "u2", "segment": "s2"})]


def as_read(fields: dict[str, str | bytes]) -> dict[str, str]:
    """What a client with decoded replies reads back."""
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in fields.items()}


def test_outbound_batch_round_trip() -> None:
    batch = OutboundBatch(b'{"Users":[]}', orjson.dumps(EVENTS), 2, 3, "423-1-0", 1700)
    fields = batch.encode()
    assert fields == {"body": b'{"Users":[]}', "events": orjson.dumps(EVENTS), "users": "2",
                      "segments": "3", "created_ms": "1700", "key": "423-1-0"}
    back = OutboundBatch.decode(as_read(fields), "fallback")
    assert back == batch and back.events() == EVENTS


def test_an_entry_written_without_a_key_or_time_gets_the_fallback_key() -> None:
    fields = {"body": "{}", "events": "[]", "users": "0", "segments": "0"}
    assert OutboundBatch.decode(fields, "423-9-0") == OutboundBatch(b"{}", b"[]", 0, 0, "423-9-0")


@pytest.mark.parametrize("fields", [{"body": "{}"}, {"body": "{}", "events": "[]", "users": "x",
                                                    "segments": "0"}])
def test_a_corrupt_entry_raises(fields: dict[str, str]) -> None:
    with pytest.raises((KeyError, ValueError)):
        OutboundBatch.decode(fields, "k")


def test_events_of_a_corrupt_entry_keep_it_as_it_was() -> None:
    assert events_of("5-0", {"events": "garbage", "body": "x" * 2000}) == [
        ("5-0", {"events": "garbage", "body": "x" * 1000})]
    assert events_of("5-0", {"events": orjson.dumps(EVENTS).decode()}) == EVENTS


def test_dead_letter_round_trip_scrubs_and_cuts_the_error() -> None:
    register_secret("abc123secret")  # a token iris holds: never stored in a dead letter
    dead = DeadLetter({"uuid": "u1", "segment": "s1", "dlq_reason": "old"}, "rejected", "1-0",
                      "423", 400, "HTTP 400: access_token=abc123secret " + "x" * 300)
    fields = dead.encode()
    assert fields["dlq_reason"] == "rejected" and fields["dlq_status"] == "400"
    assert "abc123secret" not in fields["dlq_error"] and len(fields["dlq_error"]) == 200
    assert {k for k in fields if not k.startswith("dlq_")} == {"uuid", "segment"}
    back = DeadLetter.decode(fields)
    assert (back.event, back.reason, back.source_id, back.destination, back.status) == (
        {"uuid": "u1", "segment": "s1"}, "rejected", "1-0", "423", 400)


def test_a_batch_split_in_halves_keeps_each_users_events_and_a_stable_key() -> None:
    dest = parse_config({"destinations": [{
        "id": "423", "url": "https://p.example/x", "user_dpid": "1", "client_id": "2",
        "segments": ["*"], "auth": {"type": "none"}}]}, env={}).destinations[0]
    users = [{"AAM_UUID": f"u{i}", "DataPartner_UUID": f"d{i}",
              "Segments": [{"Segment_ID": "s", "Status": "1", "DateTime": "t"}] * i}
             for i in (1, 2, 3)]
    events = [(f"{i}-0", {"uuid": f"u{i}", "segment": "s"}) for i in (1, 2, 3)]
    body = encode_payload(destination_id="423", user_dpid="1", client_id="2", users=users)
    batch = OutboundBatch(body, orjson.dumps(events), 3, 6, "423-1-0")
    first, second = split_in_halves(batch, dest)
    assert (first.key, first.users, first.segments, first.events()) == ("423-1-0.0", 1, 1,
                                                                        events[:1])
    assert (second.key, second.users, second.segments, second.events()) == ("423-1-0.1", 2, 5,
                                                                            events[1:])
    assert [u["AAM_UUID"] for u in orjson.loads(second.body)["Users"]] == ["u2", "u3"]
    one = OutboundBatch(encode_payload(destination_id="423", user_dpid="1", client_id="2",
                                       users=users[:1]), orjson.dumps(events[:1]), 1, 1, "k")
    assert split_in_halves(one, dest) == []
