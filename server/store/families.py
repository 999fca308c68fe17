"""Refresh-token families on PostgreSQL: one row per login, one UPDATE per rotation.

Every row a refresh touches is found by ``family_id``; the rotation itself is a single conditional
UPDATE, so of many concurrent requests with one token exactly one matches (READ COMMITTED re-checks
the WHERE clause against the winner's committed row). Rotations of different families in flight
together share one such statement and its commit (``tessera.server.store.rotation_batch``).

Which token may rotate is decided in one place, the SQL functions of migration 0009: the rotation
uses them, and so does ``get``, which says of a family whether it is live and whether a request's
scope and audience fit it, so a refusal is explained by the same rule that made it.

Every write a request makes here (a family made at login, a rotation, a revocation) carries the
request's deadline (``tessera.server.store.db.statement_deadlines``, migration 0010): it refuses to
commit once the server may have answered the request, so an error answer never turns into a
change afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tessera.server.store.db import (
    fetchval_before_deadline,
    fetchval_committed_locally,
    request_gives_up,
)
from tessera.server.store.rotation_batch import PendingRotation, rotation_batcher, scope_parameter

_COLUMNS = (
    "family_id, client_id, user_id, scopes, audience, auth_time, created_at, expires_at, generation,"
    " current_hash, last_rotated_at, idle_expires_at, revoked_at, revoked_reason, unanswered_generation"
)


@dataclass(frozen=True, slots=True)
class Family:
    family_id: uuid.UUID
    client_id: str
    user_id: uuid.UUID
    scopes: tuple[str, ...]
    audience: str
    auth_time: datetime
    created_at: datetime
    expires_at: datetime
    generation: int
    current_hash: bytes
    last_rotated_at: datetime
    idle_expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    # The generation of a rotation that committed while its request was answered with an error
    # (migration 0016): its predecessor's retry is answered with it. None: no such rotation.
    unanswered_generation: int | None = None
    # As the rotation rule (migration 0009) judged it at the time ``get`` was asked about:
    live: bool = True  # not revoked, inside its idle and absolute lifetimes
    scope_fits: bool = True  # the scope asked for is within the family's
    audience_fits: bool = True  # the audience asked for is the family's

    @property
    def token_expires_at(self) -> datetime:
        return min(self.expires_at, self.idle_expires_at)


def _family(row: asyncpg.Record) -> Family:
    return Family(**{**dict(row), "scopes": tuple(row["scopes"]), "current_hash": bytes(row["current_hash"])})


# A login's family, made only if, when the row is written, the user is still enabled and still has
# the password that was checked, and the client still exists with the secret that was checked: a
# disable, a new password or secret, or a deletion that commits while the sign-in is in flight
# stops it (CONTRACT.md, "Robustness", accounts). A credential's version is when it was last set
# (``password_changed_at``, ``secret_changed_at``): a rehash of the same password or secret to new
# argon2 parameters keeps it. FOR SHARE makes such a change and this statement wait for each other:
# the change either commits first and is seen here, or comes after this family exists, and a
# disable or password change then revokes it with the user's other families.
_CREATE_SQL = (
    "WITH created AS ("
    " INSERT INTO refresh_families (family_id, client_id, user_id, scopes, audience, auth_time, created_at,"
    "  expires_at, generation, current_hash, last_rotated_at, idle_expires_at)"
    " SELECT $1, c.client_id, u.user_id, $4, $5, $6, $7, $8, 0, $9, $7, $10"
    "  FROM users AS u, clients AS c"
    "  WHERE u.user_id = $3 AND NOT u.disabled AND u.password_changed_at = $11"
    "   AND c.client_id = $2 AND c.secret_changed_at IS NOT DISTINCT FROM $12"
    "  FOR SHARE OF u, c"
    " RETURNING 1)"
    " SELECT tessera_before_deadline($13) FROM created"
)

_REVOKE_SQL = (
    "WITH revoked AS ("
    " UPDATE refresh_families SET revoked_at = $3, revoked_reason = $2"
    "  WHERE family_id = $1 AND revoked_at IS NULL RETURNING 1)"
    " SELECT tessera_before_deadline($4) FROM revoked"
)

# Revoke the family and record the security event, in one statement (so both or neither).
_REVOKE_FOR_THEFT_SQL = (
    "WITH revoked AS ("
    "  UPDATE refresh_families SET revoked_at = $3, revoked_reason = $2"
    "   WHERE family_id = $1 AND revoked_at IS NULL RETURNING family_id, client_id, user_id),"
    " recorded AS ("
    "  INSERT INTO security_events (kind, family_id, client_id, presented_by, user_id, remote, occurred_at)"
    "  SELECT $2, family_id, client_id, $4, user_id, $5, $3 FROM revoked RETURNING 1)"
    " SELECT tessera_before_deadline($6) FROM recorded"
)

# A family as the rotation rule sees it at $2, for a request asking scope $3 and audience $4.
_GET_SQL = (
    f"SELECT {_COLUMNS},"
    " tessera_family_live(revoked_at, expires_at, idle_expires_at, $2) AS live,"
    " tessera_scope_within(scopes, $3) AS scope_fits, tessera_audience_kept(audience, $4) AS audience_fits"
    " FROM refresh_families WHERE family_id = $1"
)

# Pages of the table swept by one garbage-collection statement (8 KiB each): bounded work per
# statement, and a sequential TID range scan rather than an index on a column that rotations change.
GC_PAGES_PER_STATEMENT = 1024
GC_EVENTS_PER_STATEMENT = 5000


class FamilyStore:
    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db
        # On a pool, concurrent rotations share statements and commits (group commit); on a single
        # connection, in a caller's transaction, each rotation runs alone.
        self._rotations = rotation_batcher(db)

    async def create(
        self,
        *,
        family_id: uuid.UUID,
        client_id: str,
        user_id: uuid.UUID,
        scopes: Sequence[str],
        audience: str,
        auth_time: datetime,
        now: datetime,
        expires_at: datetime,
        idle_expires_at: datetime,
        current_hash: bytes,
        password_changed_at: datetime,
        secret_changed_at: datetime | None,
    ) -> bool:
        """Start a family at generation 0 for a sign-in that checked the user's password as last set
        at ``password_changed_at`` and the client's secret as last set at ``secret_changed_at``.
        False (nothing written) if, by now, the user is disabled, deleted or has another password,
        or the client is deleted or has another secret."""
        created = await self._write(
            _CREATE_SQL,
            family_id,
            client_id,
            user_id,
            list(scopes),
            audience,
            auth_time,
            now,
            expires_at,
            current_hash,
            idle_expires_at,
            password_changed_at,
            secret_changed_at,
        )
        return created is True

    async def mark_unanswered(self, family_id: uuid.UUID, generation: int, current_hash: bytes) -> bool:
        """Say that the rotation to ``generation`` (its token hashing to ``current_hash``) was not
        answered, if it committed; True if it did (``fetchval_committed_locally``)."""
        marked = await fetchval_committed_locally(
            self._db,
            "UPDATE refresh_families SET unanswered_generation = $2"
            " WHERE family_id = $1 AND generation = $2 AND current_hash = $3 RETURNING true",
            family_id, generation, current_hash,
        )
        return bool(marked)

    async def rotate(
        self,
        *,
        family_id: uuid.UUID,
        generation: int,
        current_hash: bytes,
        client_id: str,
        successor_hash: bytes,
        now: datetime,
        idle_expires_at: datetime,
        scopes: Sequence[str] | None,
        audience: str | None,
    ) -> Family | None:
        """The rotation, or None if the presented token may not be rotated (say why with ``get``)."""
        rotation = PendingRotation(
            family_id, generation, current_hash, client_id, successor_hash, now, idle_expires_at,
            scope_parameter(scopes), audience, request_gives_up(),
        )
        row = await self._rotations.submit(rotation, rotation.gives_up)
        if row is None:
            return None
        # Only what the rotation did not set itself comes back: decoding is a good part of its cost.
        return Family(
            family_id=family_id,
            client_id=client_id,
            user_id=row["user_id"],
            scopes=tuple(row["scopes"]),
            audience=row["audience"],
            auth_time=row["auth_time"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            generation=generation + 1,
            current_hash=successor_hash,
            last_rotated_at=now,
            idle_expires_at=idle_expires_at,
            revoked_at=None,
            revoked_reason=None,
        )

    async def get(
        self, family_id: uuid.UUID, now: datetime, *, scopes: Sequence[str] | None = None, audience: str | None = None
    ) -> Family | None:
        """The family, with the rotation rule's verdicts at ``now`` (and on ``scopes`` and ``audience``
        when a request asks for them)."""
        row = await self._db.fetchrow(_GET_SQL, family_id, now, scope_parameter(scopes), audience)
        return _family(row) if row else None

    async def is_revoked(self, family_id: uuid.UUID) -> bool:
        """True if the family was revoked or no longer exists (its user or client was deleted)."""
        revoked = await self._db.fetchval(
            "SELECT revoked_at IS NOT NULL FROM refresh_families WHERE family_id = $1", family_id
        )
        return revoked is None or bool(revoked)

    async def revoke(self, family_id: uuid.UUID, reason: str, now: datetime) -> bool:
        """Revoke one family (all its tokens, the newest included); False if it already was."""
        return await self._write(_REVOKE_SQL, family_id, reason, now) is True

    async def revoke_for_theft(
        self, family_id: uuid.UUID, *, kind: str, presented_by: str, remote: str | None, now: datetime
    ) -> bool:
        """Revoke the family and record the security event, in one statement (so both or neither)."""
        return await self._write(_REVOKE_FOR_THEFT_SQL, family_id, kind, now, presented_by, remote) is True

    async def _write(self, sql: str, *args: object) -> object:
        return await fetchval_before_deadline(self._db, sql, *args)

    async def revoke_user_families(self, user_id: uuid.UUID, reason: str) -> int:
        """Revoke every live family of a user (run it in the transaction that changes the user)."""
        return await self._revoke_where("user_id", user_id, reason)

    async def revoke_client_families(self, client_id: str, reason: str) -> int:
        return await self._revoke_where("client_id", client_id, reason)

    async def revoke_client_families_beyond(
        self, client_id: str, scopes: Sequence[str], audiences: Sequence[str], reason: str
    ) -> int:
        """Revoke the client's live families that hold a scope outside ``scopes`` or an audience
        outside ``audiences`` (a client narrowed by a clients file, in the transaction that narrows it)."""
        count = await self._db.fetchval(
            "WITH revoked AS (UPDATE refresh_families SET revoked_at = now(), revoked_reason = $4"
            " WHERE client_id = $1 AND revoked_at IS NULL AND (NOT scopes <@ $2::text[] OR audience <> ALL ($3::text[]))"
            " RETURNING 1) SELECT count(*) FROM revoked",
            client_id,
            list(scopes),
            list(audiences),
            reason,
        )
        return int(count)

    async def _revoke_where(self, column: str, value: object, reason: str) -> int:
        assert column in ("user_id", "client_id")
        count = await self._db.fetchval(
            f"WITH revoked AS (UPDATE refresh_families SET revoked_at = now(), revoked_reason = $2"
            f" WHERE {column} = $1 AND revoked_at IS NULL RETURNING 1) SELECT count(*) FROM revoked",
            value,
            reason,
        )
        return int(count)

    async def security_events(self, family_id: uuid.UUID) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._db.fetch(
            "SELECT kind, family_id, client_id, presented_by, user_id, remote, occurred_at FROM security_events"
            " WHERE family_id = $1 ORDER BY event_id",
            family_id,
        )
        return rows

    # --- garbage collection ----------------------------------------------------------------------

    async def table_pages(self) -> int:
        pages = await self._db.fetchval(
            "SELECT pg_relation_size('refresh_families') / current_setting('block_size')::bigint"
        )
        return int(pages)

    async def delete_dead_families(self, first_page: int, pages: int, cutoff: datetime) -> int:
        """Delete, among the rows on ``pages`` heap pages from ``first_page``, the families revoked
        or expired (idle or absolute) before ``cutoff``."""
        count = await self._db.fetchval(
            "WITH gone AS (DELETE FROM refresh_families"
            "  WHERE ctid >= format('(%s,0)', $1::bigint)::tid AND ctid < format('(%s,0)', $2::bigint)::tid"
            "    AND (revoked_at < $3 OR expires_at < $3 OR idle_expires_at < $3) RETURNING 1)"
            " SELECT count(*) FROM gone",
            first_page,
            first_page + pages,
            cutoff,
        )
        return int(count)

    async def delete_old_security_events(self, cutoff: datetime, limit: int = GC_EVENTS_PER_STATEMENT) -> int:
        """Delete up to ``limit`` security events recorded before ``cutoff``."""
        count = await self._db.fetchval(
            "WITH gone AS (DELETE FROM security_events WHERE event_id IN ("
            "  SELECT event_id FROM security_events WHERE occurred_at < $1 ORDER BY event_id LIMIT $2)"
            "  RETURNING 1) SELECT count(*) FROM gone",
            cutoff,
            limit,
        )
        return int(count)
