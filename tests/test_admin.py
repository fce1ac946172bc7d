"""`iris status`, `iris dlq list` and a busy metrics port, as an operator runs them."""

from __future__ import annotations

import socket

import orjson
import yaml

from tests.test_cli import iris


def _config(tmp_path, redis_url: str, stream_key: str, listen: str = "127.0.0.1:0"):
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": redis_url}, "stream": {"key": stream_key}, "http": {"listen": listen},
        "destinations": [{"id": "423", "url": "https://p.example/x", "user_dpid": "1",
                          "client_id": "2"}]}))
    return path


async def test_status_and_dlq_list(tmp_path, redis_server, redis, stream_key):
    await redis.xgroup_create(stream_key, "iris", id="0", mkstream=True)
    for i in range(3):
        await redis.xadd(stream_key, {"uuid": f"u{i}", "segment": "s"})
    await redis.xreadgroup("iris", "ghost", {stream_key: ">"}, count=2)  # 2 pending, 1 lag
    dlq = f"{stream_key}:dlq"
    for dest, reason in (("423", "rejected"), ("423", "rejected"), ("", "invalid_event")):
        await redis.xadd(dlq, {"uuid": "x", "segment": "s", "dlq_reason": reason,
                               "dlq_destination": dest, "dlq_error": "HTTP 400"})
    path = _config(tmp_path, redis_server.url, stream_key)

    status = iris("status", "-c", str(path), "--json")
    assert status.returncode == 0, status.stderr
    report = orjson.loads(status.stdout)
    inbound = report["streams"][0]
    assert inbound["stream"] == stream_key and inbound["length"] == 3
    [group] = inbound["groups"]
    assert (group["group"], group["pending"], group["lag"]) == ("iris", 2, 1)
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [("ghost", 2)]
    assert report["dead_letters"]["total"] == 3
    assert {(r["destination"], r["reason"], r["count"]) for r in report["dead_letters"]["by"]} == {
        ("423", "rejected", 2), ("", "invalid_event", 1)}
    text = iris("status", "-c", str(path)).stdout
    assert "consumer ghost: pending 2" in text and "423 rejected: 2" in text

    listed = iris("dlq", "list", "-c", str(path), "--destination", "423", "--limit", "1")
    assert listed.returncode == 0
    [line] = listed.stdout.splitlines()
    assert orjson.loads(line)["dlq_reason"] == "rejected"
    by_reason = iris("dlq", "list", "-c", str(path), "--reason", "invalid_event")
    assert [orjson.loads(x)["dlq_destination"] for x in by_reason.stdout.splitlines()] == [""]


def test_busy_metrics_port_is_a_clear_error(tmp_path, redis_server, stream_key):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = _config(tmp_path, redis_server.url, stream_key, f"127.0.0.1:{port}")
        result = iris("run", "-c", str(path))
    assert result.returncode == 1
    assert "http.listen: cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
