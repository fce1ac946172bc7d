"""Configuration: one pydantic model tree, validated once at load.

Loading runs in four steps, each in its own module and each naming the line or key path of
whatever it refuses: the YAML source (``source``: repeated keys refused, integers remember how
they were written), ``${VAR}`` interpolation over the values (``interpolation``), ``*_file``
secrets read from mounted files and the pydantic models (``base``, ``auth``, this module, with
errors worded by ``validation``), then the rules that span several keys (``checks``).
The rest of iris only ever sees the typed ``Config``, or the ``RedisView`` that the commands
which only touch Redis need.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator

from iris.config.auth import (
    AuthConfig,
    HeaderName,
    NoAuth,
    SigningConfig,
    TokenStoreConfig,
)
from iris.config.base import IdText, Positive, PositiveInt, Strict
from iris.config.checks import check_redis, check_semantics, url_socket_timeout
from iris.config.source import read_yaml
from iris.config.validation import validate


class RedisConfig(Strict):
    url: str = "redis://127.0.0.1:6379/0"  # a cluster: one seed node, or several, comma-separated
    socket_timeout: Positive | None = None  # seconds; default: block_ms + 5 s
    # per worker (per node on a cluster), plus 2 per partition beyond the first
    max_connections: Annotated[int, Field(ge=4)] = 20
    cluster: bool = False  # Redis Cluster: redis-py's cluster client, hash-tagged keys

    @property
    def urls(self) -> list[str]:
        """The seed node URLs: ``url`` split at commas on a cluster, else ``url`` alone."""
        if not self.cluster:
            return [self.url]
        return [part.strip() for part in self.url.split(",") if part.strip()]

    @property
    def first_url(self) -> str:
        """The URL whose query options redis-py reads: ``url``, or a cluster's first seed (of
        the others, it takes only the host and port)."""
        return next(iter(self.urls), "")


class StreamConfig(Strict):
    key: str = Field(default="iris:events", min_length=1)
    group: str = Field(default="iris", min_length=1)
    partitions: Annotated[int, Field(ge=1, le=1024)] = 1  # inbound streams (core.partitions)
    consumer: str = ""
    read_count: PositiveInt = 1000
    block_ms: PositiveInt = 1000
    claim_idle_ms: PositiveInt = 60000
    max_deliveries: PositiveInt = 10
    trim: bool = True  # trim what every group acknowledged from the inbound stream
    trim_interval_ms: PositiveInt = 10000
    idle_consumer_ms: PositiveInt = 600000  # remove consumers idle this long with nothing pending


class HttpConfig(Strict):
    listen: str = Field(default="0.0.0.0:9108", pattern=r"^\[?[^\s\]]*\]?:\d{1,5}$")

    @field_validator("listen")
    @classmethod
    def _port(cls, listen: str) -> str:
        if int(listen.rpartition(":")[2]) > 65535:
            raise ValueError("the port must be at most 65535")
        return listen

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


DestinationId = Annotated[IdText, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]


class Destination(Strict):
    id: DestinationId  # AAM_Destination_Id
    url: str
    user_dpid: IdText = Field(min_length=1)
    client_id: IdText = Field(min_length=1)
    segments: list[IdText] = Field(default_factory=lambda: ["*"], min_length=1)
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


class RedisSettings(Strict):
    """Where Redis and the streams are: all that ``connect`` and ``Streams`` read."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)

    @property
    def consumer(self) -> str:
        """The consumer name: configured, else hostname-pid (unique per process)."""
        return self.stream.consumer or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def redis_socket_timeout(self) -> float:
        """Seconds a Redis command may take: ``redis.url``'s ``?socket_timeout=`` where it has
        one (redis-py lets a URL's options override what it is given), else
        ``redis.socket_timeout``, else ``stream.block_ms`` + 5 s (a blocking read outlasts its
        block)."""
        in_url = url_socket_timeout(self.redis.first_url)
        if in_url is not None:
            return in_url
        return self.redis.socket_timeout or self.stream.block_ms / 1000 + 5


class Config(RedisSettings):
    http: HttpConfig = Field(default_factory=HttpConfig)
    shutdown_timeout: Positive = 20
    token_store: TokenStoreConfig = Field(default_factory=TokenStoreConfig)
    destinations: list[Destination] = Field(min_length=1)

    @property
    def token_key_prefix(self) -> str:
        return self.token_store.key_prefix or f"{self.stream.key}:auth"


class DestinationRef(Strict):
    """A destination seen only by its id (its stream suffix and dead-letter label)."""

    id: DestinationId


class RedisView(RedisSettings):
    """The part of the config that ``status``, ``dlq`` and ``send`` use: Redis, the streams and
    the destination ids. Nothing else is interpolated or validated, so a partner secret that is
    not mounted on an operator's machine does not stop them."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # the rest is run's business
    destinations: list[DestinationRef] = Field(min_length=1)

    @classmethod
    def part_of(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The keys of a raw config tree that this view reads, and only those."""
        keys = ("redis", "stream", "destinations")
        part: dict[str, Any] = {key: raw[key] for key in keys if key in raw}
        if isinstance(part.get("destinations"), list):
            part["destinations"] = [
                {k: v for k, v in d.items() if k == "id"} if isinstance(d, dict) else d
                for d in part["destinations"]
            ]
        return part


# --------------------------------------------------------------------------- loading

def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a raw (already YAML-parsed) tree into a ``Config``; raise ``ConfigError``."""
    config = validate(Config, raw, raw, env)
    check_semantics(config)
    return config


def parse_redis_view(raw: Any, env: Mapping[str, str] | None = None) -> RedisView:
    """Only the Redis part of a raw tree (see ``RedisView``); raise ``ConfigError``."""
    part = RedisView.part_of(raw) if isinstance(raw, dict) else raw
    view = validate(RedisView, raw, part, env)
    check_redis(view)
    return view


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the YAML file at ``path``."""
    return parse_config(read_yaml(path), env)


def load_redis_view(path: str | Path, env: Mapping[str, str] | None = None) -> RedisView:
    """Read the YAML file at ``path`` for a command that only uses Redis (see ``RedisView``)."""
    return parse_redis_view(read_yaml(path), env)
