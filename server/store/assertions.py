"""Client assertions already used (migration 0012): each ``jti`` is accepted once per client,
by every instance, until the assertion has expired (RFC 7523 section 3, item 7).

The rule is one statement, ``tessera_spend_client_assertions``: the INSERT that records a ``jti``
is the check. Of two instances shown the same assertion at the same moment, the primary key lets
exactly one insert it; the other finds the row and refuses. A row past its ``expires_at`` no longer
counts (the assertion it recorded can no longer be accepted anyway), so a ``jti`` may come back
after that, as RFC 7519 section 4.1.7 allows, even before the janitor has deleted the row.

Group commit (``tessera.server.store.batching``): the assertion is checked once per request, and on
a small machine its commit (a round trip and a WAL flush) is what it costs. Assertions spent in the
same turn of the event loop, or while the previous batch is at the database, go as one statement
and one commit. Two copies of one assertion never share a batch: the later one waits for the next,
where it finds the row. Every row carries its request's deadline, and a batch refused because one
of them has passed is sent again row by row, so a late request refuses only itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tessera.server.store.batching import StatementBatcher
from tessera.server.store.db import request_gives_up

SPEND_SQL = "SELECT client_id, jti FROM tessera_spend_client_assertions($1, $2, $3, $4, $5)"
MAX_BATCH = 256
MAX_IN_FLIGHT = 2


@dataclass(slots=True)
class _Spend:
    client_id: str
    jti: str
    expires_at: datetime
    now: datetime


class _Spends:
    """``tessera_spend_client_assertions`` as a ``BatchStatement``: the rows it recorded are the
    assertions accepted; one not recorded is a replay."""

    def key(self, row: _Spend) -> Hashable:
        return row.client_id, row.jti

    async def many(
        self, connection: asyncpg.Connection, rows: Sequence[_Spend], deadlines: Sequence[datetime | None]
    ) -> list[bool]:
        """The rows through the one statement, with the earliest of their deadlines."""
        known = [deadline for deadline in deadlines if deadline is not None]
        spent = await connection.fetch(
            SPEND_SQL,
            [row.client_id for row in rows], [row.jti for row in rows], [row.expires_at for row in rows],
            min(row.now for row in rows), min(known) if known else None,
        )
        recorded = {(record["client_id"], record["jti"]) for record in spent}
        return [(row.client_id, row.jti) in recorded for row in rows]

    async def one(self, connection: asyncpg.Connection, row: _Spend, deadline: datetime | None) -> bool:
        return (await self.many(connection, [row], [deadline]))[0]


class AssertionJtiStore:
    """The register of spent client assertions. On a pool, concurrent ``spend`` calls are batched;
    on a single connection (the CLI, a test) each is its own statement."""

    def __init__(
        self, db: asyncpg.Pool | asyncpg.Connection, *, max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self._db = db
        self._spends: StatementBatcher[_Spend, bool] = StatementBatcher(
            db, _Spends(), max_batch=max_batch, max_in_flight=max_in_flight
        )

    async def spend(self, client_id: str, jti: str, *, expires_at: datetime, now: datetime) -> bool:
        """Record that ``client_id`` used ``jti`` until ``expires_at``; False (nothing written) if
        it already did and that use has not expired at ``now``: a replay."""
        return await self._spends.submit(_Spend(client_id, jti, expires_at, now), request_gives_up())

    async def delete_expired(self, now: datetime, limit: int = 5000) -> int:
        """Up to ``limit`` rows whose assertions have expired (the janitor's work)."""
        deleted = await self._db.fetchval(
            "WITH gone AS (DELETE FROM client_assertion_jtis WHERE (client_id, jti) IN ("
            "  SELECT client_id, jti FROM client_assertion_jtis WHERE expires_at < $1 LIMIT $2)"
            " RETURNING 1) SELECT count(*) FROM gone",
            now, limit,
        )
        return int(deleted)


__all__ = ["AssertionJtiStore", "SPEND_SQL"]
