"""Keeps this instance's keyring current and rotates the signing key when it is due.

- Every change to the key set (a rotation here or on any other host, a CLI command) wakes it
  through ``wake``, called by the process's LISTEN connection (``tessera.server.tasks.listener``):
  the keyring reloads within milliseconds.
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

from tessera.keys.kek import KekRing, UnsealError
from tessera.keys.keyring import Keyring, NoActiveKey
from tessera.keys.lifecycle import KeyLifecycle, LifecycleError, Policy, KeyRotation, at, key_roles
from tessera.keys.store import KeyStore
from tessera.server.ops import events
from tessera.server.store.db import DATABASE_UNAVAILABLE
from tessera.server.settings import Settings

log = logging.getLogger("tessera.keys")


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


def report_rotation(rotation: KeyRotation) -> None:
    if rotation.revoked:
        events.key_revoked(rotation.retired.kid)
    events.key_rotated(rotation.activated.kid, None if rotation.revoked else rotation.retired.kid)


class KeyScheduler:
    def __init__(
        self,
        keyring: Keyring,
        lifecycle: KeyLifecycle,
        *,
        reload_interval: float,
        clock: Callable[[], float],
    ) -> None:
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
        await self._keyring.reload()
        await self._lifecycle.declare_publication(key_roles(self._keyring.snapshot.keys)[1])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._tick_forever())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def wake(self) -> None:
        """The key set changed somewhere: reload now rather than at the next interval."""
        self._wake.set()

    async def tick(self) -> KeyRotation | None:
        """One step: reload, declare how long this instance's JWKS is cached, rotate if due."""
        try:
            snapshot = await self._keyring.reload()
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
            await self._keyring.reload()
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
