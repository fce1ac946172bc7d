"""The command line as a user runs it: real subprocesses, real redis-server."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iris.config.interpolation import GRAMMAR
from iris.config.redaction import fingerprint
from tests.helpers import ROOT

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
    assert auth["client_id"] == "from-env"
    assert auth["client_secret"] == fingerprint(SECRET + "-file") == (
        f"{fingerprint(SECRET + '-file').partition(',')[0]}, 23 chars")
    assert resolved["redis"]["url"] == "redis://:****@127.0.0.1:7777/0"


def test_example_config_is_valid_as_shipped():
    """The first command a newcomer runs: no environment, no secret of theirs yet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARTNER_", "REDIS_"))}
    result = subprocess.run([*IRIS, "check-config", "-c", "config/iris.example.yaml"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr


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


def _hot_path() -> set[str]:
    """setup.py's HOT_PATH, as dotted module names (read, not run: it would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", "") == "HOT_PATH" for t in node.targets))
    return {path.removesuffix(".py").replace("/", ".") for path in ast.literal_eval(listed)}


def test_version_says_whether_this_iris_runs_compiled():
    """A mypyc build puts extension modules beside the sources (psf/black#3002: show
    "compiled: yes/no", so that neither build surprises anyone). From source: none. In
    ``make test-compiled``'s tree: exactly setup.py's HOT_PATH, all of them imported."""
    import iris as package

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    base = Path(package.__file__).parent.parent
    compiled = {".".join(p.relative_to(base).with_suffix("").with_suffix("").parts)
                for p in (base / "iris").rglob("*") if p.name.endswith(suffixes)}
    assert not compiled or compiled == _hot_path()
    result = iris("--version")
    assert result.returncode == 0
    build = f"mypyc: {len(compiled)} modules compiled" if compiled else "pure Python"
    assert result.stdout.strip() == f"iris {package.__version__} ({build})"
    for name in compiled:  # each is imported compiled, not from its .py
        assert importlib.import_module(name).__file__.endswith(suffixes), name


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
            proc.communicate()  # reaps it and closes its pipes
    assert proc.returncode == 0, rest
    assert "stopped cleanly" in rest and "Traceback" not in rest
    output = "".join(seen) + rest
    assert "Bearer " not in output and "Basic " not in output  # no credential printed
    assert children, "the demo should have started redis-server"
    for pid in children:  # redis-server and anything else it started are gone
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()


# --------------------------------------------------------------------------- config mistakes

def _p384_key() -> str:
    key = ec.generate_private_key(ec.SECP384R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


JWT_AUTH = {"type": "jwt_bearer", "token_url": "https://partner.example/t", "issuer": "iris",
            "audience": "https://partner.example/t"}


@pytest.mark.parametrize(("case", "line"), [
    ("ca_file", "destinations[1].ca_file: {tmp}/ca.pem holds no PEM CA certificate "
                "(NO_CERTIFICATE_OR_CRL_FOUND)"),
    ("curve", "destinations[1].auth.private_key: ES256 needs an EC key on curve P-256, "
              "not secp384r1"),
    ("claims", "destinations[1].auth.claims.iat: iris sets iat itself (from leeway); remove it "
               "from claims"),
    ("empty_secret", "destinations[1].auth.client_secret_file: {tmp}/secret is empty"),
    ("required_var", "destinations[1].auth.client_secret: mount the partner secret "
                     "(environment variable IRIS_TEST_UNSET_SECRET is not set)"),
    ("unknown_expansion", "destinations[1].auth.client_secret: cannot read the ${{...}} at "
                          "character 3: write " + GRAMMAR.replace("{", "{{").replace("}", "}}")),
    ("float_segment", "destinations[1].segments[0]: must be a string: quote it (YAML read it as "
                      "the number 14356.0)"),
    ("redis_url", "redis.url: must start with redis://, rediss://, unix:// "
                  "(got '127.0.0.1:6379')"),
])
def test_check_config_catches_what_run_would_crash_on(tmp_path, case, line):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    (tmp_path / "secret").write_bytes(b"\n")
    overrides, top = {
        "ca_file": ({"ca_file": str(tmp_path / "ca.pem")}, {}),
        "curve": ({"auth": {**JWT_AUTH, "algorithm": "ES256", "private_key": _p384_key()}}, {}),
        "claims": ({"auth": {**JWT_AUTH, "private_key": _p384_key(), "algorithm": "ES384",
                             "claims": {"iat": 0}}}, {}),
        "empty_secret": ({"auth": {"type": "oauth2_client_credentials",
                                   "token_url": "https://partner.example/t", "client_id": "iris",
                                   "client_secret_file": str(tmp_path / "secret")}}, {}),
        "required_var": ({"auth": {"type": "oauth2_client_credentials",
                                   "token_url": "https://partner.example/t", "client_id": "iris",
                                   "client_secret": "${IRIS_TEST_UNSET_SECRET:?mount the "
                                                    "partner secret}"}}, {}),
        "unknown_expansion": ({"auth": {"type": "oauth2_client_credentials",
                                        "token_url": "https://partner.example/t",
                                        "client_id": "iris",
                                        "client_secret": SECRET[:2] + "${X:+y}"}}, {}),
        "float_segment": ({"segments": [14356.0]}, {}),
        "redis_url": ({}, {"redis": {"url": "127.0.0.1:6379"}}),
    }[case]
    for command in (["check-config"], ["run"], ["auth", "test"]):
        result = iris(*command, "-c", str(write_config(tmp_path, overrides, **top)))
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            "iris: config error: " + line.format(tmp=tmp_path)], command
        assert result.stdout == ""
        assert SECRET not in result.stderr


def test_every_problem_of_a_config_gets_its_line(tmp_path):
    """The checks past the schema (files, URLs, rules across keys) report every problem, not
    the first: an operator fixing a config of many destinations learns them all in one run."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    dest = {"user_dpid": "1", "client_id": "2", "auth": {"type": "none"}}
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({
        "stream": {"claim_idle_ms": 20000},
        "destinations": [
            {**dest, "id": "a", "url": "https://a.example/x", "ca_file": str(tmp_path / "ca.pem")},
            {**dest, "id": "b", "url": "https://b.example/x", "ca_file": str(tmp_path / "none.pem"),
             "timeout": 45},
            {**dest, "id": "a", "url": "http://c.example/x",
             "retry": {"base_delay": 5, "max_delay": 1}},
        ],
    }))
    expected = [
        f"destinations[0].ca_file: {tmp_path}/ca.pem holds no PEM CA certificate "
        "(NO_CERTIFICATE_OR_CRL_FOUND)",
        f"destinations[1].ca_file: no such file: {tmp_path}/none.pem",
        "destinations[2].id: duplicate destination id 'a' (first in destinations[0])",
        "destinations[2].url: http:// is refused: use https://, or set allow_http: true for "
        "local testing",
        "destinations[2].retry.max_delay: must be >= retry.base_delay",
        "stream.claim_idle_ms: must exceed the longest request (destinations[1].timeout = 45 s), "
        "or entries still in flight would be taken over by another consumer",
    ]
    for command in (["check-config"], ["run"]):
        result = iris(*command, "-c", str(path))
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [f"iris: config error: {line}"
                                               for line in expected], command
        assert result.stdout == ""


def test_a_url_that_does_not_parse_is_a_config_error_beside_the_others(tmp_path):
    """Found when the checks began to run past a first problem: a proxy URL with a bracket left
    open crashed the check behind it (urlsplit's ValueError), with a traceback and exit 1."""
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": f"redis://:{SECRET}@[::1:6379/0"},
        "destinations": [{"id": "a", "url": "http://a.example/x", "user_dpid": "1",
                          "client_id": "2", "auth": {"type": "none"},
                          "proxy": f"http://u:{SECRET}@[bad:3128"}],
    }))
    for command in (["check-config"], ["run"]):
        result = iris(*command, "-c", str(path))
        assert (result.returncode, result.stdout) == (2, ""), (command, result.stderr)
        assert result.stderr.splitlines() == [
            "iris: config error: destinations[0].url: http:// is refused: use https://, or set "
            "allow_http: true for local testing",
            "iris: config error: destinations[0].proxy: is not a valid URL (check its brackets, "
            "its port and its characters)",
            "iris: config error: redis.url: is not a valid URL (check its brackets, its port, its "
            "database and its characters)",
        ], command
        assert SECRET not in result.stderr


