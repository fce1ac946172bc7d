"""What iris shows of a config's secrets: nothing but fingerprints and masked URLs.

It exists apart from the models because it serves two readers that must agree: ``check-config``,
which prints the resolved config (``redacted``), and the log redaction, which must know every
password written into a URL (``url_passwords``).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

from pydantic import SecretStr

if TYPE_CHECKING:  # the models import this module's neighbours; only their types are needed
    from iris.config.model import Config, RedisSettings


def url_passwords(settings: RedisSettings) -> list[str]:
    """The passwords written into the Redis URL and the destinations' URLs (their own, their
    proxy's, their token endpoints'), as written and percent-decoded, for the log redaction:
    they are secrets too."""
    urls = list(settings.redis.urls)
    for dest in getattr(settings, "destinations", []):  # a RedisView's have only their ids
        urls += [url for url in (getattr(dest, "url", None), getattr(dest, "proxy", None)) if url]
        urls += [url for _, url in getattr(getattr(dest, "auth", None), "urls", list)()]
    found = []
    for url in urls:
        try:
            parts = urlsplit(url)
            password = parts.password
        except ValueError:  # refused by the config check before anything runs
            continue
        found += [value for name, value in parse_qsl(parts.query) if name == "password"]
        if password:
            found += [password, unquote(password)]
    return list(dict.fromkeys(found))


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (tab, newline, NUL...): URL parsers strip or
    drop them before they read a URL, so no mask written for the text as it is can be trusted."""
    return any(ord(char) < 32 or char == "\x7f" for char in text)


def mask_url(url: str) -> str:
    """Hide the password of a URL (``user:password@host`` or ``?password=``, its name
    percent-encoded or not), leaving the rest exactly as written. The user information is read
    as URL parsers read it (redis-py's and aiohttp's among them): up to the last ``@`` before
    the path, query or fragment, so that an ``@`` or ``?`` in the password cannot move the
    mask. A URL with control characters (which parsers drop or strip, so that no mask written
    for the text would match) is not shown, nor one with an ``@`` but no ``scheme://``."""
    if has_control_characters(url):
        return "(not shown: a URL with control characters)"
    match = re.match(r"(\s*[A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)", url)
    if match is None and "@" in url:  # no "scheme://": where its password ends is anyone's guess
        return "(not shown: a URL with credentials but no scheme://)"
    head, rest = (url[:match.end()], url[match.end():]) if match else ("", url)
    rest = re.sub(r"([?&])([^=&#]*)=([^&#]*)", _mask_password_parameter, rest)
    if match and "@" in match.group(2):
        userinfo, _, host = match.group(2).rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if colon:
            head = f"{match.group(1)}{user}:****@{host}"
    return head + rest


def _mask_password_parameter(match: re.Match[str]) -> str:
    """``?password=`` (or ``&``) with its value hidden; the name read percent-decoded, as
    ``parse_qs`` reads it for redis-py (``?pass%77ord=`` is a password too)."""
    separator, name, _ = match.groups()
    return f"{separator}{name}=****" if unquote_plus(name) == "password" else match.group(0)


def mask_redis_url(settings: RedisSettings) -> str:
    """``redis.url`` with its passwords hidden: on a cluster, in each of its seed URLs (only
    there is a comma a separator: a password may hold one)."""
    if not settings.redis.cluster:
        return mask_url(settings.redis.url)
    return ",".join(mask_url(part) for part in settings.redis.url.split(","))


def fingerprint(secret: str) -> str:
    """What ``check-config`` shows of a secret: enough to see that it changed, or that a file
    kept a stray character (the length), far too little to recover it."""
    return f"sha256:{hashlib.sha256(secret.encode()).hexdigest()[:8]}, {len(secret)} chars"


def redacted(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, for ``iris check-config``: each secret as its
    ``fingerprint``, the passwords of every URL masked."""
    data: dict[str, Any] = _fingerprints(config.model_dump(), config.model_dump(mode="json"))
    data["redis"]["url"] = mask_redis_url(config)
    for dest in data["destinations"]:
        _mask_urls(dest)
    data["redis"]["socket_timeout"] = config.redis_socket_timeout
    data["stream"]["consumer"] = config.stream.consumer or "(each worker's hostname-pid)"
    data["token_store"]["key_prefix"] = config.token_key_prefix
    return data


def _mask_urls(part: dict[str, Any]) -> None:
    """Every URL of a destination (its own, its proxy's, its token endpoints') masked."""
    for key, value in part.items():
        if isinstance(value, dict):
            _mask_urls(value)
        elif isinstance(value, str) and (key == "url" or key.endswith("_url") or key == "proxy"):
            part[key] = mask_url(value)


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
