"""Helpers for the key-lifecycle tests: run Tessera as real `tessera serve` processes, build a
lifecycle over the test database. (Waiting for a condition and an in-process server:
tests.helpers.eventually and tests.helpers.tessera_server.)"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient
from joserfc.jwk import KeySet

from tessera.keys import material
from tessera.keys.kek import KekRing, seal
from tessera.keys.lifecycle import KeyLifecycle
from tessera.keys.store import NewKey
from tessera.server.tasks.key_scheduler import key_lifecycle
from tessera.server.settings import decode_kek, load_settings
from tessera.server.store import PgKeyStore
from tests.helpers import eventually
from tests.processes import Process, Processes, free_port

# A next key may sign after ceil(max-age + reload) = 61 s; the scheduler ticks every 50 ms.
FAST_KEYS = {"TESSERA_JWKS_MAX_AGE": "60", "TESSERA_KEY_RELOAD_INTERVAL": "0.05", "TESSERA_KEY_ROTATION_INTERVAL": "3600"}


def lifecycle_for(pool: asyncpg.Pool, env: dict[str, str], clock: Callable[[], float], **extra: str) -> KeyLifecycle:
    settings = load_settings({**env, **extra})
    assert settings.key_encryption_key is not None
    keks = KekRing(settings.key_encryption_key, settings.new_key_encryption_key)
    return key_lifecycle(settings, PgKeyStore(pool), keks, clock)


@contextlib.asynccontextmanager
async def lifecycle_on(env: dict[str, str], clock: Callable[[], float], **extra: str) -> AsyncIterator[KeyLifecycle]:
    """A KeyLifecycle with its own pool, as one more instance (or CLI) would have."""
    pool = await asyncpg.create_pool(env["TESSERA_DATABASE_URL"], min_size=1, max_size=2)
    try:
        yield lifecycle_for(pool, env, clock, **extra)
    finally:
        await pool.close()


def kek_bytes(text: str) -> bytes:
    return decode_kek(text, "kek")


def new_key(kek: bytes, alg: str = "ES256") -> NewKey:
    made = material.generate(alg)
    return NewKey(made.kid, made.alg, made.public_jwk, seal(kek, made.private_jwk_json, made.kid.encode()))


async def jwks_of(http: TestClient[Any, Any] | aiohttp.ClientSession, base: str = "") -> tuple[KeySet, list[str]]:
    """The key set an instance serves, and its kids in order (the active key first)."""
    async with http.get(f"{base}/.well-known/jwks.json") as response:
        assert response.status == 200
        document = await response.json(content_type=None)
    return KeySet.import_key_set(document), [k["kid"] for k in document["keys"]]


# --- real `tessera serve` processes ------------------------------------------------------------


def server_logs(log_dir: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted(log_dir.glob("server-*.stderr")))


@contextlib.asynccontextmanager
async def server_processes(env: dict[str, str], log_dir: Path, count: int, **extra: str) -> AsyncIterator[list[str]]:
    """Start ``count`` `tessera serve` processes on one database; yield their base URLs once all
    are ready; stop them (SIGTERM, then SIGKILL) however the test ends.

    Each gets an issuer of its own, so that readiness is checked on this very process and not on
    some other server that took the port first (the port is free when picked, not when bound; a
    process that lost that race is started again on another port)."""
    started = Processes(log_dir)
    urls: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            for index in range(count):
                issuer = f"https://tessera.test/instance-{index}-{secrets.token_hex(4)}"
                for attempt in range(3):
                    port = free_port()
                    process = started.serve(
                        f"server-{index}-{attempt}", {**env, **extra, "TESSERA_ISSUER": issuer}, "--port", str(port)
                    )
                    url = f"http://127.0.0.1:{port}"
                    if await _ready(session, process, url, issuer):
                        break
                else:
                    raise AssertionError(f"server {index} did not start:\n{server_logs(log_dir)}")
                urls.append(url)
        yield urls
    finally:
        started.stop_all()


async def _ready(session: aiohttp.ClientSession, process: Process, url: str, issuer: str) -> bool:
    """True once this process answers ready; False if it exited (for example: port taken)."""

    async def answered() -> str | None:
        if process.popen.poll() is not None:
            return "exited"
        try:
            async with session.get(f"{url}/.well-known/oauth-authorization-server") as metadata:
                if metadata.status != 200 or (await metadata.json())["issuer"] != issuer:
                    return None
            async with session.get(f"{url}/readyz") as response:
                return "ready" if response.status == 200 else None
        except aiohttp.ClientError:
            return None

    return await eventually(answered, timeout=30, what=f"{url} ready") == "ready"
