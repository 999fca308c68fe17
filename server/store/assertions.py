"""Client assertions already used (migration 0012): each ``jti`` is accepted once per client,
by every instance, until the assertion has expired (RFC 7523 section 3, item 7).

The rule is one statement, ``tessera_spend_client_assertions``: the INSERT that records a ``jti``
is the check. Of two instances shown the same assertion at the same moment, the primary key lets
exactly one insert it; the other finds the row and refuses. A row past its ``expires_at`` no longer
counts (the assertion it recorded can no longer be accepted anyway), so a ``jti`` may come back
after that, as RFC 7519 section 4.1.7 allows, even before the janitor has deleted the row.

Group commit, as for refresh rotations (``tessera.server.store.rotation_batch``): the assertion
is checked once per request, and on a small machine its commit (a round trip and a WAL flush) is
what it costs. Assertions spent in the same turn of the event loop, or while the previous batch is
at the database, go as one statement and one commit. Two copies of one assertion never share a
batch: the later one waits for the next, where it finds the row. Every row carries its request's
deadline, and a batch refused because one of them has passed is sent again row by row, so a late
request refuses only itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from tessera.server.store.db import request_gives_up, statement_deadlines

SPEND_SQL = "SELECT client_id, jti FROM tessera_spend_client_assertions($1, $2, $3, $4, $5)"
# What the database names a statement refused because its request's server may have given up.
DEADLINE_CONSTRAINT = "tessera_request_deadline"
MAX_BATCH = 256
MAX_IN_FLIGHT = 2


@dataclass(slots=True)
class _Spend:
    client_id: str
    jti: str
    expires_at: datetime
    now: datetime
    gives_up: float | None
    done: asyncio.Future[bool] = field(init=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.client_id, self.jti


class AssertionJtiStore:
    """The register of spent client assertions. On a pool, concurrent ``spend`` calls are batched;
    on a single connection (the CLI, a test) each is its own statement."""

    def __init__(
        self, db: asyncpg.Pool | asyncpg.Connection, *, max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self._db = db
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[_Spend] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def spend(self, client_id: str, jti: str, *, expires_at: datetime, now: datetime) -> bool:
        """Record that ``client_id`` used ``jti`` until ``expires_at``; False (nothing written) if
        it already did and that use has not expired at ``now``: a replay."""
        item = _Spend(client_id, jti, expires_at, now, request_gives_up())
        if not isinstance(self._db, asyncpg.Pool):
            return bool(await self._run(self._db, [item]))
        loop = asyncio.get_running_loop()
        item.done = loop.create_future()
        self._pending.append(item)
        if not self._scheduled and self._in_flight < self._max_in_flight:
            # Not at once: the other requests that this turn of the loop is handling join the batch.
            self._scheduled = True
            loop.call_soon(self._start)
        return await item.done

    async def delete_expired(self, now: datetime, limit: int = 5000) -> int:
        """Up to ``limit`` rows whose assertions have expired (the janitor's work)."""
        deleted = await self._db.fetchval(
            "WITH gone AS (DELETE FROM client_assertion_jtis WHERE (client_id, jti) IN ("
            "  SELECT client_id, jti FROM client_assertion_jtis WHERE expires_at < $1 LIMIT $2)"
            " RETURNING 1) SELECT count(*) FROM gone",
            now, limit,
        )
        return int(deleted)

    # --- batches ------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._take()
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Spend]:
        """Up to ``max_batch`` pending spends, oldest first, at most one per (client, jti)."""
        batch: list[_Spend] = []
        left: list[_Spend] = []
        keys: set[tuple[str, str]] = set()
        for item in self._pending:
            if item.done.cancelled():
                continue  # its request is gone: spending its jti would help no one
            if len(batch) < self._max_batch and item.key not in keys:
                keys.add(item.key)
                batch.append(item)
            else:
                left.append(item)
        self._pending = left
        return batch

    async def _send(self, batch: list[_Spend]) -> None:
        try:
            if batch:
                await self._execute(batch)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._start()

    async def _execute(self, batch: list[_Spend]) -> None:
        try:
            async with self._db.acquire() as connection:
                spent = await self._run(connection, batch)
        except (asyncpg.QueryCanceledError, asyncpg.DeadlockDetectedError) as exc:
            late = isinstance(exc, asyncpg.QueryCanceledError) and exc.constraint_name == DEADLINE_CONSTRAINT
            if len(batch) == 1 or not (late or isinstance(exc, asyncpg.DeadlockDetectedError)):
                self._fail(batch, exc)
                return
            # Nothing of the batch was kept: each row on its own is refused only if it is late itself.
            await asyncio.gather(*(self._one(item) for item in batch))
            return
        except Exception as exc:
            # The database is unreachable, the statement timed out, ...: every request of the batch
            # gets the error (a 503), as each would have alone.
            self._fail(batch, exc)
            return
        except BaseException:
            for item in batch:
                item.done.cancel()
            raise
        for item in batch:
            if not item.done.done():
                item.done.set_result(item.key in spent)

    async def _one(self, item: _Spend) -> None:
        if item.done.done():
            return
        try:
            async with self._db.acquire() as connection:
                spent = await self._run(connection, [item])
        except Exception as exc:
            if not item.done.done():
                item.done.set_exception(exc)
            return
        if not item.done.done():
            item.done.set_result(item.key in spent)

    @staticmethod
    async def _run(connection: asyncpg.Connection, batch: Sequence[_Spend]) -> set[tuple[str, str]]:
        """The rows of ``batch`` through the one statement, with the earliest of their deadlines;
        the (client_id, jti) pairs it recorded."""
        deadlines = [d for d in await statement_deadlines(connection, [item.gives_up for item in batch]) if d is not None]
        rows = await connection.fetch(
            SPEND_SQL,
            [item.client_id for item in batch], [item.jti for item in batch], [item.expires_at for item in batch],
            min(item.now for item in batch), min(deadlines) if deadlines else None,
        )
        return {(row["client_id"], row["jti"]) for row in rows}

    @staticmethod
    def _fail(batch: list[_Spend], exc: Exception) -> None:
        for item in batch:
            if not item.done.done():
                item.done.set_exception(exc)


__all__ = ["AssertionJtiStore", "SPEND_SQL"]
