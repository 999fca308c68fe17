"""The signing-key lifecycle: the rules, over the ``KeyStore`` interface, with an injectable clock.

    next ──(published long enough; rotation)──> active ──(rotation)──> retired ──(expires_at)──> gone
      └───────────────(revoke)──────────────────> revoked <──(revoke)──────┘

- A next key may become active only once it has been published for ``publish_seconds``: the
  JWKS max-age plus the reload interval, so every instance has served it and every JWKS cached
  before that has expired. A resource server that honours Cache-Control never meets an unknown kid.
- A rotation is due ``rotation_interval`` after the active key was activated, and never before
  the next key may activate, whatever the settings.
- A retired key stays published for the access-token lifetime plus the reload interval (an
  instance may sign with it until it hears of the rotation) plus ``RETIRED_KEY_LEEWAY``.
- Revoking the active key rotates first, at once (force), and revokes it instead of retiring it.

Every change is a compare-and-set on the store: of many processes attempting it, one succeeds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tessera.keys import kek as kek_box
from tessera.keys import material
from tessera.keys.store import KeyStore, NewKey, StoredKey

# Verifiers accept a token a little after its exp (clock skew): PyJWT/joserfc take a leeway, .NET's
# JwtBearer defaults to a 5-minute ClockSkew. The retired key must outlive that too.
RETIRED_KEY_LEEWAY = 300


class LifecycleError(Exception):
    """A lifecycle step was refused; the message is one line for an operator."""


class NotPublishedLongEnough(LifecycleError):
    def __init__(self, kid: str, published_for: float, required: int) -> None:
        self.kid, self.published_for, self.required = kid, published_for, required
        self.remaining = max(0, math.ceil(required - max(0.0, published_for)))
        super().__init__(
            f"the next key {kid} has been published for {int(published_for)} s of the {required} s it needs "
            f"(JWKS max-age plus reload interval); it may become active in {self.remaining} s. "
            "Use --force to rotate now: resource servers holding an older JWKS will meet an unknown kid "
            "until they fetch it again"
        )


class KeySetChanged(LifecycleError):
    def __init__(self) -> None:
        super().__init__("the key set changed while this ran (another rotation or revocation won); nothing was done")


class NoSuchKey(LifecycleError):
    def __init__(self, kid: str) -> None:
        super().__init__(f"no signing key {kid!r}")


class NoKeys(LifecycleError):
    def __init__(self) -> None:
        super().__init__("no active and next key yet: the first `tessera serve` makes them")


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings the lifecycle follows (each instance's own; the stricter one wins)."""

    alg: str
    rotation_interval: float
    jwks_max_age: int
    reload_interval: float
    access_token_ttl: int

    @property
    def publish_seconds(self) -> int:
        return math.ceil(self.jwks_max_age + self.reload_interval)

    @property
    def retire_seconds(self) -> float:
        return self.access_token_ttl + self.reload_interval + RETIRED_KEY_LEEWAY

    def required_publication(self, key: StoredKey) -> int:
        """Seconds ``key`` must be published before it signs: the longest any instance declared."""
        return max(key.publish_seconds, self.publish_seconds)

    def activation_time(self, next_key: StoredKey) -> datetime:
        """When ``next_key`` may start signing."""
        published = next_key.published_at or next_key.created_at
        return published + timedelta(seconds=self.required_publication(next_key))

    def rotation_time(self, active: StoredKey, next_key: StoredKey) -> datetime:
        """When the scheduler rotates: the interval after activation, not before the next key is ready."""
        activated = active.activated_at or active.created_at
        return max(activated + timedelta(seconds=self.rotation_interval), self.activation_time(next_key))


@dataclass(frozen=True, slots=True)
class KeyRotation:
    activated: StoredKey  # the former next key, now signing
    retired: StoredKey  # the former active key (revoked instead when ``revoked``)
    next_key: NewKey  # the new next key
    retired_expires_at: datetime
    revoked: bool
    early: bool  # the activated key had been published for less than it needs (forced)


@dataclass(frozen=True, slots=True)
class KeyRevocation:
    kid: str
    previous_state: str
    rotation: KeyRotation | None = None  # when the active key was revoked
    next_key: NewKey | None = None  # when the next key was revoked and replaced


def key_roles(keys: Sequence[StoredKey]) -> tuple[StoredKey, StoredKey]:
    """The active and the next key of a key set."""
    active = [k for k in keys if k.state == "active"]
    upcoming = [k for k in keys if k.state == "next"]
    if not active or not upcoming:
        raise NoKeys()
    return active[0], upcoming[0]


def at(epoch: float) -> datetime:
    """A clock reading as the store keeps it (microseconds), so that comparisons with stored times are exact."""
    return datetime.fromtimestamp(epoch, UTC)


