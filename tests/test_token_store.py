"""The shared token store against a real redis-server: fencing, the lock's lease, refresh-token
compare-and-set, pauses, and encryption at rest."""

from __future__ import annotations

import time

import pytest
from cryptography.fernet import Fernet

from iris.store.tokens import StoredToken, TokenStore, digest
from tests.helpers import FakeClock


def token(value: str, fence: int, ttl: float = 60) -> StoredToken:
    now = time.time()
    return StoredToken(value, "Bearer", now + ttl, now + ttl * 0.8, now, "test", fence)


@pytest.fixture
def store(redis, stream_key) -> TokenStore:
    return TokenStore(redis, f"{stream_key}:auth", "423", "fp1", lease=5)


async def test_one_lock_holder_at_a_time_and_fences_grow(store: TokenStore) -> None:
    first = await store.acquire()
    assert first is not None and await store.acquire() is None
    await store.release(first + 100)  # not ours: the lock stays
    assert await store.acquire() is None
    await store.release(first)
    second = await store.acquire()
    assert second is not None and second > first


async def test_a_stale_lock_holder_cannot_overwrite_a_newer_token(store: TokenStore) -> None:
    assert await store.save(token("new-token", fence=7)) == 1
    assert await store.save(token("old-token", fence=6)) == 0  # its lease ran out before
    loaded = await store.load()
    assert loaded is not None and loaded.access_token == "new-token" and loaded.fence == 7


async def test_invalidate_drops_only_the_refused_generation(store: TokenStore) -> None:
    await store.save(token("t1", fence=3))
    await store.invalidate(2)
    assert await store.load() is not None
    await store.invalidate(3)
    assert await store.load() is None


async def test_lease_expires(redis, stream_key) -> None:
    store = TokenStore(redis, f"{stream_key}:auth", "423", "fp1", lease=0.2)
    assert await store.acquire() is not None
    deadline = time.monotonic() + 5
    while (fence := await store.acquire()) is None:
        assert time.monotonic() < deadline, "the lease never expired"
    assert fence == 2


async def test_rotation_replaces_only_the_refresh_token_that_was_spent(store: TokenStore) -> None:
    await store.put_refresh_token("rt-1", "login:1")
    assert await store.save(token("a1", 1), ("rt-2", digest("rt-1"), "login:1")) == 1
    stored = await store.refresh_token()
    assert stored is not None and stored.token == "rt-2" and stored.seed == "login:1"
    # A writer that spent rt-1 too (it lost a race) must not put its answer over rt-2.
    assert await store.save(token("a2", 2), ("rt-3", digest("rt-1"), "login:1")) == -1
    assert (await store.refresh_token()).token == "rt-2"  # type: ignore[union-attr]
    # A new lineage (a new login, or a new refresh token in the config) always wins.
    assert await store.save(token("a3", 3), ("rt-9", "", "config:abc")) == 1
    assert (await store.refresh_token()).token == "rt-9"  # type: ignore[union-attr]
    await store.drop_refresh_token(digest("rt-1"))  # not the stored one: kept
    assert await store.refresh_token() is not None
    await store.drop_refresh_token(digest("rt-9"))
    assert await store.refresh_token() is None


async def test_the_refresh_token_never_expires(store: TokenStore, redis) -> None:
    await store.put_refresh_token("rt-1", "login:1")
    await store.save(token("a1", 1, ttl=1), ("rt-2", digest("rt-1"), "login:1"))
    assert await redis.ttl(store.refresh_key) == -1
    assert 0 < await redis.pttl(store.token_key) <= 1000


async def test_pauses_double_and_are_shared(redis, stream_key) -> None:
    clock = FakeClock()
    store = TokenStore(redis, f"{stream_key}:auth", "423", "fp1", clock=clock)
    other = TokenStore(redis, f"{stream_key}:auth", "423", "fp1", clock=clock)  # a replica
    first, made = await store.pause(60, "invalid_client")
    assert made and first.count == 1 and first.until == clock() + 60
    seen = await other.paused()
    assert seen is not None and seen.error == "invalid_client"
    # refused at the same moment: the running pause is joined, not lengthened or counted
    assert await other.pause(60, "invalid_client") == (first, False)
    clock.advance(60)  # over: the record stays, to count the next one
    assert await other.paused() is None
    second, made = await other.pause(60, "invalid_client")
    assert made and second.count == 2 and second.until == clock() + 120
    clock.advance(120)
    assert (await store.pause(60, "invalid_client"))[0].count == 3
    await store.clear_pause()
    assert await other.paused(include_expired=True) is None
    # A changed configuration (another fingerprint) is not paused by the old one's refusal.
    await store.pause(60, "invalid_client")
    assert await TokenStore(redis, f"{stream_key}:auth", "423", "fp2").paused() is None


async def test_an_ended_pause_is_forgotten_only_for_its_own_error(redis, stream_key) -> None:
    clock = FakeClock()
    store = TokenStore(redis, f"{stream_key}:auth", "423", "fp1", clock=clock)
    await store.pause(60, "rejected_token")
    assert await store.end_pause("rejected_token", clock()) is False  # running: kept
    assert await store.paused() is not None
    clock.advance(60)
    assert await store.end_pause("invalid_client", clock()) is True  # another error's: kept
    assert await store.paused(include_expired=True) is not None
    # by a token issued before the pause ended: kept
    assert await store.end_pause("rejected_token", clock() - 1) is False
    assert await store.end_pause("rejected_token", clock()) is True
    assert await store.paused(include_expired=True) is None
    assert (await store.pause(60, "rejected_token"))[0].count == 1  # the count starts over
    # a token issued: an endpoint's refusal is over, a partner's rejection is kept
    assert await store.clear_pause(keep="rejected_token") is False
    assert await store.paused() is not None
    assert await store.clear_pause() is True and await store.paused() is None
    await store.pause(60, "invalid_client")
    assert await store.clear_pause(keep="rejected_token") is True
    assert await store.paused(include_expired=True) is None


async def test_encrypted_at_rest_and_unreadable_with_another_key(redis, stream_key,
                                                                 caplog) -> None:
    key = Fernet.generate_key().decode()
    sealed = TokenStore(redis, f"{stream_key}:auth", "423", "fp1", encryption_key=key)
    await sealed.put_refresh_token("refresh-secret-value", "login:1")
    await sealed.save(token("access-secret-value", 1))
    raw = [v for k in (sealed.token_key, sealed.refresh_key)
           for v in (await redis.hgetall(k)).values()]
    assert not [v for v in raw if "secret-value" in v]
    assert (await sealed.load()).access_token == "access-secret-value"  # type: ignore[union-attr]
    other_key = TokenStore(redis, f"{stream_key}:auth", "423", "fp1",
                           encryption_key=Fernet.generate_key().decode())
    no_key = TokenStore(redis, f"{stream_key}:auth", "423", "fp1")
    for reader in (other_key, no_key):
        assert await reader.load() is None and await reader.refresh_token() is None
    assert "cannot read" in caplog.text and "secret-value" not in caplog.text


async def test_fences_stay_above_the_stored_token_when_the_counter_is_gone(store: TokenStore,
                                                                           redis) -> None:
    """A 90-day token outlives the fence counter's expiry: the next lock holder must still be
    able to replace it."""
    await store.save(token("long-lived", fence=41))
    await redis.delete(store.token_key.replace(":token", ":fence"))
    fence = await store.acquire()
    assert fence == 42
    assert await store.save(token("next", fence=fence)) == 1