@pytest.mark.parametrize(("query", "line"), [
    ("?socket_timeout=abc", "?socket_timeout= must be a number"),
    ("?db=0&health_check_interval=1.5", "?health_check_interval= must be a whole number"),
    ("?protocol=three", "?protocol= must be a whole number"),
    ("?max_connections=2", "?max_connections= is iris's to set: use redis.max_connections"),
    ("?decode_responses=false", "?decode_responses= is iris's to set: leave it out (iris reads "
                                "text)"),
    ("?protocol=9", "?protocol= must be 2 or 3"),  # run retried for ever: redis-py refused it
    ("?ssl_cert_reqs=none", "?ssl_cert_reqs= is not an option redis-py takes for a redis:// "
                            "URL (TLS options need rediss://)"),
    ("?socket_timout=30", "?socket_timout= is not an option redis-py takes for a redis:// URL"),
    (",redis://127.0.0.1:2?socket_timeout=0.5", "a seed URL after the first has other options "
                                                "than the first, and redis-py reads only the "
                                                "first's"),
])
def test_a_url_option_redis_py_cannot_read_is_a_config_error(tmp_path, query, line):
    """redis-py reads ``redis.url``'s options only when it connects, and lets them override
    what iris passes: ``status`` and ``run`` ended in a traceback ("Invalid value for
    'socket_timeout' in connection URL") after ``check-config`` had said valid, and an option
    iris sets (a pool of 2 connections) or one on a cluster's later seed (never read) went
    unsaid. Nothing connects here (port 1), and the URL's password is never quoted."""
    path = write_config(tmp_path, redis={"url": f"redis://:{SECRET}@127.0.0.1:1/0{query}",
                                         "cluster": query.startswith(",")})
    for command in (["check-config"], ["status"], ["run"]):
        result = iris(*command, "-c", str(path))
        assert (result.returncode, result.stdout) == (2, ""), (command, result.stderr)
        assert result.stderr.splitlines() == [f"iris: config error: redis.url: {line}"], command
        assert SECRET not in result.stderr


