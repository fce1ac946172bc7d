"""iris.config.model: YAML reading, interpolation, *_file secrets, validation with key paths,
defaults (DESIGN 1.3), the Redis-only view, and what check-config shows of secrets."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from iris.config.interpolation import GRAMMAR, interpolate
from iris.config.model import (
    Config,
    load_config,
    load_redis_view,
    parse_config,
    parse_redis_view,
)
from iris.config.redaction import fingerprint, mask_url, redacted, url_passwords
from iris.config.validation import ConfigErrors
from iris.errors import ConfigError


def dest(**overrides: Any) -> dict[str, Any]:
    return {"id": "423", "url": "https://partner.example/segments/aam", "user_dpid": "12345",
            "client_id": "74323", **overrides}


def config(*destinations: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"destinations": list(destinations) or [dest()], **top}


def cc_auth(**overrides: Any) -> dict[str, Any]:
    return {"type": "oauth2_client_credentials", "token_url": "https://partner.example/token",
            "client_id": "iris", "client_secret": "s3cret-value", **overrides}


def error_lines(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    """The lines ``iris check-config`` prints for ``raw``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={} if env is None else env)
    exc = info.value
    return exc.lines() if isinstance(exc, ConfigErrors) else [str(exc)]


def validation_lines(raw: Any) -> list[str]:
    """Model errors come together, as ConfigErrors."""
    with pytest.raises(ConfigErrors) as info:
        parse_config(raw, env={})
    return info.value.lines()


# --------------------------------------------------------------------------- interpolate

