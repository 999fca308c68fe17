"""What a client authentication needs from PostgreSQL, kept in memory and kept current by LISTEN.

The common token request (a client presenting a secret it presented a moment ago) needs two
things from the database: the client's row and whether its (client, address) pair is throttled.
Both are held here, per process, so that request touches no connection at all:

- ``ClientCache``: client rows by id. It answers from memory only a caller that presents the
  client's secret, never a client id alone: a known id answered from memory and an unknown one
  read from the database would tell by their timing which ids exist. The ``clients`` table
  notifies ``CLIENTS_CHANNEL`` in the transaction of every change (migration 0006), and every
  instance drops the row when the notification arrives: milliseconds after the commit. A row
  also expires after ``CLIENT_CACHE_TTL`` seconds, the bound if a notification were ever lost.
- ``RecentFailures``: the failed-login counters that hold failures, each until its window ends.
  ``login_failures`` notifies ``FAILURES_CHANNEL`` whenever a counter is charged. An
  authentication whose counter is marked reads it from the database, exactly as before the
  cache; only a counter with no failures in its window is answered from memory.

Both are usable only while the LISTEN connection is up (``tessera.server.tasks.key_scheduler``): when it is
lost they stop answering (every request reads the database again) and are rebuilt when it is
back, the failures from the table itself, so nothing that happened while nobody listened is missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from tessera.server.store import Client

CLIENTS_CHANNEL = "tessera_clients"
FAILURES_CHANNEL = "tessera_login_failures"
CLIENT_CACHE_TTL = 10.0
MAX_CLIENTS = 10_000


class ClientCache:
    def __init__(self, ttl: float = CLIENT_CACHE_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[Client, float]] = {}
        # Bumped by every invalidation: a row read before it must not be stored after it.
        self._generation = 0
        self.usable = False

    def get(self, client_id: str) -> Client | None:
        if not self.usable:
            return None
        entry = self._entries.get(client_id)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._entries[client_id]
            return None
        return entry[0]

    @property
    def generation(self) -> int:
        """Taken before reading a row, handed to ``put`` after."""
        return self._generation

    def put(self, client: Client, generation: int) -> None:
        """Remember a row read from the database, unless a change was announced while it was read."""
        if self.usable and generation == self._generation:
            if len(self._entries) >= MAX_CLIENTS:
                self._entries.clear()
            self._entries[client.client_id] = (client, self._clock() + self._ttl)

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one client, or (``None``) all of them."""
        self._generation += 1
        if client_id:
            self._entries.pop(client_id, None)
        else:
            self._entries.clear()

    def notified(self, payload: str) -> None:
        self.invalidate(payload or None)

    def listening(self, up: bool) -> None:
        self.invalidate()
        self.usable = up


class RecentFailures:
    """Counter keys with failures in their window, and when that window ends (throttle clock)."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self._window = window
        self._clock = clock
        self._until: dict[bytes, float] = {}
        self.marks = 0  # how many marks so far: ``forget`` ignores a read older than the latest mark
        self.usable = False

    def mark(self, counter: bytes, window_start: float) -> None:
        self.marks += 1
        until = window_start + self._window
        if until > self._until.get(counter, 0.0):
            self._until[counter] = until
        if len(self._until) > 4 * MAX_CLIENTS:
            self._prune()

    def _prune(self) -> None:
        now = self._clock()
        self._until = {key: until for key, until in self._until.items() if until > now}

    def clean(self, counter: bytes) -> bool:
        """True when ``counter`` is known to hold no failures now (so no need to read it)."""
        if not self.usable:
            return False
        until = self._until.get(counter)
        if until is None:
            return True
        if until <= self._clock():
            del self._until[counter]
            return True
        return False

    def forget(self, counter: bytes, marks_before_read: int) -> None:
        """The database said the counter holds no failures, in a read begun when ``marks`` was
        ``marks_before_read``; a failure announced since then may be newer than that read."""
        if self.marks == marks_before_read:
            self._until.pop(counter, None)

    def notified(self, payload: str) -> None:
        key, _, start = payload.partition(" ")
        try:
            self.mark(bytes.fromhex(key), float(start))
        except ValueError:
            return

    async def reload(self, connection: asyncpg.Connection) -> None:
        """Rebuild from the table (called once LISTEN is up, so nothing falls between the two)."""
        rows = await connection.fetch(
            "SELECT counter, extract(epoch FROM window_start)::float8 AS window_start"
            " FROM login_failures WHERE failures > 0"
        )
        self._until = {}
        for row in rows:
            self.mark(bytes(row["counter"]), row["window_start"])
        self.usable = True

    def lost(self) -> None:
        self.usable = False
        self._until = {}


class ChangeFeed:
    """The two caches as the LISTEN connection sees them (``tessera.server.tasks.key_scheduler``)."""

    def __init__(self, clients: ClientCache, failures: RecentFailures) -> None:
        self.clients = clients
        self.failures = failures

    async def connected(self, connection: asyncpg.Connection) -> None:
        await connection.add_listener(CLIENTS_CHANNEL, lambda _c, _p, _ch, payload: self.clients.notified(payload))
        await connection.add_listener(FAILURES_CHANNEL, lambda _c, _p, _ch, payload: self.failures.notified(payload))
        await self.failures.reload(connection)
        self.clients.listening(True)

    def lost(self) -> None:
        self.clients.listening(False)
        self.failures.lost()


__all__ = ["CLIENTS_CHANNEL", "FAILURES_CHANNEL", "ChangeFeed", "ClientCache", "RecentFailures"]
