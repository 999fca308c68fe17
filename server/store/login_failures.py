"""Failed-login counters (migration 0005), shared by every instance through PostgreSQL.

Each counter is a fixed window that starts at its first failure. ``reserve`` charges an attempt
to its counters before the password or secret is checked, in one statement, so concurrent
attempts cannot all slip past the limit; a success takes the charge back with ``release``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class Counter:
    """One thing attempts are counted against: a (kind, subject, address) under an HMAC."""

    key: bytes
    kind: str  # "user", "client" or "address"
    remote: str
    limit: int


@dataclass(frozen=True, slots=True)
class FailureCount:
    failures: int
    window_start: float  # epoch seconds


class LoginFailureStore:
    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    async def reserve(self, counters: Sequence[Counter], *, now: float, window: float) -> dict[bytes, FailureCount]:
        """Add one attempt to each counter and return the new counts; an expired window restarts at 1.

        Every statement here takes its row locks in ``counter`` order, so concurrent attempts
        that share a counter (an address, a client) wait for each other but never deadlock.
        """
        rows = await self._db.fetch(
            """
            INSERT INTO login_failures AS f (counter, kind, remote, window_start, failures)
            SELECT c.counter, c.kind, c.remote, to_timestamp($4), 1
            FROM unnest($1::bytea[], $2::text[], $3::text[]) AS c(counter, kind, remote)
            ORDER BY c.counter
            ON CONFLICT (counter) DO UPDATE SET
                failures = CASE WHEN f.window_start <= to_timestamp($4) - make_interval(secs => $5)
                                THEN 1 ELSE f.failures + 1 END,
                window_start = CASE WHEN f.window_start <= to_timestamp($4) - make_interval(secs => $5)
                                    THEN EXCLUDED.window_start ELSE f.window_start END
            RETURNING counter, failures, extract(epoch FROM window_start)::float8 AS window_start
            """,
            [c.key for c in counters],
            [c.kind for c in counters],
            [c.remote for c in counters],
            now,
            window,
        )
        return {bytes(r["counter"]): FailureCount(r["failures"], r["window_start"]) for r in rows}

    async def release(self, *, clear: Sequence[bytes], take_back: Sequence[bytes]) -> None:
        """After an attempt that was not a failure: reset ``clear`` (its next failure opens a new
        window), take one attempt off ``take_back``."""
        await self._db.execute(
            """
            WITH locked AS (
                SELECT counter FROM login_failures WHERE counter = ANY($1::bytea[] || $2::bytea[])
                ORDER BY counter FOR UPDATE)
            UPDATE login_failures AS f SET
                failures = CASE WHEN f.counter = ANY($1::bytea[]) THEN 0 ELSE GREATEST(f.failures - 1, 0) END,
                window_start = CASE WHEN f.counter = ANY($1::bytea[]) THEN 'epoch' ELSE f.window_start END
            FROM locked WHERE f.counter = locked.counter
            """,
            list(clear),
            list(take_back),
        )

    async def prune(self, *, before: float, batch: int = 1000) -> int:
        """Delete up to ``batch`` counters whose window started before ``before`` (skipping any
        that an attempt holds right now)."""
        deleted = await self._db.fetchval(
            """
            WITH gone AS (
                DELETE FROM login_failures WHERE counter IN (
                    SELECT counter FROM login_failures WHERE window_start < to_timestamp($1)
                    ORDER BY counter LIMIT $2 FOR UPDATE SKIP LOCKED)
                RETURNING 1)
            SELECT count(*) FROM gone
            """,
            before,
            batch,
        )
        return int(deleted)
