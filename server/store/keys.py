"""Signing keys on PostgreSQL (the ``tessera.keys.store.KeyStore`` interface).

Every change runs in one transaction under one advisory lock (so changes from any number of
instances and CLIs queue up), checks that the keys it starts from are still stored as the caller
saw them (compare-and-set: of concurrent attempts exactly one applies), and ends with a NOTIFY on
``KEYS_CHANNEL`` that every instance listens to, delivered at commit.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import asyncpg

from tessera.keys import kek as kek_box
from tessera.keys.store import NewKey, StoredKey

_COLUMNS = (
    "kid, alg, state, public_jwk, private_sealed, created_at, activated_at, retired_at, revoked_at, expires_at,"
    " published_at, publish_seconds"
)
# Any fixed 64-bit number, distinct from the migration lock.
KEYS_LOCK_ID = 0x7E55E4A_0002
KEYS_CHANNEL = "tessera_keys"
# A revoked key stays listed (`tessera keys list`) this long for the record, then gc drops it.
REVOKED_KEY_RETENTION = timedelta(days=30)

Reseal = Callable[[bytes, bytes], bytes | None]


class RewrapError(Exception):
    """A sealed row opens under neither key-encryption key; nothing was changed."""


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
        published_at=row["published_at"],
        publish_seconds=row["publish_seconds"],
    )


async def _insert(
    connection: asyncpg.Connection, key: NewKey, state: str, now: datetime, publish_seconds: int
) -> None:
    await connection.execute(
        "INSERT INTO signing_keys (kid, alg, state, public_jwk, private_sealed, created_at, published_at,"
        " publish_seconds, activated_at) VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $6, $7, CASE WHEN $3 = 'active' THEN $6 END)",
        key.kid,
        key.alg,
        state,
        json.dumps(key.public_jwk),
        key.private_sealed,
        now,
        publish_seconds,
    )


async def _notify(connection: asyncpg.Connection, what: str) -> None:
    """Tell every instance to reload its keyring (delivered when the transaction commits)."""
    await connection.execute("SELECT pg_notify($1, $2)", KEYS_CHANNEL, what)


async def _unchanged(connection: asyncpg.Connection, *keys: StoredKey) -> bool:
    """Are ``keys`` still stored in the state and with the sealed blob the caller saw? (A rewrap
    re-seals, so a key made under the old KEK is not stored after it.) Locks their rows."""
    rows = await connection.fetch(
        "SELECT kid, state, private_sealed FROM signing_keys WHERE kid = ANY($1::text[]) FOR UPDATE",
        [k.kid for k in keys],
    )
    stored = {r["kid"]: (r["state"], bytes(r["private_sealed"])) for r in rows}
    return all(stored.get(k.kid) == (k.state, k.private_sealed) for k in keys)


class PgKeyStore:
    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def _change(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._db.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", KEYS_LOCK_ID)
            yield connection

    async def published_keys(self, now: datetime) -> list[StoredKey]:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM signing_keys WHERE state IN ('next', 'active')"
            " OR (state = 'retired' AND expires_at > $1) ORDER BY kid",
            now,
        )
        return [_key(r) for r in rows]

    async def all_keys(self) -> list[StoredKey]:
        rows = await self._db.fetch(f"SELECT {_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
        return [_key(r) for r in rows]

    async def key(self, kid: str) -> StoredKey | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM signing_keys WHERE kid = $1", kid)
        return _key(row) if row else None

    async def create_initial_keys(self, active: NewKey, next_key: NewKey, now: datetime, publish_seconds: int) -> bool:
        async with self._change() as connection:
            if await connection.fetchval("SELECT true FROM signing_keys WHERE state = 'active'"):
                return False
            await _insert(connection, active, "active", now, publish_seconds)
            await _insert(connection, next_key, "next", now, publish_seconds)
            await _notify(connection, "initial")
            return True

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
        async with self._change() as connection:
            if not await _unchanged(connection, active, next_key):
                return False
            # Retire first: the unique index allows one active key at any moment; the deferred
            # trigger checks at commit that there is one.
            await connection.execute(
                "UPDATE signing_keys SET state = CASE WHEN $2::boolean THEN 'revoked' ELSE 'retired' END,"
                " retired_at = $3::timestamptz, revoked_at = CASE WHEN $2 THEN $3 END,"
                " expires_at = CASE WHEN $2 THEN NULL ELSE $4::timestamptz END"
                " WHERE kid = $1",
                active.kid,
                revoke_old,
                now,
                retired_expires_at,
            )
            await connection.execute(
                "UPDATE signing_keys SET state = 'active', activated_at = $2 WHERE kid = $1", next_key.kid, now
            )
            await _insert(connection, new_next, "next", now, publish_seconds)
            await _notify(connection, "rotate")
            return True

    async def replace_next(
        self, *, next_key: StoredKey, active: StoredKey, new_next: NewKey, now: datetime, publish_seconds: int
    ) -> bool:
        async with self._change() as connection:
            if not await _unchanged(connection, active, next_key):
                return False
            await connection.execute("DELETE FROM signing_keys WHERE kid = $1", next_key.kid)
            await _insert(connection, new_next, "next", now, publish_seconds)
            await _notify(connection, "replace_next")
            return True

    async def revoke(
        self, key: StoredKey, *, active: StoredKey, now: datetime, new_next: NewKey | None, publish_seconds: int
    ) -> bool:
        async with self._change() as connection:
            if not await _unchanged(connection, active, key):
                return False
            await connection.execute(
                "UPDATE signing_keys SET state = 'revoked', revoked_at = $2 WHERE kid = $1", key.kid, now
            )
            if new_next is not None:
                await _insert(connection, new_next, "next", now, publish_seconds)
            await _notify(connection, "revoke")
            return True

    async def require_publication(self, kid: str, seconds: int) -> None:
        await self._db.execute(
            "UPDATE signing_keys SET publish_seconds = $2 WHERE kid = $1 AND publish_seconds < $2", kid, seconds
        )

    async def delete_expired_keys(self, now: datetime) -> int:
        """For ``tessera gc``: drop retired keys past their expires_at (already out of the JWKS)
        and revoked keys older than ``REVOKED_KEY_RETENTION``. Returns how many were dropped."""
        async with self._change() as connection:
            deleted = await connection.fetch(
                "DELETE FROM signing_keys WHERE (state = 'retired' AND expires_at <= $1)"
                " OR (state = 'revoked' AND revoked_at <= $2) RETURNING kid",
                now,
                now - REVOKED_KEY_RETENTION,
            )
            if deleted:
                await _notify(connection, "gc")
            return len(deleted)

    async def rewrap(self, reseal: Reseal) -> tuple[int, int]:
        """Re-seal every private key and every server secret with ``reseal(blob, associated_data)``
        (None: already under the new KEK), in one transaction. Returns (keys, secrets) re-sealed."""
        async with self._change() as connection:
            keys = await _reseal_rows(connection, "signing_keys", "kid", "private_sealed", reseal)
            secrets = await _reseal_rows(connection, "server_secrets", "name", "sealed", reseal)
            await _notify(connection, "rewrap")
            return keys, secrets


async def _reseal_rows(connection: asyncpg.Connection, table: str, name: str, column: str, reseal: Reseal) -> int:
    """Re-seal ``table.column`` row by row; the row's ``name`` is the associated data."""
    changed = 0
    for row in await connection.fetch(f"SELECT {name}, {column} FROM {table} ORDER BY {name} FOR UPDATE"):
        try:
            blob = reseal(bytes(row[column]), row[name].encode())
        except kek_box.UnsealError:
            raise RewrapError(f"{table} {row[name]} opens under neither key-encryption key") from None
        if blob is not None:
            await connection.execute(f"UPDATE {table} SET {column} = $2 WHERE {name} = $1", row[name], blob)
            changed += 1
    return changed
