"""The HTTP surface of a running worker: the whole metric catalogue from start, process
metrics, /healthz from the event loop's heartbeat, /readyz with reasons."""

from __future__ import annotations

import time

import aiohttp

from iris.runtime.health import STUCK_AFTER, Health
from tests.conftest import destination_config, make_config, running

CATALOGUE = {  # DESIGN 1.6: every series of a configured destination exists from start
    "iris_events_consumed_total": None,
    "iris_events_delivered_total": "destination",
    "iris_events_skipped_total": "reason",
    "iris_events_dead_lettered_total": "destination",
    "iris_requests_total": None,  # labelled by code once a request was made
    "iris_request_duration_seconds_bucket": "destination",
    "iris_batch_users_bucket": "destination",
    "iris_retries_total": "destination",
    "iris_token_requests_total": "destination",
    "iris_token_expiry_timestamp_seconds": "destination",
    "iris_inflight_requests": "destination",
    "iris_last_success_timestamp_seconds": "destination",
    "iris_circuit_open": "destination",
    "iris_stream_pending": "stream",
    "iris_stream_lag": "stream",
    "iris_build_info": "version",
    "process_resident_memory_bytes": None,
    "process_cpu_seconds_total": None,
}


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}{path}"
    ) as response:
        return response.status, await response.text()


async def test_catalogue_probes_and_process_metrics(redis_server, stream_key, partners):
    a, b = await partners("423"), await partners("424")
    config = make_config(redis_server.url, stream_key,
                         [destination_config(a), destination_config(b)])
    async with running(config) as worker:
        status, text = await get(worker.http.port, "/metrics")
        assert status == 200
        for name, label in CATALOGUE.items():
            lines = [line for line in text.splitlines() if line.startswith(name)]
            if name == "iris_requests_total":
                assert f"# HELP {name} " in text
                continue
            assert lines, f"{name} missing"
            if label == "destination":
                for dest in ("423", "424"):
                    assert any(f'destination="{dest}"' in line for line in lines), (name, dest)
        assert f'iris_stream_lag{{group="iris",stream="{stream_key}"}}' in text
        status, body = await get(worker.http.port, "/healthz")
        assert status == 200 and '"status": "ok"' in body
        status, body = await get(worker.http.port, "/readyz")
        assert status == 200 and '"ready": true' in body
        worker.request_stop()  # draining: not ready any more, still alive
        status, body = await get(worker.http.port, "/readyz")
        assert status == 503 and "draining" in body


def test_liveness_follows_the_heartbeat():
    health = Health()
    assert health.liveness()[0]
    health._beat = time.monotonic() - STUCK_AFTER - 1  # as if the loop had not turned since
    alive, age = health.liveness()
    assert not alive and age > STUCK_AFTER


def test_a_paused_destination_is_listed_but_the_pod_stays_ready():
    """Issue 15: a partner's outage must not make every replica NotReady."""
    health = Health()
    health.starting = False
    assert health.readiness() == (True, []) and health.paused_destinations() == []
    health.paused("423", "paused (circuit open)", "circuit")
    assert health.readiness() == (True, [])
    assert health.paused_destinations() == ["destination 423 paused (circuit open)"]
    health.paused("423", "waiting for a token (HTTP 503)", "auth")
    assert health.paused_destinations() == ["destination 423 waiting for a token (HTTP 503)",
                                            "destination 423 paused (circuit open)"]
    health.paused("423", None, "circuit")
    health.paused("423", None, "auth")
    assert health.readiness() == (True, []) and health.paused_destinations() == []