@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-${B}/post", {"A": "x", "B": "y"}, "pre-x-y/post"),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),  # empty counts as unset when a default is given
        ("${A:-d}", {"A": "x"}, "x"),
        ("${A:-}", {}, ""),
        ("${A:-a b:c}", {}, "a b:c"),
        ("${A}", {"A": ""}, ""),  # set but empty, no default: empty
        ("$$", {}, "$"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("p$$w$$rd", {}, "p$w$rd"),
        ("$$$$", {}, "$$"),
        ("a$b $ {A}", {}, "a$b $ {A}"),  # a lone $ is literal
        ("pa$w0rd$", {}, "pa$w0rd$"),
        ("pa$$w0rd", {}, "pa$w0rd"),  # $$ is one $, as documented
        ("${A}", {"A": "${B}"}, "${B}"),  # a value is not interpolated again
        ("${A}", {"A": "p$$w"}, "p$$w"),  # nor are its $$
        ("no variables", {}, "no variables"),
        ("${A-d}", {}, "d"),  # POSIX: without the colon, only an unset variable falls back
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {"A": "x"}, "x"),
        ("${A:?say}", {"A": "x"}, "x"),
        ("${A?say}", {"A": ""}, ""),  # set but empty is fine without the colon
        ("${A?}", {"A": "x"}, "x"),
        ("${A:-$x}", {}, "$x"),  # a default is literal text
        ("{A}$", {"A": "x"}, "{A}$"),
    ],
)
def test_interpolate_strings(value: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(value, "k", env) == expected


@pytest.mark.parametrize(
    ("value", "env", "line"),
    [
        ("${A}", {}, "k: environment variable A is not set"),
        ("${A:?mount the partner secret}", {},
         "k: mount the partner secret (environment variable A is not set)"),
        ("${A:?mount the partner secret}", {"A": ""},
         "k: mount the partner secret (environment variable A is empty)"),
        ("${A?say}", {}, "k: say (environment variable A is not set)"),
        ("${A:?}", {"A": ""}, "k: environment variable A is empty"),
        ("${A?}", {}, "k: environment variable A is not set"),
    ],
)
def test_required_variables(value: str, env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        interpolate(value, "k", env)
    assert str(info.value) == line


@pytest.mark.parametrize(
    ("value", "column"),
    [
        ("${A:+alt}", 1), ("${A", 1), ("x${}", 2), ("${1A}", 1), ("${A:-${B}}", 1),
        ("${ A }", 1), ("s3cr${t", 5), ("$${A}${A#x}", 6),
    ],
)
def test_anything_else_after_dollar_brace_is_refused(value: str, column: int) -> None:
    """Never sent as written; the line says where, not what (the value may be a secret)."""
    with pytest.raises(ConfigError) as info:
        interpolate(value, "k", {"A": "x", "B": "y"})
    assert str(info.value) == f"k: cannot read the ${{...}} at character {column}: write {GRAMMAR}"
    assert GRAMMAR == ("${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, "
                       "${NAME?message}, or $$ for a literal $")


def test_interpolate_walks_the_tree_and_leaves_other_types() -> None:
    raw = {"a": [1, "${X}", {"b": "${Y:-2}"}], "c": True, "d": None, "e": 1.5, "${X}": "k"}
    assert interpolate(raw, "", {"X": "x"}) == {
        "a": [1, "x", {"b": "2"}], "c": True, "d": None, "e": 1.5, "${X}": "k"
    }


def test_missing_variable_names_the_key_path() -> None:
    raw = config(dest(auth=cc_auth(client_secret="${PARTNER_SECRET}")))
    with pytest.raises(ConfigError) as info:
        interpolate(raw, "", {})
    assert info.value.path == "destinations[0].auth.client_secret"
    assert str(info.value) == (
        "destinations[0].auth.client_secret: environment variable PARTNER_SECRET is not set"
    )
    assert error_lines(raw) == [str(info.value)]


def test_missing_variable_in_a_list_and_at_the_top() -> None:
    with pytest.raises(ConfigError) as info:
        interpolate({"destinations": [dest(), dest(segments=["1", "${SEG}"])]}, "", {})
    assert info.value.path == "destinations[1].segments[1]"
    with pytest.raises(ConfigError) as info:
        interpolate({"shutdown_timeout": "${T}"}, "", {})
    assert info.value.path == "shutdown_timeout"


def test_interpolated_values_are_validated() -> None:
    raw = config(dest(timeout="${TIMEOUT:-30}", batch={"max_users": "${USERS}"}))
    parsed = parse_config(raw, env={"USERS": "50"})
    assert parsed.destinations[0].timeout == 30
    assert parsed.destinations[0].batch.max_users == 50
    assert error_lines(raw, {"USERS": "many"})[0].startswith(
        "destinations[0].batch.max_users: "
    )


def test_required_variable_names_the_key_path_and_says_the_message() -> None:
    raw = config(dest(auth=cc_auth(client_secret="${PARTNER_SECRET:?mount /run/secrets/p}")))
    assert error_lines(raw) == ["destinations[0].auth.client_secret: mount /run/secrets/p "
                                "(environment variable PARTNER_SECRET is not set)"]


def test_parse_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRIS_TEST_DEST_URL", "https://from-env.example/aam")
    parsed = parse_config(config(dest(url="${IRIS_TEST_DEST_URL}")))
    assert parsed.destinations[0].url == "https://from-env.example/aam"


# --------------------------------------------------------------------------- *_file secrets

def secret_file_auth(path: Path) -> dict[str, Any]:
    auth = cc_auth(client_secret_file=str(path))
    del auth["client_secret"]
    return auth


@pytest.mark.parametrize("content", [b"s3cret\n", b"s3cret\r\n", b"s3cret", b"s3cret\n\n",
                                     b"\xef\xbb\xbfs3cret\r\n", b"\xef\xbb\xbfs3cret"])
def test_secret_file_trailing_newline_and_bom_are_stripped(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / "partner"
    path.write_bytes(content)
    parsed = parse_config(config(dest(auth=secret_file_auth(path))), env={})
    assert parsed.destinations[0].auth.client_secret.get_secret_value() == "s3cret"


def test_secret_file_keeps_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "partner"
    path.write_bytes(" pa$$w0rd ${X} é\r\nline2\n".encode())
    parsed = parse_config(config(dest(auth=secret_file_auth(path))), env={"X": "no"})
    assert parsed.destinations[0].auth.client_secret.get_secret_value() == (
        " pa$$w0rd ${X} é\r\nline2")


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"\xef\xbb\xbf\n", b"  \n"])
def test_empty_secret_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "partner"
    path.write_bytes(content)
    assert validation_lines(config(dest(auth=secret_file_auth(path)))) == [
        f"destinations[0].auth.client_secret_file: {path} is empty"]


def test_secret_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "partner"
    path.write_bytes(b"caf\xe9\n")
    assert validation_lines(config(dest(auth=secret_file_auth(path)))) == [
        f"destinations[0].auth.client_secret_file: {path}: not UTF-8 (byte 0xe9 at offset 3)"]


def test_secret_files_for_basic_and_bearer(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("pa ss\n")
    (tmp_path / "tok").write_text("${NOT_INTERPOLATED}\n")  # file contents are taken as-is
    parsed = parse_config(config(
        dest(id="a", auth={"type": "basic", "username": "u",
                           "password_file": "${SECRETS}/pw"}),
        dest(id="b", auth={"type": "bearer", "token_file": str(tmp_path / "tok")}),
    ), env={"SECRETS": str(tmp_path)})
    assert parsed.destinations[0].auth.password.get_secret_value() == "pa ss"
    assert parsed.destinations[1].auth.token.get_secret_value() == "${NOT_INTERPOLATED}"


def test_secret_and_secret_file_together(tmp_path: Path) -> None:
    path = tmp_path / "partner"
    path.write_text("s3cret\n")
    raw = config(dest(auth=cc_auth(client_secret_file=str(path))))
    assert validation_lines(raw) == [
        "destinations[0].auth.client_secret_file: "
        "give either client_secret or client_secret_file, not both"
    ]


def test_unreadable_secret_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    raw = config(dest(auth={"type": "basic", "username": "u", "password_file": str(missing)}))
    assert validation_lines(raw) == [
        f"destinations[0].auth.password_file: cannot read {missing}: No such file or directory"
    ]
    raw = config(dest(), dest(id="b", auth={"type": "basic", "username": "u",
                                            "password_file": str(tmp_path)}))
    assert validation_lines(raw) == [
        f"destinations[1].auth.password_file: cannot read {tmp_path}: Is a directory"
    ]


def test_file_key_for_a_non_secret_is_unknown(tmp_path: Path) -> None:
    raw = config(dest(auth={"type": "basic", "username_file": str(tmp_path), "password": "p"}))
    assert validation_lines(raw) == [
        "destinations[0].auth.username: required",
        "destinations[0].auth.username_file: unknown key",
    ]


# --------------------------------------------------------------------------- validation

def test_unknown_keys() -> None:
    raw = config(dest(bogus=1, batch={"max_user": 5}, auth={"type": "none", "x": 1}),
                 stream={"keys": "a"}, extra=True)
    assert sorted(validation_lines(raw)) == sorted([
        "stream.keys: unknown key",
        "destinations[0].bogus: unknown key",
        "destinations[0].batch.max_user: unknown key",
        "destinations[0].auth.x: unknown key",
        "extra: unknown key",
    ])


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (config(stream={"read_count": 0}), "stream.read_count: must be > 0"),
        (config(stream={"block_ms": -1}), "stream.block_ms: must be > 0"),
        (config(stream={"claim_idle_ms": 0}), "stream.claim_idle_ms: must be > 0"),
        (config(stream={"max_deliveries": 0}), "stream.max_deliveries: must be > 0"),
        (config(dest(batch={"max_users": 0})), "destinations[0].batch.max_users: must be > 0"),
        (config(dest(batch={"max_users": -3})), "destinations[0].batch.max_users: must be > 0"),
        (config(dest(limits={"max_in_flight": 0})),
         "destinations[0].limits.max_in_flight: must be > 0"),
        (config(dest(retry={"max_attempts": 0})),
         "destinations[0].retry.max_attempts: must be > 0"),
        (config(dest(batch={"max_bytes": 1000})),
         "destinations[0].batch.max_bytes: must be >= 1024"),
    ],
)
def test_bad_integer_values(raw: dict[str, Any], line: str) -> None:
    assert validation_lines(raw) == [line]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (config(shutdown_timeout=0), "shutdown_timeout"),
        (config(dest(timeout=0)), "destinations[0].timeout"),
        (config(dest(timeout=-1.5)), "destinations[0].timeout"),
        (config(dest(batch={"max_wait": 0})), "destinations[0].batch.max_wait"),
        (config(dest(limits={"requests_per_second": 0})),
         "destinations[0].limits.requests_per_second"),
        (config(dest(retry={"base_delay": -0.5})), "destinations[0].retry.base_delay"),
        (config(dest(retry={"max_delay": 0})), "destinations[0].retry.max_delay"),
        (config(dest(auth=cc_auth(default_expires_in=0))),
         "destinations[0].auth.default_expires_in"),
        (config(redis={"socket_timeout": 0}), "redis.socket_timeout"),
    ],
)
def test_non_positive_values(raw: dict[str, Any], path: str) -> None:
    lines = validation_lines(raw)
    assert len(lines) == 1
    assert re.fullmatch(rf"{re.escape(path)}: must be > 0(\.0)?", lines[0]), lines


