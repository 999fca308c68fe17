"""Group commit for refresh-token rotations: concurrent rotations share one statement and one commit.

Rotations that arrive together go as one ``UPDATE ... FROM unnest(...)``, wrapped in a function
(migration 0009), through the group commit of ``tessera.server.store.batching``: one round trip and
one WAL flush for all, each row with its request's deadline (migration 0010).

A rotation alone goes through the same rule, so it is the same for both: under READ COMMITTED,
PostgreSQL re-checks the join and WHERE clauses of a row that a concurrent transaction changed
first, so of several requests with one token, in one process or many, exactly one matches. Two
requests for the same family never share a batch: the later one waits for the next batch, where it
finds the family rotated and is answered as a retry or as reuse, like any loser of the race.
A row must not hold up the rest of its batch: if one of its families is locked by another
transaction for longer than the function's ``lock_timeout`` (100 ms), the batch is retried row by
row, and only that row waits. A deadlock between two instances' batches ends the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from tessera.server.ops import events
from tessera.server.store.batching import DEADLINE_CONSTRAINT, StatementBatcher

# The rotations of migration 0009 (server/store/migrations/0009_one_rotation_rule.sql), with each
# row's deadline (migration 0010): the batch gives up past its lock_timeout, the waiting one waits
# for its row's lock.
BATCH_ROTATE_SQL = "SELECT * FROM tessera_rotate_families_before($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
WAITING_ROTATE_SQL = "SELECT * FROM tessera_rotate_families_waiting_before($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


@dataclass(slots=True)
class PendingRotation:
    """One rotation's inputs; the same as the single-row statement's parameters."""

    family_id: uuid.UUID
    generation: int
    current_hash: bytes
    client_id: str
    successor_hash: bytes
    now: datetime
    idle_expires_at: datetime
    scope: str | None  # as the ``scope`` parameter is written (scope_parameter); None: the family's
    audience: str | None
    gives_up: float | None = None  # when its request is answered 503 (event-loop time); None: no request


class _Rotations:
    """The rotation functions as a ``BatchStatement``: at most one row per family in a batch."""

    def key(self, row: PendingRotation) -> Hashable:
        return row.family_id

    async def many(
        self, connection: asyncpg.Connection, rows: Sequence[PendingRotation], deadlines: Sequence[datetime | None]
    ) -> list[asyncpg.Record | None]:
        records = await connection.fetch(BATCH_ROTATE_SQL, *rotation_args(rows), list(deadlines))
        found = {record["family_id"]: record for record in records}
        return [found.get(row.family_id) for row in rows]

    async def one(
        self, connection: asyncpg.Connection, row: PendingRotation, deadline: datetime | None
    ) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await connection.fetchrow(
            WAITING_ROTATE_SQL, *rotation_args([row]), [deadline]
        )
        return record


def rotation_batcher(
    db: asyncpg.Pool | asyncpg.Connection,
) -> StatementBatcher[PendingRotation, asyncpg.Record | None]:
    """Rotations on ``db``: batched on a pool (each batch counted in the metrics), each alone on a
    single connection. ``submit`` answers the rotated row (user_id, scopes, audience, auth_time,
    created_at, expires_at), or None."""
    return StatementBatcher(db, _Rotations(), sent=events.rotations_sent)


def scope_parameter(scopes: Sequence[str] | None) -> str | None:
    """Scopes as the rotation rule takes them: the ``scope`` parameter's own form (RFC 6749 section
    3.3, space-separated; a scope token never contains a space, so joining loses nothing)."""
    return " ".join(scopes) if scopes is not None else None


def rotation_args(batch: Sequence[PendingRotation]) -> tuple[list[Any], ...]:
    """The rotation functions' parameters but the last, the rows' deadlines (``statement_deadlines``)."""
    return (
        [r.family_id for r in batch],
        [r.generation for r in batch],
        [r.current_hash for r in batch],
        [r.client_id for r in batch],
        [r.successor_hash for r in batch],
        [r.now for r in batch],
        [r.idle_expires_at for r in batch],
        [r.scope for r in batch],
        [r.audience for r in batch],
    )


__all__ = [
    "BATCH_ROTATE_SQL", "DEADLINE_CONSTRAINT", "WAITING_ROTATE_SQL", "PendingRotation", "rotation_args", "rotation_batcher",
    "scope_parameter",
]
