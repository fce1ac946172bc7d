"""Configuration: one pydantic model tree, validated once at load.

Loading runs in four steps, each of which names the line or key path of whatever it refuses:
YAML read by a loader that refuses repeated keys and remembers how integers were written,
``${VAR}`` interpolation over the values (see ``interpolate`` for the grammar), ``*_file``
secrets read from mounted files, then the pydantic models and the rules that span several keys.
The rest of iris only ever sees the typed ``Config``, or the ``RedisView`` that the commands
which only touch Redis need.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator

from iris.config.auth import (
    AUTH_TYPES,
    AuthConfig,
    HeaderName,
    NoAuth,
    OAuth2Base,
    SigningConfig,
    TokenStoreConfig,
)
from iris.config.base import IdText, LiteralInt, Positive, PositiveInt, Strict, read_utf8
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
        part = {key: raw[key] for key in ("redis", "stream", "destinations") if key in raw}
        if isinstance(part.get("destinations"), list):
            part["destinations"] = [
                {k: v for k, v in d.items() if k == "id"} if isinstance(d, dict) else d
                for d in part["destinations"]
            ]
        return part


# --------------------------------------------------------------------------- interpolation

GRAMMAR = ("${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, "
           "or $$ for a literal $")
_EXPANSION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, path: str, env: Mapping[str, str]) -> Any:
    """Expand ``${...}`` in every string value of a raw YAML tree (never in keys).

    The grammar is POSIX's parameter expansion, restricted to what a config needs:

    - ``$$`` is one literal ``$``; a ``$`` followed by anything but ``{`` or ``$`` is literal;
    - ``${NAME}``: the variable; an error if it is not set (set but empty gives "");
    - ``${NAME:-default}``: ``default`` when unset or empty; ``${NAME-default}``: only when unset;
    - ``${NAME:?message}``: an error saying ``message`` when unset or empty; ``${NAME?message}``:
      only when unset;
    - anything else after ``${`` (``${NAME:+x}``, a nested ``${``, no ``}``) is an error, never
      sent as written. Defaults and messages are literal text up to the first ``}``.

    One pass: a variable's value, and the content of a ``*_file`` secret, are never expanded.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, _join(path, str(k)), env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    return _expand(value, path, env)


def _expand(text: str, path: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    at = 0
    while (dollar := text.find("$", at)) >= 0:
        out.append(text[at:dollar])
        follower = text[dollar + 1:dollar + 2]
        if follower == "{":
            match = _EXPANSION.match(text, dollar + 2)
            if match is None or "${" in (match.group(3) or ""):
                # the value itself may be a secret: say where, never what
                raise ConfigError(path, f"cannot read the ${{...}} at character {dollar + 1}: "
                                        f"write {GRAMMAR}")
            out.append(_resolve(match, path, env))
            at = match.end()
        else:
            out.append("$")
            at = dollar + (2 if follower == "$" else 1)
    out.append(text[at:])
    return "".join(out)


def _resolve(match: re.Match[str], path: str, env: Mapping[str, str]) -> str:
    name, operator, word = match.groups()
    found = env.get(name)
    if operator is None:
        if found is None:
            raise ConfigError(path, f"environment variable {name} is not set")
        return found
    if found is not None and (found or not operator.startswith(":")):
        return found
    if operator.endswith("-"):
        return word
    state = "not set" if found is None else "empty"
    raise ConfigError(path, f"{word} (environment variable {name} is {state})" if word
                      else f"environment variable {name} is {state}")


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


_UNQUOTED = (bool, int, float, datetime.date, datetime.time)  # what YAML makes of unquoted text


def _format_error(err: Any) -> ConfigError:
    path = _loc_path(tuple(err["loc"]))
    template = _MESSAGES.get(err["type"])
    if err["type"] == "string_type" and isinstance(err.get("input"), _UNQUOTED):
        kind = type(err["input"]).__name__.replace("LiteralInt", "int")
        message = f"must be a string: quote it (YAML read it as {kind})"
    elif template:
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
    """Rules that span several keys, and files that ``run`` would otherwise only open when it is
    too late; each failure names the key to change."""
    seen: set[str] = set()
    for i, dest in enumerate(config.destinations):
        where = f"destinations[{i}]"
        if dest.id in seen:
            raise ConfigError(f"{where}.id", f"duplicate destination id {dest.id!r}")
        seen.add(dest.id)
        _check_destination(where, dest)
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
    check_redis(config)


def _check_destination(where: str, dest: Destination) -> None:
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
    if dest.ca_file is not None:
        _check_ca_file(f"{where}.ca_file", dest.ca_file)
    if dest.proxy is not None:
        proxy = urlsplit(dest.proxy)
        if proxy.scheme not in ("http", "https") or not proxy.hostname:
            raise ConfigError(f"{where}.proxy", "must be an http:// or https:// URL "
                                                "(http://[user:password@]host:port)")
    if dest.retry.max_delay < dest.retry.base_delay:
        raise ConfigError(f"{where}.retry.max_delay", "must be >= retry.base_delay")


def _check_ca_file(path: str, ca_file: Path) -> None:
    """Load it exactly as the HTTPS sessions will, so a wrong file stops check-config."""
    if not ca_file.is_file():
        raise ConfigError(path, f"no such file: {ca_file}")
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(path, f"{ca_file} holds no PEM CA certificate "
                                f"({exc.reason or exc.strerror})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"cannot load {ca_file}: {exc}") from None


def check_redis(settings: RedisSettings) -> None:
    """What every command that connects to Redis needs, ``status`` as much as ``run``."""
    _check_redis_url(settings.redis.url)
    timeout = settings.redis.socket_timeout
    if timeout is not None and timeout * 1000 <= settings.stream.block_ms:
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


_Settings = TypeVar("_Settings", bound=RedisSettings)


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a raw (already YAML-parsed) tree into a ``Config``; raise ``ConfigError``."""
    config = _validate(Config, raw, raw, env)
    check_semantics(config)
    return config


def parse_redis_view(raw: Any, env: Mapping[str, str] | None = None) -> RedisView:
    """Only the Redis part of a raw tree (see ``RedisView``); raise ``ConfigError``."""
    part = RedisView.part_of(raw) if isinstance(raw, dict) else raw
    view = _validate(RedisView, raw, part, env)
    check_redis(view)
    return view


def _validate(model: type[_Settings], raw: Any, part: Any,
              env: Mapping[str, str] | None) -> _Settings:
    if not isinstance(raw, dict):
        raise ConfigError("", "the configuration must be a YAML mapping")
    resolved = interpolate(part, "", os.environ if env is None else env)
    try:
        return model.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigErrors([_format_error(e) for e in exc.errors()]) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the YAML file at ``path``."""
    return parse_config(read_yaml(path), env)


def load_redis_view(path: str | Path, env: Mapping[str, str] | None = None) -> RedisView:
    """Read the YAML file at ``path`` for a command that only uses Redis (see ``RedisView``)."""
    return parse_redis_view(read_yaml(path), env)


# --------------------------------------------------------------------------- YAML

class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that repeats a key: YAML forbids it, and PyYAML would keep the last one."""

    def __init__(self, key: Any, first_line: int, mark: yaml.Mark) -> None:
        self.key = key
        self.first_line = first_line
        super().__init__(None, None, f"duplicate key {key!r}", mark)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, less two ways it silently changes what the operator wrote: a
    repeated key is refused instead of replacing the first, and an integer remembers its text
    (``LiteralInt``), so an unquoted id keeps its digits."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise DuplicateKey(key, first[key], key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the base constructor refuses it
        return super().construct_mapping(node, deep=deep)

    def construct_literal_int(self, node: yaml.ScalarNode) -> LiteralInt:
        return LiteralInt(self.construct_yaml_int(node), node.value)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_literal_int)


def read_yaml(path: str | Path) -> Any:
    """The raw tree of the YAML file at ``path``; every problem is one line naming the file."""
    try:
        text = read_utf8(Path(path))
    except ValueError as exc:
        raise ConfigError("", str(exc)) from None
    try:
        return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader
    except DuplicateKey as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError("", f"{path}:{line}: duplicate key {exc.key!r} (first at line "
                              f"{exc.first_line}); YAML keeps only one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{path} is not valid YAML{where}") from None


def url_passwords(settings: RedisSettings) -> list[str]:
    """The passwords written into the Redis URL and the destinations' proxy URLs (as written,
    and percent-decoded), for the log redaction: they are secrets too."""
    urls = [settings.redis.url]
    urls += [d.proxy for d in getattr(settings, "destinations", []) if getattr(d, "proxy", None)]
    found = []
    for url in urls:
        parts = urlsplit(url)
        found += [value for name, value in parse_qsl(parts.query) if name == "password"]
        if parts.password:
            found += [parts.password, unquote(parts.password)]
    return list(dict.fromkeys(found))


def mask_url(url: str) -> str:
    """Hide the password of a Redis URL (``user:password@host`` or ``?password=``), leaving the
    rest exactly as written."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]*):[^@/]*@", r"\1:****@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1****", url)


def fingerprint(secret: str) -> str:
    """What ``check-config`` shows of a secret: enough to see that it changed, or that a file
    kept a stray character (the length), far too little to recover it."""
    return f"sha256:{hashlib.sha256(secret.encode()).hexdigest()[:8]}, {len(secret)} chars"


def redacted(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, for ``iris check-config``: each secret as its
    ``fingerprint``, the passwords of the Redis and proxy URLs masked."""
    data = _fingerprints(config.model_dump(), config.model_dump(mode="json"))
    data["redis"]["url"] = mask_url(config.redis.url)
    for dest in data["destinations"]:
        if dest.get("proxy"):
            dest["proxy"] = mask_url(dest["proxy"])
    data["redis"]["socket_timeout"] = config.redis_socket_timeout
    data["stream"]["consumer"] = config.stream.consumer or "(each worker's hostname-pid)"
    data["token_store"]["key_prefix"] = config.token_key_prefix
    return data


def _fingerprints(plain: Any, shown: Any) -> Any:
    """``shown`` (a JSON dump) with every place where ``plain`` (the same dump with its
    ``SecretStr`` objects) holds a secret replaced by the secret's fingerprint."""
    if isinstance(plain, SecretStr):
        return fingerprint(plain.get_secret_value())
    if isinstance(plain, dict) and isinstance(shown, dict):
        return {key: _fingerprints(plain.get(key), value) for key, value in shown.items()}
    if isinstance(plain, list) and isinstance(shown, list):
        return [_fingerprints(p, v) for p, v in zip(plain, shown, strict=True)]
    return shown
