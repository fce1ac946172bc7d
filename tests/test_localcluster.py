"""LocalCluster: a real, private Redis Cluster (3 masters, 1 replica each; never port 6379),
used through redis-py's cluster client, and a failover that keeps a replicated write."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from iris_demo.localcluster import LocalCluster, info
from tests.helpers import process_alive


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as c:
        yield c


def test_refuses_fewer_than_three_masters() -> None:
    with pytest.raises(ValueError, match="masters >= 3"):
        LocalCluster(masters=2)


async def test_cluster_serves_fails_over_and_stops(cluster: LocalCluster) -> None:
    assert len(cluster.ports) == 6 and 6379 not in cluster.ports
    assert len(set(cluster.ports)) == 6
    masters = cluster.masters()
    assert len(masters) == 3
    assert cluster.url == f"redis://127.0.0.1:{masters[0]}/0"
    assert cluster.urls == [f"redis://127.0.0.1:{p}/0" for p in masters]
    for port in cluster.ports:
        assert info(port, "cluster")["cluster_state"] == "ok"
    pids = cluster.pids()
    assert sorted(pids) == sorted(cluster.ports)
    assert all(process_alive(pid) for pid in pids.values())

    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        keys = [f"k{i}" for i in range(30)]  # spread over the slots of all three masters
        assert {cluster.master_of(k) for k in keys} == set(masters)
        for k in keys:
            await rc.set(k, f"v-{k}")
        assert [await rc.get(k) for k in keys] == [f"v-{k}" for k in keys]

        # a transaction on keys sharing the hash tag {3}: one slot, one master
        async with rc.pipeline(transaction=True) as tx:
            tx.set("x:{3}", "before")
            tx.incr("n:{3}")
            tx.get("x:{3}")
            assert await tx.execute() == [True, 1, "before"]

        old = cluster.master_of("x:{3}")
        node = rc.get_node(host="127.0.0.1", port=old)
        assert node is not None
        assert await rc.execute_command("WAIT", 1, 1000, target_nodes=node) == 1
        cluster.kill(old)
        assert not process_alive(pids[old])
        started = time.monotonic()
        new = cluster.wait_failover(old, timeout=15)
        assert new != old and new in cluster.masters() and old not in cluster.pids()
        assert cluster.master_of("x:{3}") == new
        assert time.monotonic() - started < 15
    finally:
        await rc.aclose()

    rc = RedisCluster.from_url(f"redis://127.0.0.1:{new}/0", decode_responses=True)
    try:
        assert await rc.get("x:{3}") == "before"  # replicated before the crash: kept
        assert await rc.get("n:{3}") == "1"
    finally:
        await rc.aclose()

    cluster.stop()
    assert cluster.pids() == {}
    assert [pid for pid in pids.values() if process_alive(pid)] == []
    cluster.stop()  # idempotent