def test_max_wait_is_at_most_a_day() -> None:
    lines = validation_lines(config(dest(batch={"max_wait": 86401})))
    assert len(lines) == 1
    assert re.fullmatch(r"destinations\[0\]\.batch\.max_wait: must be <= 86400(\.0)?", lines[0])
    assert parse_config(config(dest(batch={"max_wait": 86400})), env={})


def test_every_problem_is_reported_at_once() -> None:
    raw = config(dest(timeout=0, bogus=1), dest(id="b", url=None), stream={"read_count": 0})
    lines = validation_lines(raw)
    assert len(lines) == 4
    assert "stream.read_count: must be > 0" in lines
    assert "destinations[0].bogus: unknown key" in lines
    assert any(line.startswith("destinations[0].timeout: must be > 0") for line in lines)
    assert any(line.startswith("destinations[1].url: ") for line in lines)


def test_missing_required_keys() -> None:
    assert validation_lines({}) == ["destinations: required"]
    assert validation_lines({"destinations": []}) == ["destinations: must not be empty"]
    assert validation_lines(config({"id": "1", "url": "https://p.example/"})) == [
        "destinations[0].user_dpid: required",
        "destinations[0].client_id: required",
    ]
    assert validation_lines(config(dest(segments=[]))) == [
        "destinations[0].segments: must not be empty"
    ]


def test_not_a_mapping() -> None:
    assert error_lines(["destinations"]) == ["the configuration must be a YAML mapping"]
    assert error_lines(None) == ["the configuration must be a YAML mapping"]


def test_unknown_auth_type() -> None:
    lines = validation_lines(config(dest(auth={"type": "foo", "client_id": "x"})))
    assert len(lines) == 1
    assert lines[0].startswith("destinations[0].auth")
    assert "'foo'" in lines[0]
    assert "'type'" in lines[0]
    assert "oauth2_client_credentials" in lines[0]


def test_auth_errors_name_the_key_without_the_type_tag() -> None:
    auth = cc_auth()
    del auth["token_url"]
    assert validation_lines(config(dest(auth=auth))) == ["destinations[0].auth.token_url: required"]


def test_duplicate_destination_id() -> None:
    raw = config(dest(id="a"), dest(id="423"), dest(id="423"))
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert info.value.path == "destinations[2].id"
    assert error_lines(raw) == [
        "destinations[2].id: duplicate destination id '423' (first in destinations[1])"]


def test_http_url_is_refused_without_allow_http() -> None:
    message = "http:// is refused: use https://, or set allow_http: true for local testing"
    assert error_lines(config(dest(url="http://partner.example/aam"))) == [
        f"destinations[0].url: {message}"
    ]
    auth = cc_auth(token_url="http://partner.example/token")
    assert error_lines(config(dest(auth=auth))) == [f"destinations[0].auth.token_url: {message}"]


def test_http_url_is_accepted_with_allow_http() -> None:
    auth = cc_auth(token_url="http://127.0.0.1:8080/token")
    parsed = parse_config(config(dest(url="http://127.0.0.1:8080/aam", allow_http=True,
                                      auth=auth)), env={})
    assert parsed.destinations[0].url == "http://127.0.0.1:8080/aam"
    assert parsed.destinations[0].allow_http is True


