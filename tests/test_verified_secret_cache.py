"""The verified-secret cache (tessera.server.oauth.client_auth.VerifiedSecretCache) on its own: what it
recognises, for how long, and that it holds no secret."""

from __future__ import annotations

from tessera.server.oauth.client_auth import VerifiedSecretCache
from tests.helpers import FakeClock

SECRET = "s3cret-value-that-must-not-be-kept-7f3a"
HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"


def test_only_the_same_client_secret_and_stored_hash_match():
    cache = VerifiedSecretCache(ttl=60, clock=FakeClock(1000.0))
    cache.remember("svc", SECRET, HASH)
    assert cache.matches("svc", SECRET, HASH)
    assert not cache.matches("svc", SECRET + "x", HASH)
    assert not cache.matches("svc", SECRET[:-1], HASH)
    assert not cache.matches("other", SECRET, HASH)
    # The secret was rotated (a new stored hash): the old secret no longer passes from memory.
    assert not cache.matches("svc", SECRET, HASH.replace("aGFzaA", "bmV3"))


def test_an_entry_expires_after_its_ttl():
    clock = FakeClock(1000.0)
    cache = VerifiedSecretCache(ttl=60, clock=clock)
    cache.remember("svc", SECRET, HASH)
    clock.now += 59.9
    assert cache.matches("svc", SECRET, HASH)
    clock.now += 0.2
    assert not cache.matches("svc", SECRET, HASH)


def test_the_oldest_entry_goes_past_the_size_bound():
    cache = VerifiedSecretCache(ttl=60, size=3, clock=FakeClock(1000.0))
    for n in range(4):
        cache.remember(f"svc{n}", SECRET, HASH)
    assert not cache.matches("svc0", SECRET, HASH)
    assert all(cache.matches(f"svc{n}", SECRET, HASH) for n in (1, 2, 3))


def test_each_cache_has_its_own_random_key():
    first, second = VerifiedSecretCache(clock=FakeClock(1000.0)), VerifiedSecretCache(clock=FakeClock(1000.0))
    assert first._digest("svc", SECRET) != second._digest("svc", SECRET)
    assert len(first._digest("svc", SECRET)) == 32


def test_the_cache_holds_no_secret():
    cache = VerifiedSecretCache(clock=FakeClock(1000.0))
    cache.remember("svc", SECRET, HASH)
    kept = [key for key in cache._entries] + [value for entry in cache._entries.values() for value in entry]
    assert all(SECRET.encode() not in (item if isinstance(item, bytes) else str(item).encode()) for item in kept)
