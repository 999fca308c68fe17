"""Garbage collection: expired and revoked refresh-token families, old security events,
signing keys whose tokens have all expired, and the jtis of expired client assertions.

Deletion runs in bounded statements (a range of heap pages at a time, or a few thousand events),
never one huge DELETE, so it cannot hold long locks or bloat the WAL in one go; hydra#3079's
janitor SELECTed every expired row at once and its token table still reached 24 GB. The table
stays proportional to live sessions: rows go one retention period after they die.

Every instance runs the collector in the background; running it on several at once is harmless
(a row is deleted once), and a random first delay keeps them from starting together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from tessera.server.ops import events
from tessera.server.store.db import DATABASE_UNAVAILABLE
from tessera.server.store import PgKeyStore
from tessera.server.store.families import GC_EVENTS_PER_STATEMENT, GC_PAGES_PER_STATEMENT, FamilyStore
from tessera.server.store.login_failures import LoginFailureStore
from tessera.server.store.assertions import AssertionJtiStore
from tessera.server.oauth.throttle import WINDOW_SECONDS

GC_INTERVAL = 300.0
# Seconds the background janitor waits between its statements, leaving room for the requests.
JANITOR_PAUSE = 0.01
# A dead family stays this long: the longest an access token can live (TESSERA_ACCESS_TOKEN_TTL is
# at most a day), so introspection sees a revoked family for as long as any of its access tokens
# could still be shown, and a family that merely expired still vouches for its last access tokens.
FAMILY_RETENTION = timedelta(days=1)
SECURITY_EVENT_RETENTION = timedelta(days=90)
GC_JTIS_PER_STATEMENT = 5000

log = logging.getLogger("tessera.janitor")
# An outage or a statement timeout: the next pass picks up where this one could not.
_PASS_FAILED: tuple[type[BaseException], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)


@dataclass(frozen=True, slots=True)
class Collected:
    families: int
    security_events: int
    keys: int
    client_assertions: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"families": self.families, "security_events": self.security_events, "keys": self.keys,
                "client_assertions": self.client_assertions}


async def collect_garbage(
    pool: asyncpg.Pool, now: datetime, *, pause: float = 0.0, pages_per_statement: int = GC_PAGES_PER_STATEMENT
) -> Collected:
    """One full pass; ``pause`` seconds between statements leave room for the requests."""
    store = FamilyStore(pool)
    families = 0
    pages = await store.table_pages()
    for first_page in range(0, pages, pages_per_statement):
        families += await store.delete_dead_families(first_page, pages_per_statement, now - FAMILY_RETENTION)
        await asyncio.sleep(pause)
    security_events = 0
    while True:
        deleted = await store.delete_old_security_events(now - SECURITY_EVENT_RETENTION)
        security_events += deleted
        if deleted < GC_EVENTS_PER_STATEMENT:
            break
        await asyncio.sleep(pause)
    keys = await PgKeyStore(pool).delete_expired_keys(now)
    # Login-failure counters whose 15-minute window has passed count for nothing any more.
    failures = LoginFailureStore(pool)
    while await failures.prune(before=now.timestamp() - WINDOW_SECONDS) >= 1000:
        await asyncio.sleep(pause)
    # Client assertions past their exp (plus leeway) can no longer be accepted, replayed or not.
    jtis, client_assertions = AssertionJtiStore(pool), 0
    while True:
        deleted = await jtis.delete_expired(now, GC_JTIS_PER_STATEMENT)
        client_assertions += deleted
        if deleted < GC_JTIS_PER_STATEMENT:
            break
        await asyncio.sleep(pause)
    events.garbage_collected("refresh_families", families)
    events.garbage_collected("security_events", security_events)
    events.garbage_collected("signing_keys", keys)
    events.garbage_collected("client_assertion_jtis", client_assertions)
    return Collected(families, security_events, keys, client_assertions)


class Janitor:
    """Runs ``collect_garbage`` every ``interval`` seconds until stopped."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], float], interval: float = GC_INTERVAL) -> None:
        self._pool = pool
        self._clock = clock
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tessera-janitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(random.uniform(0.2, 1.0) * self._interval)
        while True:
            try:
                await collect_garbage(self._pool, datetime.fromtimestamp(self._clock(), UTC), pause=JANITOR_PAUSE)
            except _PASS_FAILED as exc:
                log.warning("garbage collection failed", extra={"cause": type(exc).__name__})
            await asyncio.sleep(self._interval)
