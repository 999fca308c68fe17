"""Writes whose request was answered with an error although they committed (CONTRACT.md: an
error answer changes nothing, now or later).

A rotation or a code redemption can commit while its request fails: the commit's acknowledgement
is what was lost (the connection broke during COMMIT, a failover, a synchronous standby that did
not confirm in time). The grant that sent it hands ``settle`` a mark to write in the background:
a statement that marks the row only if the write committed, so that the client's retry is
answered as the lost answer would have been (migrations 0016 and 0017). The database may be away
for a while, so the mark is asked for again for about 30 s; and while the database fails many
requests at once, no more than ``MAX_SETTLING`` are looked after, so this adds bounded load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from tessera.server.store.db import DATABASE_UNAVAILABLE

# Seconds between tries, about 30 s in all: long enough for a failover to promote a standby.
RETRY_DELAYS = (0.05, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
MAX_SETTLING = 1_000


class Settler:
    """Runs the marks of one grant's failed writes in the background."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def settle(self, mark: Callable[[], Awaitable[bool]], marked: Callable[[], None] | None = None) -> None:
        """Write ``mark`` (True if it marked a committed write) until the database answers;
        ``marked`` is called if it did."""
        if len(self._tasks) >= MAX_SETTLING:
            return  # the database is failing many requests at once: keep its load bounded
        task = asyncio.get_running_loop().create_task(_settle(mark, marked))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _settle(mark: Callable[[], Awaitable[bool]], marked: Callable[[], None] | None) -> None:
    for delay in RETRY_DELAYS:
        await asyncio.sleep(delay)
        try:
            committed = await mark()
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError, TimeoutError):
            continue
        if committed and marked is not None:
            marked()
        return
