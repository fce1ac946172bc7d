"""Partitioned streams on a real Redis Cluster: 3 masters with one replica each, on loopback.

Each test starts its own cluster (``iris_demo.localcluster``) and runs ``iris`` as deployed
(child processes, ``iris send``, ``iris status``, ``iris dlq``) against it with
``stream.partitions: 8`` and ``redis.cluster: true``, and checks exact outcomes: every event
delivered, what is left pending, what reached the dead-letter streams, how many tokens were
fetched. The failover test SIGKILLs a master mid-run: a killed master must cost neither events
nor a restart of the client (redis-py#4110: the async cluster client's pool leaked on write
errors during a failover until every call failed; Grokzen/redis-py-cluster#385: "TTL exhausted"
after a master stopped; redis/redis#5433: stream entries acknowledged just before a failover
came back unacknowledged).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from redis.asyncio.cluster import RedisCluster

from iris.core.partitions import inbound_keys, partition_of
from iris_demo.localcluster import LocalCluster, call, info
from iris_demo.tls import TLSMaterial
from tests.conftest import wait_for
from tests.faults.harness import WorkerProcess, delivered, dest_config, start_all, worker_config
from tests.helpers import GROUP, closed_port, run_cli

P = 8
EVENTS = 20_000
Pairs = set[tuple[str, str]]


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as started:
        yield started


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    yield rc
    await rc.aclose()


def cluster_config(cluster: LocalCluster, stream_key: str, dests: list[dict[str, Any]],
                   **stream: Any) -> dict[str, Any]:
    data = worker_config(cluster.url, stream_key, dests,
                         **{"partitions": P, "claim_idle_ms": 3000, **stream})
    data["redis"]["cluster"] = True
    return data


def fast(partner: Any, **overrides: Any) -> dict[str, Any]:
    """A destination that takes a whole test's events quickly."""
    return dest_config(partner, batch={"max_users": 100, "max_wait": 0.1},
                       limits={"requests_per_second": 5000, "max_in_flight": 8}, **overrides)


def write_events(path: Path, tag: str, count: int) -> Pairs:
    pairs = {(f"{tag}-{i:05d}", "s1") for i in range(count)}
    path.write_bytes(b"\n".join(orjson.dumps({"uuid": u, "segment": s, "dpuuid": f"dp-{u}"})
                                for u, s in sorted(pairs)))
    return pairs


def streams_of(stream_key: str, dest_ids: list[str]) -> list[str]:
    """Every partition's inbound stream and outbound streams."""
    return [key for inbound in inbound_keys(stream_key, P, True)
            for key in (inbound, *(f"{inbound}:out:{d}" for d in dest_ids))]


async def pending_everywhere(client: RedisCluster, stream_key: str, dest_ids: list[str]) -> int:
    total = 0
    for key in streams_of(stream_key, dest_ids):
        if await client.exists(key):
            total += int((await client.xpending(key, GROUP))["pending"])
    return total


async def nothing_pending(client: RedisCluster, stream_key: str, dest_ids: list[str]) -> None:
    async def none() -> bool:
        return await pending_everywhere(client, stream_key, dest_ids) == 0

    async def how_many() -> str:
        return f"pending: {await pending_everywhere(client, stream_key, dest_ids)}"

    await wait_for(none, 30, "nothing pending", how_many)


async def cli(*args: str) -> str:
    code, out, err = await run_cli(*args)
    assert code == 0, err
    return out


def keys_per_user(partner: Any) -> dict[str, set[str]]:
    """Every Idempotency-Key under which each user reached the partner."""
    keys: dict[str, set[str]] = defaultdict(set)
    for batch in partner.server.received:
        for user in batch.payload["Users"]:
            keys[user["AAM_UUID"]].add(batch.idempotency_key or "")
    return keys


