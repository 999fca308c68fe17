"""Group commit: writes that requests make at the same moment share one statement and one commit.

Every write a request waits for must be durably committed before its answer leaves, and on a small
machine the commit, not the row, is what such a write costs: a round trip, a WAL flush and two
context switches to the PostgreSQL backend and back. Writes that arrive together (in the same turn
of the event loop, or while the previous batch is at the database) go as one statement over arrays
of their rows (``unnest``), in one transaction: one round trip and one WAL flush for all.

``StatementBatcher`` is that machinery, once, for every such write: refresh rotations
(``tessera.server.store.rotation_batch``), the register of client assertions
(``tessera.server.store.assertions``) and the redemption of authorization codes
(``tessera.server.store.sign_in``). What each one writes is a ``BatchStatement``: the statement for
many rows and the one for a row alone, and the key two requests may not share a batch with.

The rules every batch keeps:

- Two rows with one key (the same family, the same assertion, the same code) never share a batch:
  the later waits for the next one, where it finds the first one's row, as the loser of a race
  between two instances would.
- A row must not hold up the rest of its batch. A statement for many rows gives up on a lock after
  a short ``lock_timeout`` (set by its SQL function); then, or on a deadlock with another
  instance's batch, nothing of the batch was kept and each row is sent again alone, through the
  statement that waits for its own lock.
- Every row carries its request's deadline (``tessera.server.store.db.statement_deadlines``,
  migration 0010): the statement refuses to commit once the server may have answered any of its
  rows' requests. A batch refused that way is sent again row by row, without the rows whose
  requests are gone, so a late row refuses only itself.
- A request that is gone (its client or its deadline) before its batch leaves is not sent.
- Any other failure (the database unreachable, the statement timed out) fails every request of the
  batch with that error, as each would have failed alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import asyncpg

from tessera.server.store.db import statement_deadlines

# What the database names a statement refused because its request's server may have given up
# (migration 0010's tessera_before_deadline).
DEADLINE_CONSTRAINT = "tessera_request_deadline"

# Rows per statement: bounds the work (and the locks) of one statement.
MAX_BATCH = 128
# Batches at the database at once from one process: one can be executing while another waits for
# its WAL flush. More would only split the same load into smaller batches.
MAX_IN_FLIGHT = 2

RowT = TypeVar("RowT")
ResultT = TypeVar("ResultT")
RowT_contra = TypeVar("RowT_contra", contravariant=True)
ResultT_co = TypeVar("ResultT_co", covariant=True)


@dataclass(slots=True, eq=False)
class Pending(Generic[RowT, ResultT]):
    """One request's row, its deadline (event-loop time; None: no request waits), and its answer."""

    row: RowT
    gives_up: float | None
    done: asyncio.Future[ResultT] = field(init=False)


class BatchStatement(Protocol[RowT_contra, ResultT_co]):
    """What one kind of batched write sends."""

    def key(self, row: RowT_contra) -> Hashable:
        """Rows with the same key never share a batch."""

    async def many(
        self, connection: asyncpg.Connection, rows: Sequence[RowT_contra], deadlines: Sequence[datetime | None]
    ) -> Sequence[ResultT_co]:
        """The rows in one statement, which may give up on a lock (its function's ``lock_timeout``);
        each row's answer, in their order."""

    async def one(self, connection: asyncpg.Connection, row: RowT_contra, deadline: datetime | None) -> ResultT_co:
        """The row alone, waiting for its locks as long as the statement may run."""