def test_the_seeds_of_a_cluster_may_repeat_the_first_ones_options(tmp_path):
    """In any order, and in any spelling redis-py reads as the same value."""
    url = ("redis://127.0.0.1:1?socket_timeout=9&protocol=2,"
           "redis://127.0.0.1:2?protocol=2&socket_timeout=9.0,redis://127.0.0.1:3")
    result = iris("check-config", "-c", str(write_config(tmp_path, redis={"url": url,
                                                                          "cluster": True})))
    assert result.returncode == 0, result.stderr
    assert "socket_timeout: 9.0" in result.stdout


def test_duplicate_keys_and_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "iris.yaml"
    path.write_text("destinations:\n  - {id: a, url: 'https://a.example/x', user_dpid: '1',"
                    " client_id: '2'}\ndestinations:\n  - {id: b, url: 'https://b.example/x',"
                    " user_dpid: '1', client_id: '2', auth: {type: none}, auth: {type: none}}\n")
    for command in (["check-config"], ["run"], ["status"], ["send", "--uuid", "u",
                                                            "--segment", "s", "--dpuuid", "d"]):
        result = iris(*command, "-c", str(path))
        assert (result.returncode, result.stderr.splitlines()) == (2, [
            f"iris: config error: {path}:3: duplicate key 'destinations' (first at line 1); "
            "YAML keeps only one of them"]), command
    path.write_bytes(b"destinations: []\n# \xff\n")
    result = iris("check-config", "-c", str(path))
    assert (result.returncode, result.stderr) == (
        2, f"iris: config error: {path}: not UTF-8 (byte 0xff at offset 19)\n")


def test_check_config_shows_what_differs_between_secrets(tmp_path):
    """Two secrets that differ by a doubled $ or a BOM are visibly different; none is shown."""
    (tmp_path / "bom").write_bytes(b"\xef\xbb\xbf" + SECRET.encode() + b"\r\n")
    path = write_config(tmp_path, {"auth": {
        "type": "oauth2_password", "token_url": "https://partner.example/t",
        "client_id": "iris", "client_secret_file": str(tmp_path / "bom"), "username": "u",
        "password": "pa$$" + SECRET}})
    result = iris("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    auth = yaml.safe_load(result.stdout)["destinations"][1]["auth"]
    assert auth["client_secret"] == fingerprint(SECRET)  # the BOM and CR LF are gone
    assert auth["password"] == fingerprint("pa$" + SECRET)  # $$ is one $
    assert auth["password"].endswith(f", {len(SECRET) + 3} chars")
    assert SECRET not in result.stdout + result.stderr


# --------------------------------------------------------------------------- global flags

def test_global_flags_are_accepted_after_the_command(tmp_path, redis_server, stream_key):
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": redis_server.url},
        "stream": {"key": stream_key, "block_ms": 200},
        "http": {"listen": "127.0.0.1:0"}, "shutdown_timeout": 5,
        "destinations": [{"id": "1", "url": "https://p.example/x", "user_dpid": "1",
                          "client_id": "2"}]}))
    assert iris("check-config", "-c", str(path), "--log-level", "DEBUG").returncode == 0
    assert iris("--log-format", "json", "check-config", "-c", str(path)).returncode == 0
    assert iris("dlq", "list", "-c", str(path), "--log-format", "json").returncode == 0
    assert iris("demo", "--log-level", "WARNING", "--help").returncode == 0
    bad = iris("status", "-c", str(path), "--log-format", "xml")
    assert bad.returncode == 2 and "invalid choice: 'xml'" in bad.stderr
    proc = subprocess.Popen([*IRIS, "run", "-c", str(path), "--log-format", "json"],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # each line is one JSON object, up to "started"
            record = orjson.loads(line)
            lines.append(record)
            if record["message"].startswith("started"):
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaps it and closes its pipes
    assert proc.returncode == 0, rest
    assert {r["level"] for r in lines} <= {"info", "warning"} and lines[-1]["logger"]
    assert all(orjson.loads(line)["message"] for line in rest.splitlines())


# --------------------------------------------------------------------------- only what they use

def _partner_config(tmp_path: Path, redis_url: str, stream_key: str) -> Path:
    path = tmp_path / "iris.yaml"
    path.write_text(f"""\
redis: {{url: "{redis_url}"}}
stream: {{key: "{stream_key}"}}
destinations:
  - id: 423
    url: https://partner-a.example/aam
    user_dpid: "1"
    client_id: "2"
    auth:
      type: oauth2_client_credentials
      token_url: https://partner-a.example/token
      client_id: ${{PARTNER_A_CLIENT_ID}}
      client_secret: ${{PARTNER_A_SECRET:?the partner secret}}
  - id: "424"
    url: https://partner-b.example/aam
    user_dpid: "1"
    client_id: "2"
    auth: {{type: basic, username: u, password_file: /nonexistent/partner-b}}
""")
    return path


def _without_partner_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_")}


def _iris_clean(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IRIS, *args], capture_output=True, text=True, timeout=60,
                          env=_without_partner_env())