class KeyLifecycle:
    def __init__(
        self, store: KeyStore, keks: kek_box.KekRing, policy: Policy, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._keks = keks
        self.policy = policy
        self._clock = clock

    # --- the steps --------------------------------------------------------------------------------

    async def prepare(self) -> tuple[str, str] | None:
        """At start: make the first active and next key if there are none; if the next key's
        algorithm is not TESSERA_SIGNING_ALG, replace it (it never signed) so that the change takes
        effect at the next rotation. Returns (old, new) kid when the next key was replaced."""
        now = self._now()
        keys = await self._store.published_keys(now)
        if not any(k.state == "active" for k in keys):
            first, second = await asyncio.gather(self._new_key(None), self._new_key(None))
            await self._store.create_initial_keys(first, second, now, self.policy.publish_seconds)
            keys = await self._store.published_keys(now)
        active, next_key = key_roles(keys)
        if next_key.alg == self.policy.alg:
            return None
        new_next = await self._new_key(active)
        replaced = await self._store.replace_next(
            next_key=next_key, active=active, new_next=new_next, now=now, publish_seconds=self.policy.publish_seconds
        )
        return (next_key.kid, new_next.kid) if replaced else None

    async def rotate(self, *, force: bool = False) -> KeyRotation:
        """``tessera keys rotate``: refused while the next key has not been published long enough."""
        now = self._now()
        active, next_key = key_roles(await self._store.published_keys(now))
        if not force and now < self.policy.activation_time(next_key):
            published_for = (now - (next_key.published_at or next_key.created_at)).total_seconds()
            raise NotPublishedLongEnough(next_key.kid, published_for, self.policy.required_publication(next_key))
        return await self._rotate(active, next_key, revoke_old=False)

    async def rotate_if_due(self) -> KeyRotation | None:
        """The scheduler's step: rotate when due; None when not due or another process did it."""
        now = self._now()
        active, next_key = key_roles(await self._store.published_keys(now))
        if now < self.policy.rotation_time(active, next_key):
            return None
        try:
            return await self._rotate(active, next_key, revoke_old=False)
        except KeySetChanged:
            return None

    async def revoke(self, kid: str) -> KeyRevocation:
        """``tessera keys revoke KID``: out of the key set at once; the active key rotates first."""
        key = await self._store.key(kid)
        if key is None:
            raise NoSuchKey(kid)
        if key.state == "revoked":
            return KeyRevocation(kid, "revoked")
        now = self._now()
        active, next_key = key_roles(await self._store.published_keys(now))
        if key.state == "active":
            return KeyRevocation(kid, "active", rotation=await self._rotate(active, next_key, revoke_old=True))
        new_next = await self._new_key(active) if key.state == "next" else None
        revoked = await self._store.revoke(
            key, active=active, now=now, new_next=new_next, publish_seconds=self.policy.publish_seconds
        )
        if not revoked:
            raise KeySetChanged()
        return KeyRevocation(kid, key.state, next_key=new_next)

    async def declare_publication(self, next_key: StoredKey) -> bool:
        """An instance serving ``next_key`` raises its required publication to this instance's
        max-age plus reload interval, so a rotation elsewhere waits for the slowest cache."""
        if next_key.publish_seconds >= self.policy.publish_seconds:
            return False
        await self._store.require_publication(next_key.kid, self.policy.publish_seconds)
        return True

    # --- helpers ----------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return at(self._clock())

    async def _rotate(self, active: StoredKey, next_key: StoredKey, *, revoke_old: bool) -> KeyRotation:
        new_next = await self._new_key(active)
        now = self._now()
        expires = now + timedelta(seconds=self.policy.retire_seconds)
        rotated = await self._store.rotate(
            active=active,
            next_key=next_key,
            new_next=new_next,
            now=now,
            publish_seconds=self.policy.publish_seconds,
            retired_expires_at=expires,
            revoke_old=revoke_old,
        )
        if not rotated:
            raise KeySetChanged()
        return KeyRotation(next_key, active, new_next, expires, revoke_old, now < self.policy.activation_time(next_key))

    async def _new_key(self, seal_like: StoredKey | None) -> NewKey:
        """A new key of the configured algorithm, generated off the event loop (RSA takes a second).

        It is sealed under the KEK that opens ``seal_like`` (the active key), so during a KEK change
        new keys follow the rewrap: before it under the old KEK, after it under the new one. The
        store refuses the change if the active key was re-sealed in the meantime.
        """
        made = await asyncio.get_running_loop().run_in_executor(None, material.generate, self.policy.alg)
        kek = self._keks.current
        if seal_like is not None:
            kek = self._keks.open(seal_like.private_sealed, seal_like.kid.encode())[1]
        sealed = kek_box.seal(kek, made.private_jwk_json, made.kid.encode())
        return NewKey(made.kid, made.alg, made.public_jwk, sealed)