class StatementBatcher(Generic[RowT, ResultT]):
    """Collects rows and sends them in batches; ``submit`` answers each with its own result.

    On a single connection (the CLI's, a caller's transaction, a test's) there is nothing to share
    and a transaction to stay in: each row is sent alone on it, through ``BatchStatement.one``."""

    def __init__(
        self, pool: asyncpg.Pool | asyncpg.Connection, statement: BatchStatement[RowT, ResultT], *,
        max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT, sent: Callable[[int], None] | None = None,
    ) -> None:
        # A pool's connections are asyncpg.Connection too (PoolConnectionProxy); a pool is not.
        self._connection: asyncpg.Connection | None = pool if isinstance(pool, asyncpg.Connection) else None
        self._pool = pool
        self._statement = statement
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._sent = sent  # called with each batch's size (a metric), or None
        self._pending: list[Pending[RowT, ResultT]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, row: RowT, gives_up: float | None) -> ResultT:
        if self._connection is not None:
            (deadline,) = await statement_deadlines(self._connection, [gives_up])
            return await self._statement.one(self._connection, row, deadline)
        loop = asyncio.get_running_loop()
        item: Pending[RowT, ResultT] = Pending(row, gives_up)
        item.done = loop.create_future()
        self._pending.append(item)
        if not self._scheduled and self._in_flight < self._max_in_flight:
            # Not at once: the other requests that this turn of the loop is handling join the batch.
            self._scheduled = True
            loop.call_soon(self._start)
        return await item.done

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._take()
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[Pending[RowT, ResultT]]:
        """Up to ``max_batch`` pending rows, oldest first, at most one per key."""
        batch: list[Pending[RowT, ResultT]] = []
        left: list[Pending[RowT, ResultT]] = []
        keys: set[Hashable] = set()
        key = self._statement.key
        for item in self._pending:
            if item.done.done():
                continue  # its request is gone (client or deadline): writing its row would help no one
            if len(batch) < self._max_batch:
                item_key = key(item.row)
                if item_key not in keys:
                    keys.add(item_key)
                    batch.append(item)
                    continue
            left.append(item)
        self._pending = left
        return batch

    async def _send(self, batch: list[Pending[RowT, ResultT]]) -> None:
        try:
            await self._execute(batch)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._start()

    async def _execute(self, batch: list[Pending[RowT, ResultT]]) -> None:
        if self._sent is not None:
            self._sent(len(batch))
        try:
            async with self._pool.acquire() as connection:
                deadlines = await statement_deadlines(connection, [item.gives_up for item in batch])
                if len(batch) == 1:
                    results: Sequence[ResultT] = [await self._statement.one(connection, batch[0].row, deadlines[0])]
                else:
                    results = await self._statement.many(connection, [item.row for item in batch], deadlines)
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            # A row of the batch met a lock (another transaction holds it) and the statement gave up
            # waiting, or broke a lock cycle: nothing of the batch was kept. Each row on its own
            # waits only for its own lock.
            await asyncio.gather(*(self._alone(item) for item in batch))
            return
        except asyncpg.QueryCanceledError as exc:
            if len(batch) == 1 or exc.constraint_name != DEADLINE_CONSTRAINT:
                self._fail(batch, exc)
                return
            # A row's request may have been answered already: nothing of the batch was kept. Each
            # row on its own is refused only if it is late itself.
            await asyncio.gather(*(self._alone(item) for item in batch))
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
        for item, result in zip(batch, results):
            if not item.done.done():
                item.done.set_result(result)

    async def _alone(self, item: Pending[RowT, ResultT]) -> None:
        if item.done.done():
            return  # its request is gone (client or deadline): writing its row would help no one
        try:
            async with self._pool.acquire() as connection:
                (deadline,) = await statement_deadlines(connection, [item.gives_up])
                result = await self._statement.one(connection, item.row, deadline)
        except Exception as exc:
            if not item.done.done():
                item.done.set_exception(exc)
            return
        if not item.done.done():
            item.done.set_result(result)

    @staticmethod
    def _fail(batch: list[Pending[RowT, ResultT]], exc: Exception) -> None:
        for item in batch:
            if not item.done.done():
                item.done.set_exception(exc)


__all__ = ["DEADLINE_CONSTRAINT", "MAX_BATCH", "MAX_IN_FLIGHT", "BatchStatement", "Pending", "StatementBatcher"]