def test_redis_commands_need_no_partner_secret(tmp_path, redis_server, stream_key):
    import redis as sync_redis

    path = str(_partner_config(tmp_path, redis_server.url, stream_key))
    sent = _iris_clean("send", "-c", path, "--uuid", "u1", "--segment", "s1", "--dpuuid", "d1",
                       "--destination", "423")
    assert sent.returncode == 0, sent.stderr
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.xadd(f"{stream_key}:dlq", {"uuid": "u0", "segment": "s", "dlq_reason": "rejected",
                                      "dlq_destination": "424"})
    try:
        status = _iris_clean("status", "-c", path, "--json")
        assert status.returncode == 0, status.stderr
        report = orjson.loads(status.stdout)
        assert [s["stream"] for s in report["streams"]] == [
            stream_key, f"{stream_key}:out:423", f"{stream_key}:out:424"]
        assert report["streams"][0]["length"] == 1
        listed = _iris_clean("dlq", "list", "-c", path)
        assert listed.returncode == 0, listed.stderr
        assert [orjson.loads(x)["uuid"] for x in listed.stdout.splitlines()] == ["u0"]
        dry = _iris_clean("dlq", "replay", "-c", path, "--dry-run")
        assert (dry.returncode, dry.stdout) == (0, f"would replay 1 event(s) into {stream_key}\n")
        assert [f for _, f in client.xrange(stream_key)] == [
            {"uuid": "u1", "segment": "s1", "dpuuid": "d1", "destination": "423"}]
    finally:
        client.close()
    for command in (["check-config"], ["run"], ["auth", "test"]):  # these still need it all
        result = _iris_clean(*command, "-c", path)
        assert (result.returncode, result.stderr) == (2, (
            "iris: config error: destinations[0].auth.client_id: environment variable "
            "PARTNER_A_CLIENT_ID is not set\n")), command


def test_send_to_a_destination_the_config_lacks(tmp_path, redis_server, stream_key):
    import redis as sync_redis

    path = str(_partner_config(tmp_path, redis_server.url, stream_key))
    one = _iris_clean("send", "-c", path, "--uuid", "u1", "--segment", "s1", "--dpuuid", "d1",
                      "--destination", "999")
    assert (one.returncode, one.stderr) == (1, "iris: --destination: no destination with id "
                                               "'999' in the config (it has 423, 424)\n")
    events = tmp_path / "events.jsonl"
    events.write_text('{"uuid": "u1", "segment": "s1", "dpuuid": "d1", "destination": "424"}\n'
                      '{"uuid": "u2", "segment": "s1", "dpuuid": "d2", "destination": 999}\n')
    many = _iris_clean("send", "-c", path, "--file", str(events))
    assert (many.returncode, many.stderr) == (1, f"iris: {events}:2: no destination with id "
                                                 "'999' in the config (it has 423, 424)\n")
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert client.exists(stream_key) == 0  # nothing was sent
    finally:
        client.close()
