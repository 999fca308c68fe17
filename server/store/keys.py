"""Signing keys on PostgreSQL (the ``keys.store.KeyStore`` interface)."""

from __future__ import annotations

import json

import asyncpg

from keys.store import NewKey, StoredKey

_COLUMNS = (
    "kid, alg, state, public_jwk, private_sealed, created_at, activated_at, retired_at, revoked_at, expires_at"
)
# Any fixed 64-bit number, distinct from the migration lock.
KEYS_LOCK_ID = 0x7E55E4A_0002


def _key(row: asyncpg.Record) -> StoredKey:
    return StoredKey(
        kid=row["kid"],
        alg=row["alg"],
        state=row["state"],
        public_jwk=json.loads(row["public_jwk"]),
        private_sealed=bytes(row["private_sealed"]),
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        retired_at=row["retired_at"],
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
    )


class PgKeyStore:
    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def published_keys(self) -> list[StoredKey]:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM signing_keys WHERE state IN ('next', 'active', 'retired') ORDER BY kid"
        )
        return [_key(r) for r in rows]

    async def all_keys(self) -> list[StoredKey]:
        rows = await self._db.fetch(f"SELECT {_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
        return [_key(r) for r in rows]

    async def create_initial_keys(self, active: NewKey, next_key: NewKey) -> bool:
        async with self._db.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", KEYS_LOCK_ID)
            if await connection.fetchval("SELECT true FROM signing_keys WHERE state = 'active'"):
                return False
            for key, state in ((active, "active"), (next_key, "next")):
                await connection.execute(
                    "INSERT INTO signing_keys (kid, alg, state, public_jwk, private_sealed, activated_at)"
                    " VALUES ($1, $2, $3, $4, $5, CASE WHEN $3 = 'active' THEN now() END)",
                    key.kid,
                    key.alg,
                    state,
                    json.dumps(key.public_jwk),
                    key.private_sealed,
                )
            return True
