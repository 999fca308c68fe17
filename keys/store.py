"""What the key lifecycle needs from storage. ``server.store.keys`` implements it on PostgreSQL;
nothing in ``keys`` knows which database it is.
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


@dataclass(frozen=True, slots=True)
class NewKey:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_sealed: bytes


class KeyStore(Protocol):
    async def published_keys(self) -> list[StoredKey]:
        """Every key in the key set: next, active and retired (not revoked)."""

    async def create_initial_keys(self, active: NewKey, next_key: NewKey) -> bool:
        """Store a first active and next key unless an active key exists; True if stored."""
