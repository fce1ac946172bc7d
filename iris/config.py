"""Configuration: one pydantic model tree, validated once at load.

Loading runs in three steps, each of which names the key path of whatever it refuses:
``${VAR}``/``${VAR:-default}`` interpolation over the raw YAML, ``*_file`` secrets read from
mounted files, then the pydantic models. The rest of iris only ever sees the typed ``Config``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import Field, ValidationError

from iris.auth_config import (
    AUTH_TYPES,
    AuthConfig,
    HeaderName,
    NoAuth,
    OAuth2Base,
    SigningConfig,
    TokenStoreConfig,
)
from iris.config_base import Positive, PositiveInt, Strict
from iris.errors import ConfigError


class RedisConfig(Strict):
    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout: Positive | None = None  # seconds; default: block_ms + 5 s
    max_connections: Annotated[int, Field(ge=4)] = 20  # per worker, whatever the destinations


class StreamConfig(Strict):
    key: str = Field("iris:events", min_length=1)
    group: str = Field("iris", min_length=1)
    consumer: str = ""
    read_count: PositiveInt = 1000
    block_ms: PositiveInt = 1000
    claim_idle_ms: PositiveInt = 60000
    max_deliveries: PositiveInt = 10
    trim: bool = True  # trim what every group acknowledged from the inbound stream
    trim_interval_ms: PositiveInt = 10000
    idle_consumer_ms: PositiveInt = 600000  # remove consumers idle this long with nothing pending


class HttpConfig(Strict):
    listen: str = Field("0.0.0.0:9108", pattern=r"^\[?[^\s\]]*\]?:\d{1,5}$")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


class BatchConfig(Strict):
    max_users: PositiveInt = 10
    max_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    max_wait: Annotated[float, Field(gt=0, le=86400)] = 1.0


class LimitsConfig(Strict):
    requests_per_second: Positive = 100
    max_in_flight: PositiveInt = 8


class RetryConfig(Strict):
    max_attempts: PositiveInt = 10
    base_delay: Positive = 0.5
    max_delay: Positive = 60


class CircuitConfig(Strict):
    failure_threshold: PositiveInt = 5  # consecutive failed requests that open the circuit
    cooldown: Positive = 10  # seconds before a probe request is allowed


class Destination(Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")  # AAM_Destination_Id
    url: str
    user_dpid: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    segments: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    allow_http: bool = False
    ca_file: Path | None = None  # extra CA to trust for url and token_url (private PKI)
    proxy: str | None = None  # http(s)://[user:password@]host:port; default: HTTPS_PROXY etc.
    idempotency_header: HeaderName = "Idempotency-Key"
    auth: AuthConfig = Field(default_factory=NoAuth)
    signing: SigningConfig | None = None  # HMAC of each request body, as AAM signs
    batch: BatchConfig = Field(default_factory=BatchConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    timeout: Positive = 30

    def routes_all(self) -> bool:
        return "*" in self.segments


class Config(Strict):
    redis: RedisConfig = Field(default_factory=RedisConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    shutdown_timeout: Positive = 20
    token_store: TokenStoreConfig = Field(default_factory=TokenStoreConfig)
    destinations: list[Destination] = Field(min_length=1)

    @property
    def consumer(self) -> str:
        """The consumer name: configured, else hostname-pid (unique per process)."""
        return self.stream.consumer or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def token_key_prefix(self) -> str:
        return self.token_store.key_prefix or f"{self.stream.key}:auth"

    @property
    def redis_socket_timeout(self) -> float:
        return self.redis.socket_timeout or self.stream.block_ms / 1000 + 5


# --------------------------------------------------------------------------- loading

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


def interpolate(value: Any, path: str, env: dict[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a raw YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, _join(path, str(k)), env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found or (found is not None and default is None):
            return found  # set (an empty value counts as set when there is no default)
        if default is not None:
            return default  # unset or empty, as in the shell's ${VAR:-default}
        raise ConfigError(path, f"environment variable {name} is not set")

    return _VAR.sub(replace, value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif i > 0 and loc[i - 1] == "auth" and part in AUTH_TYPES:
            continue  # the discriminator tag pydantic inserts: not a key the user wrote
        else:
            path = _join(path, str(part))
    return path


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must not be empty",
}


def _format_error(err: Any) -> ConfigError:
    path = _loc_path(tuple(err["loc"]))
    template = _MESSAGES.get(err["type"])
    if template:
        message = template.format(**err.get("ctx", {}))
    else:
        message = err["msg"].removeprefix("Value error, ")
        key, sep, rest = message.partition(": ")
        if sep and re.fullmatch(r"[a-z_][a-z0-9_.]*", key):  # raised for a key of the model
            path, message = _join(path, key), rest
        if message[1:2].islower():  # "Field required" → "field required", not "RS256" → "rS256"
            message = message[:1].lower() + message[1:]
    return ConfigError(path, message)


class ConfigErrors(ConfigError):
    """Several configuration problems at once; each has its own line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__(errors[0].path, errors[0].message)

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