@pytest.mark.parametrize("url", ["ftp://partner.example/aam", "partner.example/aam", "https://"])
def test_url_must_be_absolute_https(url: str) -> None:
    assert error_lines(config(dest(url=url))) == [
        "destinations[0].url: must be an absolute https:// URL"
    ]


@pytest.mark.parametrize(("timeout", "block_ms"), [(1, 1000), (0.5, 1000), (2, 5000)])
def test_socket_timeout_must_exceed_block_ms(timeout: float, block_ms: int) -> None:
    raw = config(redis={"socket_timeout": timeout}, stream={"block_ms": block_ms})
    assert error_lines(raw) == [
        f"redis.socket_timeout: must exceed stream.block_ms ({block_ms} ms = "
        f"{block_ms / 1000:g} s), or blocking reads time out"
    ]


def test_socket_timeout_above_block_ms_and_its_default() -> None:
    parsed = parse_config(config(redis={"socket_timeout": 1.5}), env={})
    assert parsed.redis_socket_timeout == 1.5
    assert parse_config(config(), env={}).redis_socket_timeout == 6.0  # block_ms 1000 + 5 s
    parsed = parse_config(config(stream={"block_ms": 2500}), env={})
    assert parsed.redis_socket_timeout == 7.5


def test_a_socket_timeout_in_the_url_is_the_one_redis_py_uses() -> None:
    """redis-py lets a URL's ``?socket_timeout=`` override what iris gives it: a URL copied
    from another app with ``socket_timeout=1`` left every blocking read of 1 s timing out, the
    worker unready for good ("redis did not answer in time"). It is checked as the setting
    is, and it is what check-config shows."""
    url = "redis://h:6379/0?socket_timeout=1"
    assert error_lines(config(redis={"url": url, "socket_timeout": 30})) == [
        "redis.url: ?socket_timeout= must exceed stream.block_ms (1000 ms = 1 s), or blocking "
        "reads time out (leave it out: iris sets one)"]
    parsed = parse_config(config(redis={"url": url}, stream={"block_ms": 500}), env={})
    assert parsed.redis_socket_timeout == 1.0
    assert redacted(parsed)["redis"]["socket_timeout"] == 1.0
    seeds = "redis://h1:7000?socket_timeout=2.5,redis://h2:7000"  # the first URL's options
    assert parse_config(config(redis={"url": seeds, "cluster": True}), env={}
                        ).redis_socket_timeout == 2.5
    for value in ("nan", "0", "-1"):  # no timeout a read could outlast
        assert error_lines(config(redis={"url": f"redis://h:6379?socket_timeout={value}"}))


def test_max_delay_below_base_delay() -> None:
    assert error_lines(config(dest(retry={"base_delay": 5, "max_delay": 1}))) == [
        "destinations[0].retry.max_delay: must be >= retry.base_delay"
    ]


# --------------------------------------------------------------------------- defaults

def test_defaults_match_the_design() -> None:
    parsed = parse_config(config(dest(auth=cc_auth())), env={})
    assert parsed.redis.url == "redis://127.0.0.1:6379/0"
    assert (parsed.stream.key, parsed.stream.group) == ("iris:events", "iris")
    assert parsed.stream.read_count == 1000
    assert parsed.stream.block_ms == 1000
    assert parsed.stream.claim_idle_ms == 60000
    assert parsed.stream.max_deliveries == 10
    assert parsed.http.listen == "0.0.0.0:9108"
    assert parsed.shutdown_timeout == 20
    d = parsed.destinations[0]
    assert d.segments == ["*"]
    assert d.allow_http is False
    assert d.batch.max_users == 10
    assert d.batch.max_bytes == 1_000_000
    assert d.batch.max_wait == 1.0
    assert d.limits.requests_per_second == 100
    assert d.limits.max_in_flight == 8
    assert (d.retry.max_attempts, d.retry.base_delay, d.retry.max_delay) == (10, 0.5, 60)
    assert d.timeout == 30
    assert d.auth.default_expires_in == 3600
    assert parse_config(config(), env={}).destinations[0].auth.type == "none"


def test_consumer_defaults_to_hostname_pid() -> None:
    parsed = parse_config(config(stream={"consumer": "${HOSTNAME:-}"}), env={})
    assert parsed.stream.consumer == ""
    assert parsed.consumer == f"{socket.gethostname()}-{os.getpid()}"
    parsed = parse_config(config(stream={"consumer": "${HOSTNAME:-}"}), env={"HOSTNAME": "pod-7"})
    assert parsed.consumer == "pod-7"


def test_the_design_example_loads(tmp_path: Path) -> None:
    secret = tmp_path / "partner"
    secret.write_text("from-a-file\n")
    path = tmp_path / "iris.yaml"
    path.write_text(DESIGN_EXAMPLE.replace("/run/secrets/partner", str(secret)))
    parsed = load_config(path, env={"PARTNER_CLIENT_ID": "iris-client"})
    assert isinstance(parsed, Config)
    d = parsed.destinations[0]
    assert (d.id, d.user_dpid, d.client_id) == ("423", "12345", "74323")
    assert d.auth.type == "oauth2_client_credentials"
    assert d.auth.client_id == "iris-client"
    assert d.auth.client_secret.get_secret_value() == "from-a-file"
    assert parsed.consumer == f"{socket.gethostname()}-{os.getpid()}"
    assert d.batch.max_users == 10


