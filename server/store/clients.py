"""Registered clients."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    # How it authenticates (migration 0012): client_secret_basic or client_secret_post (either
    # works for a client with a secret), private_key_jwt (no secret: a JWK Set, inline or by URL),
    # or none (public). For a private_key_jwt client ``secret_changed_at`` moves with its keys.
    token_endpoint_auth_method: str = "client_secret_basic"
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None
    # RFC 8693: the audiences of the subject tokens this client may exchange (token exchange).
    exchange_from: tuple[str, ...] = ()
    # A browser app (migration 0014): the origins its pages run on, and whether its refresh tokens
    # travel in the HttpOnly cookie instead of the JSON (tessera.server.http.browser_cookie).
    allowed_origins: tuple[str, ...] = ()
    refresh_token_cookie: bool = False

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
            "exchange_from": list(self.exchange_from),
            "allowed_origins": list(self.allowed_origins),
            "refresh_token_cookie": self.refresh_token_cookie,
            "created_at": self.created_at.isoformat(),
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            **({"jwks": self.jwks} if self.jwks is not None else {}),
            **({"jwks_uri": self.jwks_uri} if self.jwks_uri is not None else {}),
        }


_COLUMNS = (
    "client_id, secret_hash, is_public, grant_types, scopes, audiences, created_at, secret_changed_at,"
    " redirect_uris, first_party, token_endpoint_auth_method, jwks, jwks_uri"
    ", exchange_from"
    ", allowed_origins, refresh_token_cookie"
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
        token_endpoint_auth_method=row["token_endpoint_auth_method"],
        jwks=json.loads(row["jwks"]) if row["jwks"] is not None else None,
        jwks_uri=row["jwks_uri"],
        exchange_from=tuple(row["exchange_from"]),
        allowed_origins=tuple(row["allowed_origins"]),
        refresh_token_cookie=row["refresh_token_cookie"],
    )


class ClientExists(Exception):
    pass


# Any fixed 64-bit number: whoever applies a clients file (`tessera clients apply`, a start with
# TESSERA_CLIENTS_FILE) holds it for the transaction, so instances starting together apply it in
# turn and the later ones find nothing to change.
CLIENTS_FILE_LOCK_ID = 0x7E55E4A_0002


@dataclass(frozen=True, slots=True)
class ClientChange:
    """Every stored field of a client but its dates: a whole client as a clients file gives it."""

    client_id: str
    secret_hash: str | None
    grant_types: list[str]
    scopes: list[str]
    audiences: list[str]
    redirect_uris: list[str]
    first_party: bool
    token_endpoint_auth_method: str
    jwks: Mapping[str, Any] | None
    jwks_uri: str | None
    exchange_from: list[str]
    allowed_origins: list[str]
    refresh_token_cookie: bool


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
        token_endpoint_auth_method: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        exchange_from: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        refresh_token_cookie: bool = False,
    ) -> Client:
        """``token_endpoint_auth_method`` defaults to ``none`` without a secret, else
        ``client_secret_basic``; a ``private_key_jwt`` client has ``jwks`` or ``jwks_uri`` instead."""
        if token_endpoint_auth_method is None:
            token_endpoint_auth_method = "none" if secret_hash is None else "client_secret_basic"
        try:
            row = await self._db.fetchrow(
                f"INSERT INTO clients (client_id, secret_hash, is_public, grant_types, scopes, audiences,"
                f" secret_changed_at, redirect_uris, first_party, token_endpoint_auth_method, jwks, jwks_uri,"
                f" exchange_from, allowed_origins, refresh_token_cookie)"
                f" VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8, $9, $10::jsonb, $11, $12, $13, $14)"
                f" RETURNING {_COLUMNS}",
                client_id,
                secret_hash,
                token_endpoint_auth_method == "none",
                grant_types,
                scopes,
                audiences,
                redirect_uris or [],
                first_party,
                token_endpoint_auth_method,
                json.dumps(jwks) if jwks is not None else None,
                jwks_uri,
                exchange_from or [],
                allowed_origins or [],
                refresh_token_cookie,
            )
        except asyncpg.UniqueViolationError:
            raise ClientExists(client_id) from None
        assert row is not None
        return _client(row)

    async def allowed_origins(self) -> dict[str, bool]:
        """Every origin registered with a client, and whether a client with the refresh-token
        cookie has it (its answers there may then carry credentials)."""
        rows = await self._db.fetch(
            "SELECT origin, bool_or(refresh_token_cookie) AS cookie"
            " FROM clients, unnest(allowed_origins) AS origin GROUP BY origin"
        )
        return {row["origin"]: row["cookie"] for row in rows}

    async def list(self, *, for_update: bool = False) -> list[Client]:
        """Every client; ``for_update`` (in a transaction) locks the rows until it ends."""
        lock = " FOR NO KEY UPDATE" if for_update else ""
        return [_client(r) for r in await self._db.fetch(f"SELECT {_COLUMNS} FROM clients ORDER BY client_id{lock}")]

    async def lock_for_apply(self) -> None:
        """Wait for any other apply of a clients file to commit; held until this transaction ends."""
        await self._db.execute("SELECT pg_advisory_xact_lock($1)", CLIENTS_FILE_LOCK_ID)

    async def create_from(self, change: ClientChange) -> Client:
        return await self.create(
            change.client_id, secret_hash=change.secret_hash, grant_types=change.grant_types, scopes=change.scopes,
            audiences=change.audiences, redirect_uris=change.redirect_uris, first_party=change.first_party,
            token_endpoint_auth_method=change.token_endpoint_auth_method, jwks=change.jwks, jwks_uri=change.jwks_uri,
            exchange_from=change.exchange_from, allowed_origins=change.allowed_origins,
            refresh_token_cookie=change.refresh_token_cookie,
        )

    async def update_from(self, change: ClientChange, *, new_credentials: bool) -> bool:
        """Replace every field of an existing client at once (the table's checks see the result);
        False if there is no such client. ``new_credentials`` moves ``secret_changed_at``, so a
        sign-in that authenticated the client as it was makes no family (FamilyStore.create)."""
        updated = await self._db.fetchval(
            "UPDATE clients SET secret_hash = $2, is_public = $3, grant_types = $4, scopes = $5, audiences = $6,"
            " redirect_uris = $7, first_party = $8, token_endpoint_auth_method = $9, jwks = $10::jsonb,"
            " jwks_uri = $11, exchange_from = $12, allowed_origins = $13, refresh_token_cookie = $14,"
            " secret_changed_at = CASE WHEN $15 THEN now() ELSE secret_changed_at END"
            " WHERE client_id = $1 RETURNING true",
            change.client_id,
            change.secret_hash,
            change.token_endpoint_auth_method == "none",
            change.grant_types,
            change.scopes,
            change.audiences,
            change.redirect_uris,
            change.first_party,
            change.token_endpoint_auth_method,
            json.dumps(change.jwks) if change.jwks is not None else None,
            change.jwks_uri,
            change.exchange_from,
            change.allowed_origins,
            change.refresh_token_cookie,
            new_credentials,
        )
        return updated is True

    async def delete(self, client_id: str) -> bool:
        return await self._db.fetchval("DELETE FROM clients WHERE client_id = $1 RETURNING true", client_id) is True

    async def set_secret_hash(self, client_id: str, secret_hash: str) -> bool:
        """Replace a confidential client's secret; False if there is no such confidential client."""
        updated = await self._db.fetchval(
            "UPDATE clients SET secret_hash = $2, secret_changed_at = now()"
            " WHERE client_id = $1 AND secret_hash IS NOT NULL RETURNING true",
            client_id,
            secret_hash,
        )
        return updated is True

    async def set_keys(self, client_id: str, *, jwks: Mapping[str, Any] | None, jwks_uri: str | None) -> bool:
        """Replace a private_key_jwt client's public keys (one of the two); False if there is no such
        client. Every instance uses the new keys from the next request on (the change notification,
        migration 0006), and a family being made with the old ones is not (``secret_changed_at``)."""
        updated = await self._db.fetchval(
            "UPDATE clients SET jwks = $2::jsonb, jwks_uri = $3, secret_changed_at = now()"
            " WHERE client_id = $1 AND token_endpoint_auth_method = 'private_key_jwt' RETURNING true",
            client_id,
            json.dumps(jwks) if jwks is not None else None,
            jwks_uri,
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
