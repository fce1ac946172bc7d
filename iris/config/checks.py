"""The rules that span several keys, and the files a config names: the last step of loading.

They exist apart from the models because no single field can judge them (a duplicate destination
id, a claim timeout against the longest request, signing headers against the idempotency header)
or because they touch the filesystem (CA bundles, TLS files in the Redis URL), which a field
validator should not. Each failure names the key to change, and every problem is reported,
not only the first.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, parse_qs, parse_qsl, unquote, urlsplit

from yarl import URL

from iris.config.auth import OAuth2Base
from iris.config.redaction import has_control_characters
from iris.config.validation import ConfigErrors
from iris.errors import ConfigError

if TYPE_CHECKING:  # model.py calls these checks; only the models' types are needed here
    from iris.config.model import Config, Destination, RedisSettings

REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


class _Problems:
    """Every problem the checks find, not only the first: each failed check adds its line, and
    ``raise_any`` raises them together (one ``ConfigError``, or ``ConfigErrors``)."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    @contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except ConfigErrors as exc:
            self.found += exc.errors
        except ConfigError as exc:
            self.found.append(exc)

    def raise_any(self) -> None:
        found = list({str(problem): problem for problem in self.found}.values())  # once each
        if len(found) == 1:
            raise found[0]
        if found:
            raise ConfigErrors(found)


def check_semantics(config: Config) -> None:
    """Rules that span several keys, and files that ``run`` would otherwise only open when it is
    too late; each failure names the key to change. Raises ``ConfigError``, or ``ConfigErrors``
    with one line per problem when there are several."""
    problems = _Problems()
    first: dict[str, int] = {}  # destination id -> index of its first use
    for i, dest in enumerate(config.destinations):
        where = f"destinations[{i}]"
        if dest.id in first:
            problems.found.append(ConfigError(
                f"{where}.id", f"duplicate destination id {dest.id!r} (first in "
                               f"destinations[{first[dest.id]}])"))
        first.setdefault(dest.id, i)
        _check_destination(problems, where, dest)
    if config.destinations:
        i, longest = max(enumerate(config.destinations), key=lambda item: item[1].timeout)
        if config.stream.claim_idle_ms <= longest.timeout * 1000:
            problems.found.append(ConfigError(
                "stream.claim_idle_ms",
                f"must exceed the longest request (destinations[{i}].timeout = "
                f"{longest.timeout:g} s), or entries still in flight would be taken over by "
                "another consumer",
            ))
    if config.stream.claim_idle_ms <= 3 * config.stream.block_ms:
        problems.found.append(ConfigError(
            "stream.claim_idle_ms", "must exceed 3 × stream.block_ms, so that the heartbeat "
            "which keeps held entries (open batches, retries) claimed always comes in time",
        ))
    with problems.check():
        check_redis(config)
    problems.raise_any()


def check_redis(settings: RedisSettings) -> None:
    """What every command that connects to Redis needs, ``status`` as much as ``run``. Raises
    ``ConfigError``, or ``ConfigErrors`` when there are several problems."""
    problems = _Problems()
    for url in settings.redis.urls:
        _check_redis_url(problems, url, settings.redis.url)
    block_ms = settings.stream.block_ms
    too_short = (f"must exceed stream.block_ms ({block_ms} ms = {block_ms / 1000:g} s), or "
                 "blocking reads time out")
    timeout = settings.redis.socket_timeout
    if timeout is not None and timeout * 1000 <= block_ms:
        problems.found.append(ConfigError("redis.socket_timeout", too_short))
    in_url = url_socket_timeout(settings.redis.first_url)  # redis-py's choice over the setting
    if in_url is not None and not in_url * 1000 > block_ms:  # nan too
        problems.found.append(ConfigError(
            "redis.url", f"?socket_timeout= {too_short} (leave it out: iris sets one)"))
    problems.raise_any()


def url_socket_timeout(url: str) -> float | None:
    """``url``'s ``?socket_timeout=`` in seconds, read as redis-py's ``parse_url`` reads it
    (the first one, percent-decoded); ``None`` without one, or with one that is no number (a
    config error of its own: ``store.client.check_url_options``)."""
    try:
        values = parse_qs(urlsplit(url).query).get("socket_timeout")
        return float(values[0]) if values else None
    except ValueError:
        return None