def test_load_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="cannot read "):
        load_config(missing, env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("destinations:\n  - id: [1\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+, column \d+"):
        load_config(bad, env={})


# --------------------------------------------------------------------------- redacted

def test_fingerprint() -> None:
    assert fingerprint("s3cret") == (
        f"sha256:{hashlib.sha256(b's3cret').hexdigest()[:8]}, 6 chars")
    assert fingerprint("pa$w0rd") != fingerprint("pa$$w0rd")
    assert fingerprint("pa$w0rd").endswith(", 7 chars")
    assert fingerprint("é") == f"sha256:{hashlib.sha256('é'.encode()).hexdigest()[:8]}, 1 chars"


def test_redacted_shows_fingerprints_of_secrets() -> None:
    parsed = parse_config(config(
        dest(id="a", auth=cc_auth(client_secret="cc-secret-1")),
        dest(id="b", auth={"type": "basic", "username": "user", "password": "basic-secret-2"}),
        dest(id="c", auth={"type": "bearer", "token": "bearer-secret-3"}),
        redis={"url": "redis://iris:redis-secret-4@redis.internal:6380/2"},
    ), env={})
    data = redacted(parsed)
    text = repr(data)
    for secret in ("cc-secret-1", "basic-secret-2", "bearer-secret-3", "redis-secret-4"):
        assert secret not in text
    assert data["destinations"][0]["auth"]["client_secret"] == fingerprint("cc-secret-1")
    assert data["destinations"][1]["auth"]["password"] == fingerprint("basic-secret-2")
    assert data["destinations"][1]["auth"]["username"] == "user"
    assert data["destinations"][2]["auth"]["token"] == fingerprint("bearer-secret-3")
    assert data["redis"]["url"] == "redis://iris:****@redis.internal:6380/2"
    assert data["redis"]["socket_timeout"] == 6.0
    assert data["stream"]["consumer"] == "(each worker's hostname-pid)"  # not check-config's


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw-secret@redis.internal/0", "redis://:****@redis.internal/0"),
        ("rediss://user:p%40ss-secret@redis.internal:6380/0",
         "rediss://user:****@redis.internal:6380/0"),
        ("redis://:pw-secret@[::1]:6379/0", "redis://:****@[::1]:6379/0"),
    ],
)
def test_redacted_redis_url(url: str, masked: str) -> None:
    data = redacted(parse_config(config(redis={"url": url}), env={}))
    assert "pw-secret" not in data["redis"]["url"]
    assert "p%40ss-secret" not in data["redis"]["url"]
    assert data["redis"]["url"] == masked


@pytest.mark.parametrize(
    "url",
    [
        "unix:///run/redis.sock?db=0&password=pw-secret",  # redis-py's form for unix sockets
        "redis://redis.internal:6379/0?password=pw-secret",
    ],
)
def test_redacted_redis_url_query_password(url: str) -> None:
    masked = redacted(parse_config(config(redis={"url": url}), env={}))["redis"]["url"]
    assert "pw-secret" not in masked
    assert masked.startswith(url.partition("?")[0])


DESIGN_EXAMPLE = """\
redis:
  url: redis://127.0.0.1:6379/0
stream:
  key: iris:events
  group: iris
  consumer: ${HOSTNAME:-}          # empty: hostname-pid
  read_count: 1000
  block_ms: 1000
  claim_idle_ms: 60000             # reclaim entries a dead consumer left pending
  max_deliveries: 10               # then dead-letter (reason max_deliveries)
http:
  listen: 0.0.0.0:9108             # GET /metrics, /healthz, /readyz
shutdown_timeout: 20
destinations:
  - id: "423"                      # AAM_Destination_Id
    url: https://partner.example/segments/aam
    user_dpid: "12345"             # User_DPID
    client_id: "74323"             # Client_ID in the payload
    segments: ["*"]                # Segment_IDs routed here; "*" = all
    allow_http: false              # true only for local testing: https is required otherwise
    auth:
      type: oauth2_client_credentials
      token_url: https://partner.example/oauth2/token
      client_id: ${PARTNER_CLIENT_ID}
      client_secret_file: /run/secrets/partner
      default_expires_in: 3600     # used when the token response has no expires_in
    batch: {max_users: 10, max_bytes: 1000000, max_wait: 1.0}   # max_wait up to 86400
    limits: {requests_per_second: 100, max_in_flight: 8}
    retry: {max_attempts: 10, base_delay: 0.5, max_delay: 60}
    timeout: 30
"""


# --------------------------------------------------------------------------- the Redis URL

@pytest.mark.parametrize(("url", "line"), [
    ("127.0.0.1:6379", "redis.url: must start with redis://, rediss://, unix:// "
                       "(got '127.0.0.1:6379')"),
    ("http://redis:6379/0", "redis.url: must start with redis://, rediss://, unix:// "
                            "(got 'http://redis:6379/0')"),
    ("rediss://:pw@redis:6380/0?ssl_ca_certs=/nonexistent/ca.pem",
     "redis.url: ssl_ca_certs: no such file: /nonexistent/ca.pem"),
])
def test_redis_url_problems_are_caught_before_run(url: str, line: str) -> None:
    assert error_lines(config(redis={"url": url})) == [line]


