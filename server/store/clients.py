"""Registered clients."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tessera.server.store.login_failures import FailureCount


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    secret_hash: str | None
    is_public: bool
    grant_types: frozenset[str]
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    created_at: datetime
    # When the secret was last set: its version, which a rehash to new argon2 parameters keeps.
    # A grant makes a family only while it is still the one it checked (FamilyStore.create).
    secret_changed_at: datetime | None
    redirect_uris: tuple[str, ...] = ()
    first_party: bool = False

    def as_public_dict(self) -> dict[str, object]:
        """What the CLI shows: never the secret hash."""
        return {
            "client_id": self.client_id,
            "public": self.is_public,
            "grant_types": sorted(self.grant_types),
            "scopes": list(self.scopes),
            "audiences": list(self.audiences),
            "redirect_uris": list(self.redirect_uris),
            "first_party": self.first_party,
            "created_at": self.created_at.isoformat(),
        }


_COLUMNS = (
    "client_id, secret_hash, is_public, grant_types, scopes, audiences, created_at, secret_changed_at,"
    " redirect_uris, first_party"
)
_PREFIXED = ", ".join(f"c.{column.strip()}" for column in _COLUMNS.split(","))


def _client(row: asyncpg.Record) -> Client:
    return Client(
        client_id=row["client_id"],
        secret_hash=row["secret_hash"],
        is_public=row["is_public"],
        grant_types=frozenset(row["grant_types"]),
        scopes=tuple(row["scopes"]),
        audiences=tuple(row["audiences"]),
        created_at=row["created_at"],
        secret_changed_at=row["secret_changed_at"],
        redirect_uris=tuple(row["redirect_uris"]),
        first_party=row["first_party"],
    )


class ClientExists(Exception):
    pass


class ClientStore:
    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    async def get(self, client_id: str) -> Client | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM clients WHERE client_id = $1", client_id)
        return _client(row) if row else None

    async def get_with_failures(self, client_id: str, counter: bytes) -> tuple[Client | None, FailureCount | None]:
        """The client and one failed-authentication counter, in the one round trip a lookup costs anyway.

        This is how a cached client authentication checks its throttle without an extra query.
        """
        row = await self._db.fetchrow(
            f"SELECT {_PREFIXED}, f.failures, extract(epoch FROM f.window_start)::float8 AS window_start"
            " FROM (SELECT 1) AS one"
            " LEFT JOIN clients c ON c.client_id = $1"
            " LEFT JOIN login_failures f ON f.counter = $2",
            client_id,
            counter,
        )
        assert row is not None
        client = _client(row) if row["client_id"] is not None else None
        failures = FailureCount(row["failures"], row["window_start"]) if row["failures"] is not None else None
        return client, failures

    async def create(
        self,
        client_id: str,
        *,
        secret_hash: str | None,
        grant_types: list[str],
        scopes: list[str],
        audiences: list[str],
        redirect_uris: list[str] | None = None,
        first_party: bool = False,
    ) -> Client:
        try:
            row = await self._db.fetchrow(
                f"INSERT INTO clients (client_id, secret_hash, is_public, grant_types, scopes, audiences,"
                f" secret_changed_at, redirect_uris, first_party) VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8)"
                f" RETURNING {_COLUMNS}",
                client_id,
                secret_hash,
                secret_hash is None,
                grant_types,
                scopes,
                audiences,
                redirect_uris or [],
                first_party,
            )
        except asyncpg.UniqueViolationError:
            raise ClientExists(client_id) from None
        assert row is not None
        return _client(row)

    async def list(self) -> list[Client]:
        return [_client(r) for r in await self._db.fetch(f"SELECT {_COLUMNS} FROM clients ORDER BY client_id")]

    async def delete(self, client_id: str) -> bool:
        return await self._db.fetchval("DELETE FROM clients WHERE client_id = $1 RETURNING true", client_id) is True

    async def set_secret_hash(self, client_id: str, secret_hash: str) -> bool:
        """Replace a confidential client's secret; False if there is no such confidential client."""
        updated = await self._db.fetchval(
            "UPDATE clients SET secret_hash = $2, secret_changed_at = now()"
            " WHERE client_id = $1 AND NOT is_public RETURNING true",
            client_id,
            secret_hash,
        )
        return updated is True

    async def rehash_secret(self, client_id: str, old_hash: str, new_hash: str) -> None:
        """Upgrade a hash to new parameters, unless the secret changed in the meantime. The secret
        stays the same, and so does ``secret_changed_at``."""
        await self._db.execute(
            "UPDATE clients SET secret_hash = $3 WHERE client_id = $1 AND secret_hash = $2",
            client_id,
            old_hash,
            new_hash,
        )