@asynccontextmanager
async def started_workers(data: dict[str, Any], tmp_path: Path,
                          count: int) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` ``iris run`` processes on one config, ready; killed on exit."""
    workers = [WorkerProcess(data, tmp_path, f"w{i}") for i in range(count)]
    try:
        await start_all(*workers)
        yield workers
    finally:
        for worker in workers:
            worker.kill()


def alive(*workers: WorkerProcess) -> None:
    for worker in workers:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]


async def test_partitions_on_a_cluster_deliver_everything_through_a_master_failover(
    cluster: LocalCluster, client: RedisCluster, stream_key: str, partners: Any,
    tls: TLSMaterial, tmp_path: Path,
) -> None:
    """20,000 events from ``iris send`` over 8 partitions, two workers, the partner over HTTPS;
    the master holding partition 0 is SIGKILLed once a quarter is delivered."""
    partner = await partners("423", https=True)
    data = cluster_config(cluster, stream_key, [fast(partner, ca_file=str(tls.ca_file))])
    pairs = write_events(tmp_path / "events.jsonl", "u", EVENTS)
    async with started_workers(data, tmp_path, 2) as workers:
        out = await cli("send", "-c", str(workers[0].config_path), "--file",
                        str(tmp_path / "events.jsonl"))
        assert f"sent {EVENTS} event(s) to {stream_key} ({P} partitions)" in out
        await wait_for(lambda: len(delivered(partner)) >= EVENTS // 4, 60, "a quarter delivered")
        victim = cluster.master_of(inbound_keys(stream_key, P, True)[0])
        cluster.kill(victim)
        assert cluster.wait_failover(victim) != victim
        await wait_for(lambda: delivered(partner) >= pairs, 90, "every event delivered",
                       lambda: f"{len(pairs - delivered(partner))} missing")
        await nothing_pending(client, stream_key, ["423"])
        twice = {u: k for u, k in keys_per_user(partner).items() if len(k) > 1}
        assert not twice, f"{len(twice)} users under several keys: {list(twice.items())[:2]}"
        assert len(delivered(partner)) == EVENTS
        for worker in workers:  # the pools recovered (redis-py#4110, #3135)
            assert "MaxConnectionsError" not in worker.log()
            await wait_for(worker.ready, 15, f"{worker.config_path.stem} ready", worker.log)
        for key in inbound_keys(stream_key, P, True):
            assert await client.xlen(f"{key}:dlq") == 0
        alive(*workers)
        status = await cli("status", "-c", str(workers[0].config_path))
        for key in streams_of(stream_key, ["423"]):  # every partition, each with its group
            assert f"{key}: length" in status, status
        assert status.count(f"group {GROUP}: pending 0, lag 0") == 2 * P, status
        assert f"{stream_key}:{{0..{P - 1}}}:dlq: 0 dead letters" in status


async def test_three_workers_on_a_cluster_share_one_token(
    cluster: LocalCluster, client: RedisCluster, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """One OAuth 2 destination, three workers over 8 partitions: one token request for all;
    the token store's keys of the destination share one hash tag."""
    partner = await partners("423")
    data = cluster_config(cluster, stream_key, [fast(partner)])
    pairs = write_events(tmp_path / "events.jsonl", "t", 3000)
    async with started_workers(data, tmp_path, 3) as workers:
        await cli("send", "-c", str(workers[0].config_path), "--file",
                  str(tmp_path / "events.jsonl"))
        await wait_for(lambda: delivered(partner) >= pairs, 60, "every event delivered")
        await nothing_pending(client, stream_key, ["423"])
        assert partner.tokens is not None and len(partner.tokens.requests) == 1
        senders = {b.token for b in partner.server.received}
        assert len(senders) == 1  # every worker used the one token
        prefix = f"{stream_key}:auth:{{423}}"
        stored = [k async for k in client.scan_iter(match=f"{prefix}*", target_nodes="all")]
        assert any(k.endswith(":token") for k in stored), stored
        alive(*workers)


async def test_dead_letters_of_every_partition_are_listed_and_replayed(
    cluster: LocalCluster, client: RedisCluster, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """The partner rejects everything (400): the events are dead-lettered in their own
    partitions; ``iris dlq list`` shows them all, ``iris dlq replay`` puts each back into its
    partition, and once the partner accepts, each is delivered once."""
    partner = await partners("423", client_secret=None)
    rejecting = True

    async def reject(request: web.Request, body: bytes) -> web.Response | None:
        return web.json_response({"error": "bad"}, status=400) if rejecting else None

    partner.server.responder = reject
    data = cluster_config(cluster, stream_key, [fast(partner)])
    pairs = write_events(tmp_path / "events.jsonl", "d", 400)
    async with started_workers(data, tmp_path, 1) as [worker]:
        config = str(worker.config_path)
        await cli("send", "-c", config, "--file", str(tmp_path / "events.jsonl"))
        dlqs = [f"{key}:dlq" for key in inbound_keys(stream_key, P, True)]

        async def all_dead() -> bool:
            return sum([await client.xlen(k) for k in dlqs]) == len(pairs)

        await wait_for(all_dead, 30, "every event dead-lettered")
        for uuid, _ in list(pairs)[:20]:  # each in its own partition
            partition = partition_of(uuid, P)
            found = await client.xrange(dlqs[partition])
            assert any(fields.get("uuid") == uuid for _, fields in found), uuid
        listed = (await cli("dlq", "list", "-c", config)).splitlines()
        assert len(listed) == len(pairs)
        assert {orjson.loads(line)["stream"] for line in listed} == set(dlqs)
        rejecting = False
        out = await cli("dlq", "replay", "-c", config)
        assert f"replayed {len(pairs)} event(s) into {stream_key} ({P} partitions)" in out
        await wait_for(lambda: delivered(partner) >= pairs, 30, "replayed events delivered")
        await nothing_pending(client, stream_key, ["423"])
        assert sum([await client.xlen(k) for k in dlqs]) == 0
        assert len(partner.server.segment_changes()) == len(pairs)  # each delivered once
        alive(worker)
    # no XREADGROUP cost a COMMAND GETKEYS round trip first (client.StreamsCluster)
    getkeys = {port: info(port, "commandstats").get("cmdstat_command|getkeys")
               for port in cluster.masters()}
    assert set(getkeys.values()) == {None}, getkeys


async def test_a_planned_failover_cuts_blocked_reads_short_and_loses_nothing(
    cluster: LocalCluster, client: RedisCluster, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """A master demoted while the worker's blocking reads wait on it (redis/redis#6371: they
    are answered UNBLOCKED and the connection closed): the reads resume on the new master,
    the worker stays ready, and what is sent afterwards is delivered once. Reads block 2 s
    (the tests' 0.2 s could end before the failover), and the Lua scripts the new master does
    not know yet (redis/redis#14314) run without a Redis error escaping."""
    partner = await partners("423", client_secret=None)
    data = cluster_config(cluster, stream_key, [fast(partner)], block_ms=2000,
                          claim_idle_ms=7000)
    first = write_events(tmp_path / "first.jsonl", "a", 500)
    second = write_events(tmp_path / "second.jsonl", "b", 500)
    async with started_workers(data, tmp_path, 1) as [worker]:
        config = str(worker.config_path)
        await cli("send", "-c", config, "--file", str(tmp_path / "first.jsonl"))
        await wait_for(lambda: delivered(partner) >= first, 30, "first wave delivered")
        await nothing_pending(client, stream_key, ["423"])  # idle: every read is blocked now
        demoted = cluster.master_of(inbound_keys(stream_key, P, True)[0])
        promoted = cluster.failover(demoted)
        assert promoted != demoted and demoted not in cluster.masters()
        await cli("send", "-c", config, "--file", str(tmp_path / "second.jsonl"))
        await wait_for(lambda: delivered(partner) >= first | second, 30, "second wave delivered")
        await nothing_pending(client, stream_key, ["423"])
        assert len(partner.server.segment_changes()) == len(first | second)  # each once
        await wait_for(worker.ready, 15, "worker ready again", worker.log)
        # the blocked reads were cut short (UNBLOCKED, counted as READONLY; or the connection
        # closed under them) and retried: nothing else went wrong
        cut = {reply: await worker.metric("iris_redis_errors_total", reply=reply)
               for reply in ("READONLY", "connection", "other")}
        assert cut["READONLY"] + cut["connection"] >= 1 and cut["other"] == 0, cut
        alive(worker)


@pytest.mark.parametrize("cluster_flag", [True, False])
async def test_a_cluster_setting_that_does_not_match_redis_is_named(
    cluster_flag: bool, redis_server: Any, stream_key: str, partners: Any, tmp_path: Path,
) -> None:
    """``redis.cluster: true`` against a plain Redis, or false against a cluster node: the
    worker stays unready with a reason naming the setting to change, and never crashes."""
    partner = await partners("423", client_secret=None)
    if cluster_flag:
        url, context = redis_server.url, None
    else:
        context = LocalCluster(masters=3, replicas=0).start()
        url = context.url
    try:
        data = worker_config(url, stream_key, [fast(partner)], partitions=P)
        data["redis"]["cluster"] = cluster_flag
        with WorkerProcess(data, tmp_path, "w").start() as worker:
            async def named() -> bool:
                status, body = await worker.get("/readyz")
                wanted = ("redis.cluster should be false" if cluster_flag
                          else "redis.cluster must be true for a Redis Cluster")
                return status == 503 and wanted in body

            await wait_for(named, 20, "readyz names redis.cluster", worker.log)
            alive(worker)
            assert "Traceback" not in worker.log()
    finally:
        if context is not None:
            context.stop()


async def test_a_partition_moved_to_another_master_mid_run_loses_nothing(
    cluster: LocalCluster, client: RedisCluster, stream_key: str, partners: Any,
    tmp_path: Path,
) -> None:
    """``redis-cli --cluster reshard`` (what README advises to even the partitions out) moves
    partition 0's slot while events flow: its keys move one by one, and meanwhile commands
    get ASK, and transactions over keys on both sides TRYAGAIN. Nothing is lost, nothing
    crashes, and the worker delivers on from the new master."""
    partner = await partners("423", client_secret=None)
    data = cluster_config(cluster, stream_key, [fast(partner)])
    first = write_events(tmp_path / "first.jsonl", "m", 3000)
    second = write_events(tmp_path / "second.jsonl", "n", 1000)
    async with started_workers(data, tmp_path, 1) as [worker]:
        config = str(worker.config_path)
        partition0 = inbound_keys(stream_key, P, True)[0]
        slot = int(await client.cluster_keyslot(partition0))
        target = next(p for p in cluster.masters() if p != cluster.master_of(partition0))
        await cli("send", "-c", config, "--file", str(tmp_path / "first.jsonl"))
        source, keys = cluster.begin_move(slot, target)
        for key in keys[: len(keys) // 2]:  # half moved: the slot is split between two nodes
            cluster.migrate(source, target, key)
        await asyncio.sleep(1.0)  # the fault itself: events flow while the slot is split
        cluster.end_move(source, slot, target)
        assert cluster.master_of(partition0) == target
        await wait_for(lambda: delivered(partner) >= first, 60, "first wave delivered",
                       lambda: f"{len(first - delivered(partner))} missing")
        await cli("send", "-c", config, "--file", str(tmp_path / "second.jsonl"))
        await wait_for(lambda: delivered(partner) >= first | second, 30, "all delivered")
        await nothing_pending(client, stream_key, ["423"])
        twice = {u: k for u, k in keys_per_user(partner).items() if len(k) > 1}
        assert not twice, f"{len(twice)} users under several keys: {list(twice.items())[:2]}"
        assert "Traceback" not in worker.log(), worker.log()[-3000:]
        await wait_for(worker.ready, 15, "worker ready again", worker.log)
        alive(worker)


async def test_commands_name_an_unreachable_cluster_in_one_line(tmp_path: Path) -> None:
    """No seed answers (the cluster is not up yet, or the URL is wrong): each command exits 1
    with one line naming it, never a traceback, and never the password in the URL."""
    dest = [{"id": "423", "url": "https://p.example/x", "user_dpid": "1", "client_id": "2"}]
    with closed_port() as port:
        data = worker_config(f"redis://:pw-s3cret@127.0.0.1:{port}", "k", dest, partitions=P)
        data["redis"]["cluster"] = True
        path = tmp_path / "iris.yaml"
        path.write_text(yaml.safe_dump(data))
        events = tmp_path / "e.jsonl"
        write_events(events, "x", 3)
        for args in (("status",), ("dlq", "list"), ("send", "--file", str(events)),
                     ("repartition",)):
            code, out, err = await run_cli(*args, "-c", str(path))
            assert code == 1, (args, err)
            assert "Traceback" not in err and "pw-s3cret" not in err + out, err
            assert "redis unreachable" in err, err


async def test_the_documented_acl_works_on_a_cluster_and_a_missing_grant_is_named(
    cluster: LocalCluster, stream_key: str, tmp_path: Path,
) -> None:
    """README's Redis user, on every node: without ``+cluster|slots`` the cluster client
    cannot read the slot map, and the error names that grant (not only "no cluster node");
    with it, the commands work."""
    grants = ["+@stream", "+@scripting", "+@transaction", "+@string", "+@hash", "+@keyspace",
              "+@connection", "+time"]
    for port in cluster.ports:
        call(port, "ACL", "SETUSER", "iris", "on", ">pw-acl", "~*", "-@all", *grants)
    dest = [{"id": "423", "url": "https://p.example/x", "user_dpid": "1", "client_id": "2"}]
    url = cluster.url.replace("redis://", "redis://iris:pw-acl@")
    data = worker_config(url, stream_key, dest, partitions=P)
    data["redis"]["cluster"] = True
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = await run_cli("status", "-c", str(path))
    assert code == 1 and "lacks +cluster|slots" in err and "Traceback" not in err, err
    for port in cluster.ports:
        call(port, "ACL", "SETUSER", "iris", "+cluster|slots")
    code, out, err = await run_cli("status", "-c", str(path))
    assert code == 0, err
    assert f"{stream_key}:{{7}}: length 0" in out