def test_every_missing_tls_file_of_the_redis_url_is_named_once() -> None:
    url = "rediss://redis:6380/0?ssl_certfile=/nonexistent/c.pem&ssl_keyfile=/nonexistent/k.pem"
    assert error_lines(config(redis={"url": url})) == [
        "redis.url: ssl_certfile: no such file: /nonexistent/c.pem",
        "redis.url: ssl_keyfile: no such file: /nonexistent/k.pem"]
    seeds = ",".join(f"rediss://10.0.0.{n}:7000?ssl_ca_certs=/nonexistent/ca.pem"
                     for n in (1, 2))  # a cluster's seeds, one CA: its line comes once
    assert error_lines(config(redis={"url": seeds, "cluster": True})) == [
        "redis.url: ssl_ca_certs: no such file: /nonexistent/ca.pem"]


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://redis.internal:6379?password=Pa@LEAK1", "redis://redis.internal:6379?password=****"),
    ("redis://:p@LEAK2@h/0", "redis://:****@h/0"),  # an "@" in the password: the last one counts
    ("rediss://:LEAK3@h:6380/0?ssl_ca_certs=/srv/a@b/ca.pem",  # and none after the host
     "rediss://:****@h:6380/0?ssl_ca_certs=/srv/a@b/ca.pem"),
    ("redis://h:6379/0?client_name=w:1@dc", "redis://h:6379/0?client_name=w:1@dc"),
    ("redis://user@h:6379/0", "redis://user@h:6379/0"),
])
def test_mask_url_reads_the_user_information_as_url_parsers_do(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize("url", [
    "redis//:LEAKPW1@h:6379/0",  # no ":" after the scheme
    "http://:LEAK/PW4@h:6379/0",  # a "/" in the password
    "user:LEAKPW5@h:6379",  # no scheme
    "default:/LEAKPW6@redis.internal:6379/0",  # a password read as a scheme and path
    "h:6379/0?password=LEAKPW7",
])
def test_a_malformed_redis_url_is_refused_without_its_password(url: str) -> None:
    assert error_lines(config(redis={"url": url})) in (
        ["redis.url: must start with redis://, rediss://, unix:// (got a URL with credentials, "
         "not shown)"],
        ["redis.url: is not a valid URL (check its brackets, its port, its database and its "
         "characters)"])


def test_a_redis_url_redis_py_would_refuse_is_refused_and_one_it_reads_is_shown_masked() -> None:
    assert error_lines(config(redis={"url": "redis://h:6379?db=LEAK9"})) == [
        "redis.url: is not a valid URL (check its brackets, its port, its database and its "
        "characters)"]
    for url, shown in (("redis:/:LEAKPW2@h:6379/0",
                        "(not shown: a URL with credentials but no scheme://)"),
                       ("redis://h:6379/x?password=LEAK8", "redis://h:6379/x?password=****")):
        data = redacted(parse_config(config(redis={"url": url}), env={}))
        assert data["redis"]["url"] == shown


@pytest.mark.parametrize("url", ["redis:///0", "redis://:pw@/0", "redis://localhost",
                                 "rediss://[::1]:6380", "unix:///tmp/r.sock?db=1",
                                 "REDIS://127.0.0.1:6379/0"])
def test_urls_redis_py_takes_are_taken(url: str) -> None:
    assert parse_config(config(redis={"url": url}), env={}).redis.url == url


def test_a_destination_url_whose_port_is_no_number_is_refused() -> None:
    for key in ("url", "proxy"):
        assert error_lines(config(dest(**{key: "https://a.example:abc/x"}))) == [
            f"destinations[0].{key}: is not a valid URL (check its brackets, its port and its "
            "characters)"]


def test_a_url_python_cannot_split_is_a_problem_of_its_key() -> None:
    for url in ("redis://:REDISPW@[::1:6379/0", "redis://u:REDISPW\uff03x@h/0",
                "redis://127.0.0.1:99999/0", "redis://127.0.0.1:abc/0"):
        assert error_lines(config(redis={"url": url})) == [
            "redis.url: is not a valid URL (check its brackets, its port, its database and its "
            "characters)"]


def test_redis_url_with_tls_files_that_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    url = f"rediss://redis:6380/0?ssl_ca_certs={ca}"
    assert parse_config(config(redis={"url": url}), env={}).redis.url == url
    assert parse_config(config(redis={"url": "unix:///run/redis.sock"}), env={})


# --------------------------------------------------------------------------- YAML

def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "iris.yaml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    return str(info.value)


DEST_A = """\
  - id: "a"
    url: https://a.example/aam
    user_dpid: "1"
    client_id: "2"
"""


def test_a_repeated_top_level_key_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "destinations:\n" + DEST_A + "destinations:\n"
                 + DEST_A.replace('"a"', '"b"'))
    assert load_error(path) == (f"{path}:6: duplicate key 'destinations' (first at line 1); "
                                "YAML keeps only one of them")


def test_a_repeated_nested_key_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "destinations:\n" + DEST_A
                 + "    auth: {type: bearer, token: t}\n    timeout: 5\n    auth: {type: none}\n")
    assert load_error(path) == (f"{path}:8: duplicate key 'auth' (first at line 6); "
                                "YAML keeps only one of them")
    path = write(tmp_path, "destinations:\n" + DEST_A + "    batch: {max_users: 5, max_users: 6}\n")
    assert load_error(path) == (f"{path}:6: duplicate key 'max_users' (first at line 6); "
                                "YAML keeps only one of them")


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """``<<: *anchor`` then a key of its own is how YAML overrides a default, not a repeat."""
    path = write(tmp_path, "destinations:\n" + DEST_A
                 + "    batch: &batch {max_users: 3, max_wait: 2}\n"
                 + DEST_A.replace('"a"', '"b"') + "    batch: {<<: *batch, max_users: 4}\n")
    a, b = load_config(path, env={}).destinations
    assert (a.batch.max_users, a.batch.max_wait) == (3, 2)
    assert (b.batch.max_users, b.batch.max_wait) == (4, 2)