def check_semantics(config: Config) -> None:
    """Rules that span several keys; each failure names the key to change."""
    seen: set[str] = set()
    for i, dest in enumerate(config.destinations):
        where = f"destinations[{i}]"
        if dest.id in seen:
            raise ConfigError(f"{where}.id", f"duplicate destination id {dest.id!r}")
        seen.add(dest.id)
        urls = [("url", dest.url)]
        if isinstance(dest.auth, OAuth2Base):
            urls += [(f"auth.{key}", url) for key, url in dest.auth.urls()]
            template = dest.auth.token_request
            if template is not None and template.url and template.url.startswith("http:"):
                urls.append(("auth.token_request.url", template.url))
        for key, url in urls:
            _check_url(f"{where}.{key}", url, dest.allow_http)
        signing = dest.signing
        if signing is not None and dest.idempotency_header.lower() in (
            signing.header.lower(), (signing.key_id_header or "").lower()
        ):
            raise ConfigError(f"{where}.signing", "its headers must differ from "
                              f"idempotency_header ({dest.idempotency_header})")
        if dest.ca_file is not None and not dest.ca_file.is_file():
            raise ConfigError(f"{where}.ca_file", f"no such file: {dest.ca_file}")
        if dest.retry.max_delay < dest.retry.base_delay:
            raise ConfigError(f"{where}.retry.max_delay", "must be >= retry.base_delay")
        if config.stream.claim_idle_ms <= dest.timeout * 1000:
            raise ConfigError(
                "stream.claim_idle_ms",
                f"must exceed the longest request ({where}.timeout = {dest.timeout:g} s), or "
                "entries still in flight would be taken over by another consumer",
            )
    if config.stream.claim_idle_ms <= 3 * config.stream.block_ms:
        raise ConfigError(
            "stream.claim_idle_ms", "must exceed 3 × stream.block_ms, so that the heartbeat "
            "which keeps held entries (open batches, retries) claimed always comes in time",
        )
    _check_redis_url(config.redis.url)
    timeout = config.redis.socket_timeout
    if timeout is not None and timeout * 1000 <= config.stream.block_ms:
        raise ConfigError(
            "redis.socket_timeout", "must exceed stream.block_ms, or blocking reads time out"
        )


REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


def _check_redis_url(url: str) -> None:
    """A scheme redis-py knows, and every file the URL names (TLS material) present."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path):
        schemes = ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)
        raise ConfigError("redis.url", f"must start with {schemes} (got {mask_url(url)[:60]!r})")
    for name, value in parse_qsl(parts.query):
        if name in REDIS_FILES and not Path(value).exists():
            raise ConfigError("redis.url", f"{name}: no such file: {value}")


def _check_url(path: str, url: str, allow_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(
            path, "http:// is refused: use https://, or set allow_http: true for local testing"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, "must be an absolute https:// URL")


def parse_config(raw: Any, env: dict[str, str] | None = None) -> Config:
    """Validate a raw (already YAML-parsed) tree into a ``Config``; raise ``ConfigError``."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the configuration must be a YAML mapping")
    resolved = interpolate(raw, "", dict(os.environ) if env is None else env)
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigErrors([_format_error(e) for e in exc.errors()]) from None
    check_semantics(config)
    return config


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate the YAML file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{path} is not valid YAML{where}") from None
    return parse_config(raw, env)


def mask_url(url: str) -> str:
    """Hide the password of a Redis URL (``user:password@host`` or ``?password=``), leaving the
    rest exactly as written."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]*):[^@/]*@", r"\1:****@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1****", url)


def redacted(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, secrets masked, for ``iris check-config``."""
    data = config.model_dump(mode="json")  # SecretStr dumps as '**********'
    data["redis"]["url"] = mask_url(config.redis.url)
    data["redis"]["socket_timeout"] = config.redis_socket_timeout
    data["stream"]["consumer"] = config.consumer
    data["token_store"]["key_prefix"] = config.token_key_prefix
    return data
