"""Group commit for refresh-token rotations: concurrent rotations share one statement and one commit.

Every rotation must be durably committed before its answer leaves, and on a small machine the
commit, not the UPDATE, is what a rotation costs: a round trip, a WAL flush and two context
switches to the PostgreSQL backend and back. Rotations that arrive together (in the same turn of
the event loop, or while the previous batch is at the database) go as one ``UPDATE ... FROM
unnest(...)``, wrapped in a function (migration 0009): one round trip and one WAL flush for all.

A rotation alone goes through the same function, so the rule is the same for both: under READ COMMITTED,
PostgreSQL re-checks the join and WHERE clauses of a row that a concurrent transaction changed
first, so of several requests with one token, in one process or many, exactly one matches. Two
requests for the same family never share a batch: the later one waits for the next batch, where it
finds the family rotated and is answered as a retry or as reuse, like any loser of the race.
A row must not hold up the rest of its batch: if one of its families is locked by another
transaction for longer than the function's ``lock_timeout`` (100 ms), the batch is retried row by
row, and only that row waits. A deadlock between two instances' batches ends the same way.

Every row carries its request's deadline (``tessera.server.store.db.statement_deadlines``): the
statement refuses to commit once the server may have answered any of its rows' requests, so a
rotation left at a frozen or slow database never commits after its request was answered 503. A
batch refused that way is also retried row by row, without the rows whose requests are gone, so a
late row refuses only itself.
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
from tessera.server.store.db import statement_deadlines

# The rotations of migration 0009 (server/store/migrations/0009_one_rotation_rule.sql), with each
# row's deadline (migration 0010): the batch gives up past its lock_timeout, the waiting one waits
# for its row's lock.
BATCH_ROTATE_SQL = "SELECT * FROM tessera_rotate_families_before($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
WAITING_ROTATE_SQL = "SELECT * FROM tessera_rotate_families_waiting_before($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
# What the database names a statement refused because its request's server may have given up.
DEADLINE_CONSTRAINT = "tessera_request_deadline"

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
    scope: str | None  # as the ``scope`` parameter is written (scope_parameter); None: the family's
    audience: str | None
    gives_up: float | None = None  # when its request is answered 503 (event-loop time); None: no request
    done: asyncio.Future[asyncpg.Record | None] = field(init=False)  # set by ``rotate``


class RotationBatcher:
    """Collects rotations and sends them in batches; ``rotate`` answers each with its own row."""

    def __init__(
        self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self._pool = pool
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
                rows = {batch[0].family_id: await self._run(WAITING_ROTATE_SQL, batch, one=True)}
            else:
                rows = {row["family_id"]: row for row in await self._run(BATCH_ROTATE_SQL, batch)}
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            # A row of the batch met a lock (another transaction is rotating or revoking that
            # family) and the function gave up waiting: nothing of the batch was kept. Each row on
            # its own waits only for its own lock, as a rotation always did.
            await asyncio.gather(*(self._one(rotation) for rotation in batch))
            return
        except asyncpg.QueryCanceledError as exc:
            if len(batch) == 1 or exc.constraint_name != DEADLINE_CONSTRAINT:
                self._fail(batch, exc)
                return
            # A row's request may have been answered already: nothing of the batch was kept. Each
            # row on its own is refused only if it is late itself.
            await asyncio.gather(*(self._one(rotation) for rotation in batch))
            return
        except Exception as exc:
            # The database is unreachable, the statement timed out, ...: every request of the batch
            # gets the error (a 503), as each would have alone. If the connection was lost after a
            # commit, a client's retry within the grace gets the successor it missed.
            self._fail(batch, exc)
            return
        except BaseException:
            for rotation in batch:
                rotation.done.cancel()
            raise
        for rotation in batch:
            if not rotation.done.done():
                rotation.done.set_result(rows.get(rotation.family_id))

    async def _run(self, sql: str, batch: list[PendingRotation], *, one: bool = False) -> Any:
        """``sql`` on the rows of ``batch``, each with its request's deadline in the clock of the
        connection that sends it."""
        async with self._pool.acquire() as connection:
            deadlines = await statement_deadlines(connection, [rotation.gives_up for rotation in batch])
            if one:
                return await connection.fetchrow(sql, *rotation_args(batch), deadlines)
            return await connection.fetch(sql, *rotation_args(batch), deadlines)

    @staticmethod
    def _fail(batch: list[PendingRotation], exc: Exception) -> None:
        for rotation in batch:
            if not rotation.done.done():
                rotation.done.set_exception(exc)

    async def _one(self, rotation: PendingRotation) -> None:
        if rotation.done.done():
            return  # its request is gone (client or deadline); rotating it would help no one
        try:
            row = await self._run(WAITING_ROTATE_SQL, [rotation], one=True)
        except Exception as exc:
            if not rotation.done.done():
                rotation.done.set_exception(exc)
            return
        if not rotation.done.done():
            rotation.done.set_result(row)


def scope_parameter(scopes: Sequence[str] | None) -> str | None:
    """Scopes as the rotation rule takes them: the ``scope`` parameter's own form (RFC 6749 section
    3.3, space-separated; a scope token never contains a space, so joining loses nothing)."""
    return " ".join(scopes) if scopes is not None else None


def rotation_args(batch: list[PendingRotation]) -> tuple[list[Any], ...]:
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
    "BATCH_ROTATE_SQL", "DEADLINE_CONSTRAINT", "WAITING_ROTATE_SQL", "PendingRotation", "RotationBatcher", "rotation_args",
    "scope_parameter",
]