def _check_destination(problems: _Problems, where: str, dest: Destination) -> None:
    urls = [("url", dest.url)]
    if isinstance(dest.auth, OAuth2Base):
        urls += [(f"auth.{key}", url) for key, url in dest.auth.urls()]
        template = dest.auth.token_request
        if template is not None and template.url and template.url.startswith("http:"):
            urls.append(("auth.token_request.url", template.url))
    for key, url in urls:
        with problems.check():
            _check_url(f"{where}.{key}", url, dest.allow_http)
    signing = dest.signing
    if signing is not None and dest.idempotency_header.lower() in (
        signing.header.lower(), (signing.key_id_header or "").lower()
    ):
        problems.found.append(ConfigError(f"{where}.signing", "its headers must differ from "
                                          f"idempotency_header ({dest.idempotency_header})"))
    if dest.ca_file is not None:
        with problems.check():
            _check_ca_file(f"{where}.ca_file", dest.ca_file)
    if dest.proxy is not None:
        with problems.check():
            proxy = _partner_url(f"{where}.proxy", dest.proxy)
            if proxy.scheme not in ("http", "https") or not proxy.hostname:
                raise ConfigError(f"{where}.proxy", "must be an http:// or https:// URL "
                                                    "(http://[user:password@]host:port)")
    if dest.retry.max_delay < dest.retry.base_delay:
        problems.found.append(ConfigError(f"{where}.retry.max_delay",
                                          "must be >= retry.base_delay"))


def _check_ca_file(path: str, ca_file: Path) -> None:
    """Load it as the HTTPS sessions will, so a wrong file stops check-config: into a bare
    client context, without the system CA store the sessions add (35-55 ms of CPU to load,
    once per destination; the sessions share one per CA file, ``http.sender.tls_context``)."""
    try:
        is_dir, is_file = ca_file.is_dir(), ca_file.is_file()
    except OSError as exc:  # a name too long, a directory we may not read
        raise ConfigError(path, f"cannot read {ca_file}: {exc.strerror}") from None
    if is_dir:
        raise ConfigError(path, f"{ca_file} is a directory: name the PEM file of the CAs")
    if not is_file:
        raise ConfigError(path, f"no such file: {ca_file}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(path, f"{ca_file} holds no PEM CA certificate "
                                f"({exc.reason or exc.strerror})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"cannot load {ca_file}: {exc}") from None


def _unparsable(path: str, parts_checked: str) -> ConfigError:
    """A URL its client could not parse: named without the URL and without the parser's words
    about it, both of which may quote a password."""
    return ConfigError(path, f"is not a valid URL (check its brackets, {parts_checked} and its "
                             "characters)")


def _partner_url(path: str, url: str) -> SplitResult:
    """``url`` in parts, once aiohttp's yarl has parsed it as the requests will (a bracket left
    open, a port that is no number: a problem of ``path``)."""
    try:
        URL(url)
        return urlsplit(url)
    except ValueError:
        raise _unparsable(path, "its port") from None


def _redis_url(url: str) -> SplitResult:
    """``url`` in parts, its port and ``?db=`` read as redis-py's ``parse_url`` reads them (the
    first ``db``, percent-decoded): one that is no number is a problem of ``redis.url``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not one
        if databases := parse_qs(parts.query).get("db"):
            int(databases[0])
    except ValueError:
        raise _unparsable("redis.url", "its port, its database") from None
    return parts


def _quoted(url: str, setting: str) -> str:
    """What an error may quote of a URL it refuses: the URL, unless the setting it comes from
    may hold a password (then nothing: a URL malformed around its password defeats any mask)."""
    if "@" in setting or "password" in unquote(setting).lower() or has_control_characters(
            setting):
        return "a URL with credentials, not shown"
    return repr(url[:60])


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # a name too long, a directory we may not read: not a file run can open
        return False


def _check_redis_url(problems: _Problems, url: str, setting: str) -> None:
    """A scheme redis-py knows, values redis-py can read, and every file the URL names (TLS
    material) present. ``setting``: the whole ``redis.url`` (a cluster's seeds, with commas)."""
    with problems.check():
        parts = _redis_url(url)
        if parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path):
            schemes = ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)
            raise ConfigError("redis.url",
                              f"must start with {schemes} (got {_quoted(url, setting)})")
        for name, value in parse_qsl(parts.query):
            if name in REDIS_FILES and not _exists(value):
                problems.found.append(ConfigError("redis.url", f"{name}: no such file: {value}"))


def _check_url(path: str, url: str, allow_http: bool) -> None:
    parts = _partner_url(path, url)
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(
            path, "http:// is refused: use https://, or set allow_http: true for local testing"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, "must be an absolute https:// URL")
