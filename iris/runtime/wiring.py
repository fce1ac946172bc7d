"""Authentication per destination: ``make_auth`` picks the scheme the config names."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from iris.auth.base import Auth, Credential
from iris.auth.source import EndpointSource
from iris.auth.static import StaticAuth, basic_header
from iris.auth.tokens import TokenManager
from iris.config.auth import BasicAuth, BearerAuth, OAuth2Base
from iris.config.model import Config, Destination
from iris.http.token_endpoint import SessionSource, TokenEndpoint, longest_exchange
from iris.runtime.metrics import Metrics
from iris.store.client import RedisClient
from iris.store.tokens import TokenStore

__all__ = ["Auth", "Credential", "SharedTokens", "make_auth", "make_store", "make_token_manager"]


@dataclass(frozen=True, slots=True)
class SharedTokens:
    """What every destination's token manager shares: the Redis store and its settings."""

    redis: RedisClient
    prefix: str
    consumer: str
    encryption_key: str | None = None
    refusal_pause: float = 60.0
    fresh_token_age: float = 5.0
    cluster: bool = False  # Redis Cluster: the keys of one destination share a hash tag

    @classmethod
    def from_config(cls, config: Config, redis: RedisClient,
                    consumer: str | None = None) -> SharedTokens:
        key = config.token_store.encryption_key
        return cls(redis, config.token_key_prefix, consumer or config.consumer,
                   key.get_secret_value() if key is not None else None,
                   config.token_store.refusal_pause, config.token_store.fresh_token_age,
                   config.redis.cluster)


def fingerprint(auth: OAuth2Base) -> str:
    """Changes whenever a setting that decides which token the endpoint gives changes."""
    settings = auth.model_dump(mode="json", exclude={"refresh_token"})
    secrets = [getattr(auth, name, None) for name in ("client_secret", "password", "private_key")]
    material = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS) + b"".join(
        b"\0" + s.get_secret_value().encode() for s in secrets if s is not None)
    return hashlib.sha256(material).hexdigest()[:12]


def make_store(dest: Destination, shared: SharedTokens) -> TokenStore:
    """The destination's place in the token store; the same for every replica and the CLI."""
    assert isinstance(dest.auth, OAuth2Base)
    return TokenStore(shared.redis, shared.prefix, dest.id, fingerprint(dest.auth),
                      encryption_key=shared.encryption_key,
                      lease=longest_exchange(dest.timeout) + 5, cluster=shared.cluster)


def make_token_manager(
    dest: Destination, session: SessionSource, metrics: Metrics, shared: SharedTokens,
    on_pause: Callable[[str | None], None] | None = None,
) -> TokenManager:
    auth = dest.auth
    assert isinstance(auth, OAuth2Base)
    endpoint = TokenEndpoint(
        session, dest.timeout, proxy=dest.proxy,
        on_request=lambda outcome: metrics.token_requests.labels(dest.id, outcome).inc())
    store = make_store(dest, shared)

    def paused(why: str | None) -> None:
        metrics.auth_paused.labels(dest.id).set(int(why is not None))
        if on_pause is not None:
            on_pause(why)

    return TokenManager(
        dest.id, EndpointSource(dest.id, auth, endpoint, dest.allow_http), store,
        consumer=shared.consumer, refusal_pause=shared.refusal_pause,
        fresh_token_age=shared.fresh_token_age,
        on_token=metrics.token_expiry.labels(dest.id).set, on_pause=paused,
    )


def make_auth(
    dest: Destination, session: SessionSource, metrics: Metrics, shared: SharedTokens,
    on_pause: Callable[[str | None], None] | None = None,
) -> Auth:
    auth = dest.auth
    if isinstance(auth, BasicAuth):
        return StaticAuth(basic_header(auth.username, auth.password.get_secret_value()))
    if isinstance(auth, BearerAuth):
        return StaticAuth(f"Bearer {auth.token.get_secret_value()}")
    if isinstance(auth, OAuth2Base):
        return make_token_manager(dest, session, metrics, shared, on_pause)
    return StaticAuth(None)