def test_a_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    head = ("destinations:\n" + DEST_A + "    # caf").encode()
    path = write(tmp_path, head + b"\xe9\n")
    assert load_error(path) == f"{path}: not UTF-8 (byte 0xe9 at offset {len(head)})"


def test_a_config_file_with_a_bom_loads(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + ("destinations:\n" + DEST_A).encode())
    assert load_config(path, env={}).destinations[0].id == "a"


# --------------------------------------------------------------------------- ids as text

def test_unquoted_integer_ids_keep_their_digits(tmp_path: Path) -> None:
    path = write(tmp_path, """\
destinations:
  - id: 423
    url: https://a.example/aam
    user_dpid: 12345
    client_id: 074323
    segments: [14356, "14357", 19393572368547369350319949416899715727]
    auth: {type: oauth2_client_credentials, token_url: "https://a.example/t",
           client_id: 99, client_secret: s}
    signing: {keys: [{id: 202612, secret: k}]}
""")
    d = load_config(path, env={}).destinations[0]
    assert (d.id, d.user_dpid, d.client_id) == ("423", "12345", "074323")  # not octal 30931
    assert d.segments == ["14356", "14357", "19393572368547369350319949416899715727"]
    assert d.auth.client_id == "99"
    assert d.signing is not None and d.signing.keys[0].id == "202612"


