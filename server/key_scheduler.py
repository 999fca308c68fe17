"""Keeps this instance's keyring current and rotates the signing key when it is due.

- LISTEN on ``KEYS_CHANNEL`` on a dedicated connection: every change to the key set (a rotation
  here or on any other host, a CLI command) reloads the keyring within milliseconds. The
  connection is checked every ``LISTEN_CHECK_SECONDS`` and re-opened when lost. The same
  connection feeds the client and failed-login caches (``server.client_cache``), which answer
  only while it is up.
- Every TESSERA_KEY_RELOAD_INTERVAL seconds the keyring reloads anyway: the fallback when a
  notification is lost, and how retired keys leave the JWKS once expired. The same tick rotates
  when due; every instance may try, the store's compare-and-set lets exactly one succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg

from keys.kek import KekRing, UnsealError
from keys.keyring import Keyring, NoActiveKey
from keys.lifecycle import KeyLifecycle, LifecycleError, Policy, Rotation, at, key_roles
from keys.store import KeyStore
from server import events
from server.client_cache import ChangeFeed
from server.middleware import DATABASE_UNAVAILABLE
from server.settings import Settings
from server.store.keys import KEYS_CHANNEL

log = logging.getLogger("tessera.keys")

LISTEN_CHECK_SECONDS = 30.0
RECONNECT_MAX_SECONDS = 10.0


def key_policy(settings: Settings) -> Policy:
    return Policy(
        alg=settings.signing_alg,
        rotation_interval=settings.key_rotation_interval,
        jwks_max_age=settings.jwks_max_age,
        reload_interval=settings.key_reload_interval,
        access_token_ttl=settings.access_token_ttl,
    )


def key_lifecycle(settings: Settings, store: KeyStore, keks: KekRing, clock: Callable[[], float]) -> KeyLifecycle:
    return KeyLifecycle(store, keks, key_policy(settings), clock)


def report_rotation(rotation: Rotation) -> None:
    if rotation.revoked:
        events.key_revoked(rotation.retired.kid)
    events.key_rotated(rotation.activated.kid, None if rotation.revoked else rotation.retired.kid)


class KeyScheduler:
    def __init__(
        self,
        dsn: str,
        keyring: Keyring,
        lifecycle: KeyLifecycle,
        *,
        reload_interval: float,
        clock: Callable[[], float],
        feed: ChangeFeed | None = None,
    ) -> None:
        self._dsn = dsn
        self._feed = feed
        self._keyring = keyring
        self._lifecycle = lifecycle
        self._reload_interval = reload_interval
        self._clock = clock
        self._wake = asyncio.Event()

    async def prepare(self) -> None:
        """At start: the first keys (or a next key of a newly configured algorithm), then load."""
        replaced = await self._lifecycle.prepare()
        if replaced is not None:
            events.key_next_replaced(replaced[0], replaced[1], self._lifecycle.policy.alg)
        await self._keyring.refresh()
        await self._lifecycle.declare_publication(key_roles(self._keyring.snapshot.keys)[1])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._tick_forever())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def tick(self) -> Rotation | None:
        """One step: reload, declare how long this instance's JWKS is cached, rotate if due."""
        try:
            snapshot = await self._keyring.refresh()
        except NoActiveKey as exc:
            events.keyring_problem(str(exc))
            return None
        active, next_key = key_roles(snapshot.keys)
        await self._lifecycle.declare_publication(next_key)
        if at(self._clock()) < self._lifecycle.policy.rotation_time(active, next_key):
            return None
        rotation = await self._lifecycle.rotate_if_due()
        if rotation is not None:
            report_rotation(rotation)
            await self._keyring.refresh()
        return rotation

    async def _tick_forever(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._reload_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick()
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError, LifecycleError, UnsealError) as exc:
                log.warning("key maintenance failed; retrying", extra={"cause": f"{type(exc).__name__}: {exc}"})
            except Exception:  # a bug: log it in full, but never let this instance stop following the keys
                log.exception("key maintenance failed unexpectedly; retrying")

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                connection = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings={"application_name": "tessera-keys"}
                )
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            delay = 0.5
            try:
                await self._listen_on(connection)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                events.key_listener_lost(f"{type(exc).__name__}: {exc}")
            finally:
                if self._feed is not None:
                    # Nobody listens now: the caches stop answering until they are rebuilt.
                    self._feed.lost()
                connection.terminate()

    async def _listen_on(self, connection: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(KEYS_CHANNEL, lambda *_: self._wake.set())
        if self._feed is not None:
            await self._feed.connected(connection)
        self._wake.set()  # whatever changed while nobody listened
        while True:
            try:
                async with asyncio.timeout(LISTEN_CHECK_SECONDS):
                    await lost.wait()
            except TimeoutError:
                # A server that keeps the socket open but stopped answering shows up here.
                await connection.fetchval("SELECT 1", timeout=5.0)
                continue
            events.key_listener_lost("connection closed")
            return
