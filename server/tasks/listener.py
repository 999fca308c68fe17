"""One LISTEN connection per process: how this instance hears what other instances and the CLI
changed, within milliseconds of their commit.

- ``KEYS_CHANNEL`` (a rotation anywhere, a CLI key command): the key scheduler reloads the keyring.
- The client and failed-login caches (``tessera.server.store.caches.ChangeFeed``): they answer
  only while this connection is up, and are rebuilt from their tables when it is back.

The connection is checked every ``LISTEN_CHECK_SECONDS`` and re-opened when lost; whatever changed
while nobody listened is caught up at once (the keyring reloads, the caches rebuild).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg

from tessera.server.ops import events
from tessera.server.store.caches import ChangeFeed
from tessera.server.store.db import DATABASE_UNAVAILABLE
from tessera.server.store.keys import KEYS_CHANNEL

LISTEN_CHECK_SECONDS = 30.0
# Capped low: until this connection is back the caches do not answer, so every request pays the
# database (and argon2) in full; one connection attempt every 2 s per instance is nothing.
RECONNECT_MAX_SECONDS = 2.0
APPLICATION_NAME = "tessera-listen"


class ChangeListener:
    def __init__(self, dsn: str, *, keys_changed: Callable[[], None], feed: ChangeFeed) -> None:
        self._dsn = dsn
        self._keys_changed = keys_changed
        self._feed = feed

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._listen())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                connection = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
                )
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            delay = 0.5
            try:
                await self._listen_on(connection)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                events.change_listener_lost(f"{type(exc).__name__}: {exc}")
            finally:
                # Nobody listens now: the caches stop answering until they are rebuilt.
                self._feed.lost()
                connection.terminate()

    async def _listen_on(self, connection: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(KEYS_CHANNEL, lambda *_: self._keys_changed())
        await self._feed.connected(connection)
        self._keys_changed()  # whatever changed while nobody listened
        while True:
            try:
                async with asyncio.timeout(LISTEN_CHECK_SECONDS):
                    await lost.wait()
            except TimeoutError:
                # A server that keeps the socket open but stopped answering shows up here.
                await connection.fetchval("SELECT 1", timeout=5.0)
                continue
            events.change_listener_lost("connection closed")
            return
