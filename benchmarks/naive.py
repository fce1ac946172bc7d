"""The naive baseline's loop, in its own process: one event, one POST, one XACK.

The obvious alternative, at its best: sync redis-py (hiredis), stdlib keep-alive HTTP, a token
fetched once; per event XREADGROUP COUNT 1, POST, XACK. Started by ``benchmarks/run.py
--naive-child`` with ``BENCH_NAIVE_SPEC`` in the environment; it says ``READY`` once it holds
its tokens, then one JSON line with its count, and waits for its stdin to close.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import sys
import time
from urllib.parse import quote_plus

import orjson
import redis

from benchmarks.bench import CLIENT_ID, USER_DPID
from benchmarks.iris_api import aam_date


def naive_child() -> None:
    """The loop; the benchmark reads its CPU time while it runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = json.loads(os.environ["BENCH_NAIVE_SPEC"])
    key, group = spec["key"], spec["group"]
    r = redis.Redis(host="127.0.0.1", port=spec["redis_port"], decode_responses=True)
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
        r.xgroup_create(key, group, id="0", mkstream=True)
    conn = http.client.HTTPConnection("127.0.0.1", spec["partner_port"], timeout=30)
    route = {seg: dest for dest, segs in spec["segments"].items() for seg in segs}
    tokens = {}
    for dest, secret in spec["secrets"].items():
        basic = base64.b64encode(f"{quote_plus('bench-' + dest)}:{quote_plus(secret)}".encode())
        conn.request("POST", f"/oauth2/{dest}/token", body="grant_type=client_credentials",
                     headers={"Authorization": f"Basic {basic.decode()}",
                              "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
                              "Accept-Encoding": "gzip"})
        answer = conn.getresponse()
        tokens[dest] = json.loads(answer.read())["access_token"]
    print("READY", flush=True)
    done = errors = 0
    started = last = time.monotonic()
    deadline = started + spec["seconds"]
    while time.monotonic() < deadline:
        reply = r.xreadgroup(group, "naive", {key: ">"}, count=1, block=1000)
        if not reply:
            break  # drained
        entry_id, fields = reply[0][1][0]
        dest = route[fields["segment"]]
        when = int(entry_id.partition("-")[0]) // 1000
        body = orjson.dumps({
            "ProcessTime": aam_date(int(time.time())), "User_DPID": USER_DPID,
            "Client_ID": CLIENT_ID, "AAM_Destination_Id": dest, "User_count": "1",
            "Users": [{"AAM_UUID": fields["uuid"], "DataPartner_UUID": fields["dpuuid"],
                       "Segments": [{"Segment_ID": fields["segment"],
                                     "Status": fields.get("status", "1"),
                                     "DateTime": aam_date(when)}]}],
        })
        conn.request("POST", f"/segments/{dest}", body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {tokens[dest]}",
            "Idempotency-Key": entry_id})
        answer = conn.getresponse()
        answer.read()
        if 200 <= answer.status < 300:
            r.xack(key, group, entry_id)
            done += 1
        else:
            errors += 1
        last = time.monotonic()
    print(json.dumps({"events": done, "seconds": last - started, "errors": errors}), flush=True)
    sys.stdin.read()  # stay measurable until the benchmark has read our CPU time

