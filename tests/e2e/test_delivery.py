"""Acceptance 1 and 6: many events over several destinations, and malformed events."""

from __future__ import annotations

import random
from collections import Counter

from iris.core.payload import aam_date
from tests.conftest import (
    destination_config,
    make_config,
    metric,
    pending_total,
    running,
    wait_for,
)
from tests.helpers import equals

SEGMENTS = ["s1", "s2", "s3", "s4", "s5"]


async def test_5000_events_three_destinations(redis_server, redis, stream_key, partners, tls):
    a = await partners("423")
    b = await partners("424", https=True)  # self-signed CA that the destination trusts
    c = await partners("425", user_dpid="999")
    config = make_config(redis_server.url, stream_key, [
        destination_config(a, segments=["s1", "s2", "s3"]),
        destination_config(b, tls=tls, segments=["s3", "s4"], batch={"max_users": 25}),
        destination_config(c, segments=["*"], batch={"max_users": 100, "max_wait": 0.2}),
    ])
    rng = random.Random(7)
    pairs = [(f"user{u:04d}", s) for u in range(1000) for s in SEGMENTS]
    rng.shuffle(pairs)
    events, expected = [], Counter()
    for i, (uuid, segment) in enumerate(pairs):
        status = rng.choice("01")
        fields = {"uuid": uuid, "segment": segment, "status": status}
        if i % 2:  # half carry ts, half take the entry id's time
            fields["ts"] = str(1469636242 + i)
        if i % 3:
            fields["dpuuid"] = f"dp-{uuid}"
        else:  # fan-out form: one partner id per User_DPID
            fields["dpuuids"] = f'{{"12345": "dp-{uuid}", "999": "dp-{uuid}"}}'
        events.append(fields)
        for dest, segs in (("423", SEGMENTS[:3]), ("424", ["s3", "s4"]), ("425", SEGMENTS)):
            if segment in segs:
                expected[(dest, uuid, f"dp-{uuid}", segment, status)] += 1
    async with redis.pipeline(transaction=False) as pipe:
        for fields in events:
            pipe.xadd(stream_key, fields)
        ids = await pipe.execute()
    total = sum(expected.values())

    async with running(config) as worker:
        await wait_for(lambda: sum(len(p.server.segment_changes()) for p in (a, b, c)) >= total,
                       60, "every segment change delivered")
        received = Counter(
            (p.dest_id, *change) for p in (a, b, c) for change in p.server.segment_changes()
        )
        assert received == expected  # each (user, segment, destination) once, nothing else
        for p in (a, b, c):
            assert p.server.problems == []  # every field of every payload validated
            assert p.tokens.ok_requests == 1 and len(p.tokens.requests) == 1
            assert p.server.expired_token_requests == 0
            users = p.server.users_received()
            assert all(len({u["AAM_UUID"] for u in bt.payload["Users"]}) == len(bt.payload["Users"])
                       for bt in p.server.received)
            assert sum(int(bt.payload["User_count"]) for bt in p.server.received) == len(users)
        assert max(len(bt.payload["Users"]) for bt in a.server.received) <= 10
        assert max(len(bt.payload["Users"]) for bt in b.server.received) <= 25
        # DateTime: from ts when given, else from the entry id's time
        by_key = {(f["uuid"], f["segment"]): (f, i) for f, i in zip(events, ids, strict=True)}
        for bt in c.server.received:
            for user in bt.payload["Users"]:
                for seg in user["Segments"]:
                    fields, entry_id = by_key[(user["AAM_UUID"], seg["Segment_ID"])]
                    id_time = int(entry_id.split("-")[0]) // 1000
                    when = int(fields["ts"]) if "ts" in fields else id_time
                    assert seg["DateTime"] == aam_date(when)
        await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "no pending entries")
        assert metric(worker, "iris_events_consumed_total") == len(events)
        for p in (a, b, c):
            delivered = metric(worker, "iris_events_delivered_total", destination=p.dest_id)
            assert delivered == len(p.server.segment_changes())


async def test_malformed_events_are_dead_lettered(redis_server, redis, stream_key, partners):
    a = await partners("423")
    config = make_config(redis_server.url, stream_key, [destination_config(a)])
    bad = [
        {"segment": "s1", "dpuuid": "d1"},  # no uuid
        {"uuid": "u2", "segment": "s1", "status": "7", "dpuuid": "d2"},
        {"uuid": "u3", "segment": "s1", "ts": "yesterday", "dpuuid": "d3"},
        {"uuid": "u4", "dpuuid": "d4"},  # no segment
    ]
    sent = []
    for i, fields in enumerate(bad):
        sent.append((await redis.xadd(stream_key, {"uuid": f"good{i}", "segment": "s9",
                                                    "dpuuid": f"g{i}"}), None))
        sent.append((await redis.xadd(stream_key, fields), fields))
    async with running(config) as worker:
        await wait_for(lambda: len(a.server.segment_changes()) == 4, 20, "good events delivered")
        await wait_for(lambda: equals(pending_total(redis, config), 0), 10, "no pending entries")
        dlq = await redis.xrange(f"{stream_key}:dlq")
        assert len(dlq) == 4
        by_source = {fields["dlq_source_id"]: fields for _, fields in dlq}
        for entry_id, original in sent:
            if original is None:
                assert entry_id not in by_source
                continue
            entry = by_source[entry_id]
            assert entry["dlq_reason"] == "invalid_event"
            assert {k: v for k, v in entry.items() if not k.startswith("dlq_")} == original
            assert entry["dlq_error"]
        assert sorted(c[0] for c in a.server.segment_changes()) == [f"good{i}" for i in range(4)]
        assert metric(worker, "iris_events_dead_lettered_total", destination="",
                      reason="invalid_event") == 4
