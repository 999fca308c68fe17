"""What the key lifecycle needs from storage. ``tessera.server.store.keys`` implements it on PostgreSQL;
nothing in ``keys`` knows which database it is.

Every change is conditional on the keys it starts from (compare-and-set), so that any number of
processes may attempt it at once and exactly one succeeds; the others get False and look again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class StoredKey:
    kid: str
    alg: str
    state: str  # next | active | retired | revoked
    public_jwk: dict[str, Any]
    private_sealed: bytes
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None
    published_at: datetime | None = None
    # How long the key must have been published before it may sign (the longest any instance needs).
    publish_seconds: int = 0


@dataclass(frozen=True, slots=True)
class NewKey:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_sealed: bytes


class KeyStore(Protocol):
    async def published_keys(self, now: datetime) -> list[StoredKey]:
        """The key set at ``now``: next, active, and retired keys not yet expired (never revoked)."""

    async def key(self, kid: str) -> StoredKey | None:
        """The key called ``kid`` in whatever state, or None."""

    async def create_initial_keys(self, active: NewKey, next_key: NewKey, now: datetime, publish_seconds: int) -> bool:
        """Store a first active and next key unless an active key exists; True if stored."""

    async def rotate(
        self,
        *,
        active: StoredKey,
        next_key: StoredKey,
        new_next: NewKey,
        now: datetime,
        publish_seconds: int,
        retired_expires_at: datetime,
        revoke_old: bool = False,
    ) -> bool:
        """In one step: ``next_key`` becomes active, ``active`` retires until ``retired_expires_at``
        (or is revoked), ``new_next`` is published. Only if ``active`` and ``next_key`` are still
        stored exactly as given (state and sealed blob); otherwise nothing changes and it is False."""

    async def replace_next(
        self, *, next_key: StoredKey, active: StoredKey, new_next: NewKey, now: datetime, publish_seconds: int
    ) -> bool:
        """Drop ``next_key`` (it never signed) for ``new_next``, if both keys are still as given."""

    async def revoke(
        self, key: StoredKey, *, active: StoredKey, now: datetime, new_next: NewKey | None, publish_seconds: int
    ) -> bool:
        """Revoke a next or retired ``key``, if it and ``active`` are still as given; a revoked next
        key is replaced by ``new_next``. (The active key is revoked by ``rotate(revoke_old=True)``.)"""

    async def require_publication(self, kid: str, seconds: int) -> None:
        """Raise the key's ``publish_seconds`` to at least ``seconds``."""
