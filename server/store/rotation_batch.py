"""Group commit for refresh-token rotations: concurrent rotations share one statement and one commit.

Every rotation must be durably committed before its answer leaves, and on a small machine the
commit, not the UPDATE, is what a rotation costs: a round trip, a WAL flush and two context
switches to the PostgreSQL backend and back. Rotations that arrive together (in the same turn of
the event loop, or while the previous batch is at the database) go as one ``UPDATE ... FROM
unnest(...)``, wrapped in a function (migration 0007): one round trip and one WAL flush for all.

Each row keeps the single-row statement's conditions (``ROTATE_SQL``): under READ COMMITTED,
PostgreSQL re-checks the join and WHERE clauses of a row that a concurrent transaction changed
first, so of several requests with one token, in one process or many, exactly one matches. Two
requests for the same family never share a batch: the later one waits for the next batch, where it
finds the family rotated and is answered as a retry or as reuse, like any loser of the race.
A row must not hold up the rest of its batch: if one of its families is locked by another
transaction for longer than the function's ``lock_timeout`` (100 ms), the batch is retried row by
row, and only that row waits. A deadlock between two instances' batches ends the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from tessera.server.ops import events

# The function is made by migration 0007 (server/migrations/0007_rotation_batch.sql).
BATCH_ROTATE_SQL = "SELECT * FROM tessera_rotate_families($1, $2, $3, $4, $5, $6, $7, $8, $9)"

# Rows per statement. At 64 concurrent rotations a batch rarely reaches this; it bounds the work
# (and the locks) of one statement.
MAX_BATCH = 128
# Batches at the database at once from one process: one can be executing while another waits for
# its WAL flush. More would only split the same load into smaller batches.
MAX_IN_FLIGHT = 2


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
    scopes: Sequence[str] | None
    audience: str | None
    done: asyncio.Future[asyncpg.Record | None] = field(init=False)  # set by ``rotate``


class RotationBatcher:
    """Collects rotations and sends them in batches; ``rotate`` answers each with its own row."""

    def __init__(
        self, pool: asyncpg.Pool, single_sql: str, *, max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self._pool = pool
        self._single_sql = single_sql
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[PendingRotation] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def rotate(self, rotation: PendingRotation) -> asyncpg.Record | None:
        """The rotated row (user_id, scopes, audience, auth_time, created_at, expires_at), or None."""
        loop = asyncio.get_running_loop()
        rotation.done = loop.create_future()
        self._pending.append(rotation)
        if not self._scheduled and self._in_flight < self._max_in_flight:
            # Not at once: the other requests that this turn of the loop is handling join the batch.
            self._scheduled = True
            loop.call_soon(self._start)
        return await rotation.done

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._take()
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[PendingRotation]:
        """Up to ``max_batch`` pending rotations, oldest first, at most one per family."""
        batch: list[PendingRotation] = []
        left: list[PendingRotation] = []
        families: set[uuid.UUID] = set()
        for rotation in self._pending:
            if rotation.done.cancelled():
                continue  # its request is gone (client or deadline); rotating it would help no one
            if len(batch) < self._max_batch and rotation.family_id not in families:
                families.add(rotation.family_id)
                batch.append(rotation)
            else:
                left.append(rotation)
        self._pending = left
        return batch

    async def _send(self, batch: list[PendingRotation]) -> None:
        try:
            if batch:
                await self._execute(batch)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._start()

    async def _execute(self, batch: list[PendingRotation]) -> None:
        events.rotations_sent(len(batch))
        try:
            if len(batch) == 1:
                rows = {batch[0].family_id: await self._pool.fetchrow(self._single_sql, *single_args(batch[0]))}
            else:
                rows = {row["family_id"]: row for row in await self._pool.fetch(BATCH_ROTATE_SQL, *_batch_args(batch))}
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            # A row of the batch met a lock (another transaction is rotating or revoking that
            # family) and the function gave up waiting: nothing of the batch was kept. Each row on
            # its own waits only for its own lock, as a rotation always did.
            await asyncio.gather(*(self._one(rotation) for rotation in batch))
            return
        except Exception as exc:
            # The database is unreachable, the statement timed out, ...: every request of the batch
            # gets the error (a 503), as each would have alone. If the connection was lost after a
            # commit, a client's retry within the grace gets the successor it missed.
            for rotation in batch:
                if not rotation.done.done():
                    rotation.done.set_exception(exc)
            return
        except BaseException:
            for rotation in batch:
                rotation.done.cancel()
            raise
        for rotation in batch:
            if not rotation.done.done():
                rotation.done.set_result(rows.get(rotation.family_id))

    async def _one(self, rotation: PendingRotation) -> None:
        try:
            row = await self._pool.fetchrow(self._single_sql, *single_args(rotation))
        except Exception as exc:
            if not rotation.done.done():
                rotation.done.set_exception(exc)
            return
        if not rotation.done.done():
            rotation.done.set_result(row)


def single_args(rotation: PendingRotation) -> tuple[Any, ...]:
    return (
        rotation.family_id,
        rotation.generation,
        rotation.current_hash,
        rotation.client_id,
        rotation.successor_hash,
        rotation.now,
        rotation.idle_expires_at,
        list(rotation.scopes) if rotation.scopes is not None else None,
        rotation.audience,
    )


def _batch_args(batch: list[PendingRotation]) -> tuple[list[Any], ...]:
    return (
        [r.family_id for r in batch],
        [r.generation for r in batch],
        [r.current_hash for r in batch],
        [r.client_id for r in batch],
        [r.successor_hash for r in batch],
        [r.now for r in batch],
        [r.idle_expires_at for r in batch],
        # Scope tokens never contain a space (RFC 6749 section 3.3), so joining them loses nothing.
        [" ".join(r.scopes) if r.scopes is not None else None for r in batch],
        [r.audience for r in batch],
    )


__all__ = ["BATCH_ROTATE_SQL", "PendingRotation", "RotationBatcher", "single_args"]
