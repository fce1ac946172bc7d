"""The command line as a user runs it: real subprocesses, real redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SECRET = "Do-Not-Print-Me-42"
IRIS = [sys.executable, "-m", "iris"]


def iris(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*IRIS, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, **kw)


def write_config(tmp_path: Path, dest_overrides: dict | None = None, **top) -> Path:
    dest = {
        "id": "423", "url": "https://partner.example/aam", "user_dpid": "1", "client_id": "2",
        "auth": {"type": "oauth2_client_credentials", "token_url": "https://partner.example/t",
                 "client_id": "iris", "client_secret": SECRET},
    }
    dest.update(dest_overrides or {})
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({"destinations": [{"id": "0", "url": "https://a.example/x",
                                                      "user_dpid": "1", "client_id": "2"}, dest],
                                    **top}))
    return path


@pytest.mark.parametrize(("overrides", "env", "path_in_message"), [
    ({"url": "http://partner.example/aam"}, {}, "destinations[1].url: http:// is refused"),
    ({"auth": {"type": "oauth2_client_credentials", "token_url": "http://partner.example/t",
               "client_id": "iris", "client_secret": SECRET}}, {},
     "destinations[1].auth.token_url: http:// is refused"),
    ({"auth": {"type": "oauth2_client_credentials", "token_url": "https://p.example/t",
               "client_id": "iris", "client_secret": "${IRIS_TEST_UNSET_SECRET}"}}, {},
     "destinations[1].auth.client_secret: environment variable IRIS_TEST_UNSET_SECRET is not set"),
    ({"colour": "blue"}, {}, "destinations[1].colour: unknown key"),
    ({"batch": {"max_users": -5}}, {}, "destinations[1].batch.max_users: must be > 0"),
    ({"auth": {"type": "basic", "username": "u", "password_file": "/nonexistent/secret"}}, {},
     "destinations[1].auth.password_file: cannot read /nonexistent/secret"),
])
def test_config_errors_name_the_key(tmp_path, overrides, env, path_in_message):
    result = iris("check-config", "-c", str(write_config(tmp_path, overrides)), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert path_in_message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert SECRET not in result.stderr + result.stdout


def test_check_config_masks_secrets(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "-file\n")
    path = write_config(tmp_path, {"auth": {
        "type": "oauth2_client_credentials", "token_url": "https://p.example/t",
        "client_id": "${IRIS_TEST_CLIENT:-fallback-id}", "client_secret_file": str(secret_file)}},
        redis={"url": f"redis://:{SECRET}@127.0.0.1:7777/0"})
    result = iris("check-config", "-c", str(path), env={"IRIS_TEST_CLIENT": "from-env"})
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    resolved = yaml.safe_load(result.stdout)
    auth = resolved["destinations"][1]["auth"]
    assert auth["client_id"] == "from-env" and auth["client_secret"] == "**********"
    assert resolved["redis"]["url"] == "redis://:****@127.0.0.1:7777/0"


def test_example_config_is_valid(tmp_path):
    secret = tmp_path / "partner"
    secret.write_text("x" * 20)
    result = iris("check-config", "-c", "config/iris.example.yaml",
                  env={"PARTNER_CLIENT_ID": "abc", "PARTNER_SECRET_FILE": str(secret)})
    assert result.returncode == 0, result.stderr


def test_help_on_every_command():
    for command in ("run", "check-config", "send", "demo"):
        result = iris(command, "--help")
        assert result.returncode == 0 and "usage: iris " + command in result.stdout


def test_send_single_and_file(tmp_path, redis_server, stream_key):
    import redis as sync_redis

    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": redis_server.url}, "stream": {"key": stream_key},
        "destinations": [{"id": "1", "url": "https://p.example/x", "user_dpid": "1",
                          "client_id": "2"}]}))
    one = iris("send", "-c", str(path), "--uuid", "u1", "--segment", "s1", "--dpuuid", "d1",
               "--status", "0")
    assert one.returncode == 0, one.stderr
    events = tmp_path / "events.jsonl"
    events.write_text('{"uuid": "u2", "segment": "s2", "dpuuids": {"1": "d2"}, "ts": 1469636242}\n'
                      '\n{"uuid": "u3", "segment": "s3", "dpuuid": "d3"}\n')
    many = iris("send", "-c", str(path), "--file", str(events))
    assert many.returncode == 0 and "sent 2 event(s)" in many.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"uuid": "u4", "segment": "s4", "dpuuid": "d"}\n'
                   '{"uuid": "u5", "status": "7"}\n')
    refused = iris("send", "-c", str(path), "--file", str(bad))
    assert refused.returncode == 1 and f"{bad}:2: missing segment" in refused.stderr
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    entries = [fields for _, fields in client.xrange(stream_key)]
    client.close()
    assert entries == [
        {"uuid": "u1", "segment": "s1", "status": "0", "dpuuid": "d1"},
        {"uuid": "u2", "segment": "s2", "dpuuids": '{"1":"d2"}', "ts": "1469636242"},
        {"uuid": "u3", "segment": "s3", "dpuuid": "d3"},
    ]  # nothing of the refused file was sent


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_demo_delivers_over_https_and_stops_on_sigint():
    proc = subprocess.Popen([*IRIS, "demo", "--rate", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            children.update(_children(proc.pid))
            if line.startswith("partner ") and "batch of" in line:
                break
        else:
            pytest.fail("no batch reached the partner within 10 s:\n" + "".join(seen))
        assert any("https://127.0.0.1" in s for s in seen)
        assert any("/metrics" in s for s in seen)
        children.update(_children(proc.pid))
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "stopped cleanly" in rest and "Traceback" not in rest
    output = "".join(seen) + rest
    assert "Bearer " not in output and "Basic " not in output  # no credential printed
    assert children, "the demo should have started redis-server"
    for pid in children:  # redis-server and anything else it started are gone
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()