@pytest.mark.parametrize(("value", "line"), [
    ("14356.0", "must be a string: quote it (YAML read it as the number 14356.0)"),
    ("1.5e+3", "must be a string: quote it (YAML read it as the number 1500.0)"),
    ("0x1A", "must be a string: quote it (YAML read 0x1A as the number 26)"),
    ("1_000", "must be a string: quote it (YAML read 1_000 as the number 1000)"),
    ("-5", "must be a string: quote it (YAML read -5 as the number -5)"),
    ("yes", "must be a string: quote it (YAML read it as the boolean true)"),
])
def test_ids_yaml_would_change_must_be_quoted(tmp_path: Path, value: str, line: str) -> None:
    path = write(tmp_path, "destinations:\n" + DEST_A.replace('"1"', value))
    with pytest.raises(ConfigErrors) as info:
        load_config(path, env={})
    assert info.value.lines() == [f"destinations[0].user_dpid: {line}"]
    path = write(tmp_path, "destinations:\n" + DEST_A + f"    segments: [\"1\", {value}]\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path, env={})
    assert info.value.lines() == [f"destinations[0].segments[1]: {line}"]


def test_other_strings_given_as_numbers_say_quote_it(tmp_path: Path) -> None:
    path = write(tmp_path, "destinations:\n" + DEST_A
                 + "    auth: {type: basic, username: 1001, password: 2026-01-01}\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path, env={})
    assert info.value.lines() == [
        "destinations[0].auth.username: must be a string: quote it (YAML read it as int)",
        "destinations[0].auth.password: must be a string: quote it (YAML read it as date)",
    ]


# --------------------------------------------------------------------------- files run opens

def test_a_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("this is not a certificate\n")
    assert error_lines(config(dest(ca_file=str(ca)))) == [
        f"destinations[0].ca_file: {ca} holds no PEM CA certificate "
        "(NO_CERTIFICATE_OR_CRL_FOUND)"]
    assert error_lines(config(dest(ca_file=str(tmp_path)))) == [
        f"destinations[0].ca_file: {tmp_path} is a directory: name the PEM file of the CAs"]
    assert error_lines(config(dest(ca_file=str(tmp_path / "none.pem")))) == [
        f"destinations[0].ca_file: no such file: {tmp_path / 'none.pem'}"]


def test_a_pem_ca_file_loads(tls: Any) -> None:
    parsed = parse_config(config(dest(ca_file=str(tls.ca_file))), env={})
    assert parsed.destinations[0].ca_file == Path(tls.ca_file)


def test_listen_port_must_exist() -> None:
    assert validation_lines(config(http={"listen": "0.0.0.0:70000"})) == [
        "http.listen: the port must be at most 65535"]


# --------------------------------------------------------------------------- the Redis view

def test_the_redis_view_needs_no_partner_secret(tmp_path: Path) -> None:
    path = write(tmp_path, """\
redis: {url: "${REDIS_URL:-redis://127.0.0.1:7777/1}"}
stream: {key: "k:${ENV_NAME}", block_ms: 500}
http: {listen: "bogus"}
colour: blue
destinations:
  - id: 423
    url: ${PARTNER_A_URL}
    client_id: ${PARTNER_A_CLIENT_ID}
    auth: {type: basic, username: u, password_file: /nonexistent/secret}
  - id: "b"
    auth: {type: bearer, token: "${PARTNER_B_TOKEN:?mount it}"}
""")
    view = load_redis_view(path, env={"ENV_NAME": "prod"})
    assert view.redis.url == "redis://127.0.0.1:7777/1"
    assert (view.stream.key, view.stream.block_ms) == ("k:prod", 500)
    assert [d.id for d in view.destinations] == ["423", "b"]
    assert view.redis_socket_timeout == 5.5 and view.consumer
    with pytest.raises(ConfigError) as info:  # run and check-config still need all of it
        load_config(path, env={"ENV_NAME": "prod"})
    assert str(info.value) == "destinations[0].url: environment variable PARTNER_A_URL is not set"


@pytest.mark.parametrize(("raw", "lines"), [
    ({"redis": {"url": "127.0.0.1:6379"}, "destinations": [{"id": "a"}]},
     ["redis.url: must start with redis://, rediss://, unix:// (got '127.0.0.1:6379')"]),
    ({"stream": {"key": "${K}"}, "destinations": [{"id": "a"}]},
     ["stream.key: environment variable K is not set"]),
    ({"stream": {"block_ms": 0}, "destinations": [{"id": "a b"}, {"url": "x"}]},
     ["stream.block_ms: must be > 0",
      "destinations[0].id: string should match pattern '^[A-Za-z0-9_.-]+$'",
      "destinations[1].id: required"]),
    ({"redis": {"socket_timeout": 1}, "destinations": [{"id": "a"}]},
     ["redis.socket_timeout: must exceed stream.block_ms (1000 ms = 1 s), or blocking reads "
      "time out"]),
    ({}, ["destinations: required"]),
])
def test_the_redis_view_still_checks_what_it_reads(raw: dict[str, Any],
                                                   lines: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_view(raw, env={})
    exc = info.value
    assert (exc.lines() if isinstance(exc, ConfigErrors) else [str(exc)]) == lines


def test_url_passwords_are_masked_and_known(tmp_path: Path) -> None:
    parsed = parse_config(config(
        dest(id="a", proxy="http://squid:pr%40xy-secret@proxy.internal:3128"), dest(id="b"),
        redis={"url": "redis://iris:redis-secret@redis.internal:6380/2"}), env={})
    data = redacted(parsed)
    assert data["destinations"][0]["proxy"] == "http://squid:****@proxy.internal:3128"
    assert data["destinations"][1]["proxy"] is None
    assert "secret" not in repr(data)
    assert url_passwords(parsed) == ["redis-secret", "pr%40xy-secret", "pr@xy-secret"]
    view = parse_redis_view(config(redis={"url": "unix:///run/r.sock?password=q-secret"}), env={})
    assert url_passwords(view) == ["q-secret"]


def test_every_destination_url_is_masked_and_its_password_known() -> None:
    auth = {"type": "oauth2_client_credentials", "client_id": "iris", "client_secret": "c",
            "token_url": "https://iris:tok-secret@partner.example/t"}
    parsed = parse_config(config(dest(id="a", url="https://user:url-secret@partner.example/aam",
                                      auth=auth)), env={})
    data = redacted(parsed)
    assert data["destinations"][0]["url"] == "https://user:****@partner.example/aam"
    assert data["destinations"][0]["auth"]["token_url"] == "https://iris:****@partner.example/t"
    assert "url-secret" not in repr(data) and "tok-secret" not in repr(data)
    assert {"url-secret", "tok-secret"} <= set(url_passwords(parsed))


@pytest.mark.parametrize(("url", "shown"), [
    ("\x01redis://:LEAK1@h:6379/0", "(not shown: a URL with control characters)"),
    ("redis:/\t/:LEAK2@h:6379/0", "(not shown: a URL with control characters)"),
    ("redis://u:x&password=LEAK3@h:6379/0", "redis://u:****@h:6379/0"),  # not a query
    # redis-py reads the query with parse_qs, names percent-decoded: each is a password
    ("redis://h:6379/0?pass%77ord=LEAK4", "redis://h:6379/0?pass%77ord=****"),
    ("redis://h:6379/0?db=1&%70assword=LEAK5#x", "redis://h:6379/0?db=1&%70assword=****#x"),
    ("unix:///r.sock?PASS%57ORD=not-a-password&passwords=x",
     "unix:///r.sock?PASS%57ORD=not-a-password&passwords=x"),  # redis-py's names are exact
])
def test_mask_url_on_what_parsers_read_differently(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_refused_seed_of_a_password_with_a_comma_is_not_quoted() -> None:
    for url in ("redis://:12,LEAKTAIL@h1:6379", "redis://h1:6379?password=Pa,LEAKTAIL"):
        lines = error_lines(config(redis={"url": url, "cluster": True}))
        assert lines and not any("LEAK" in line for line in lines), lines


def test_a_tls_file_name_too_long_to_look_up_is_a_config_error(tmp_path: Path) -> None:
    name = f"/tmp/{'a' * 300}/ca.pem"
    assert error_lines(config(redis={"url": f"rediss://h:6380/0?ssl_ca_certs={name}"})) == [
        f"redis.url: ssl_ca_certs: no such file: {name}"]
    lines = error_lines(config(dest(ca_file=name)))
    assert lines == [f"destinations[0].ca_file: cannot read {name}: File name too long"]


def test_a_destination_proxy_must_be_an_http_url() -> None:
    assert error_lines(config(dest(proxy="socks5://127.0.0.1:1080"))) == [
        "destinations[0].proxy: must be an http:// or https:// URL "
        "(http://[user:password@]host:port)"]
    parsed = parse_config(config(dest(proxy="http://u:p@proxy.internal:3128")), env={})
    assert parsed.destinations[0].proxy == "http://u:p@proxy.internal:3128"
