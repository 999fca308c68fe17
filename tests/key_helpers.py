"""Helpers for the key-lifecycle tests: wait for a condition, run a Tessera server in-process or
as a real `tessera serve` process, build a lifecycle over the test database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from joserfc.jwk import KeySet

from keys import material
from keys.kek import KekRing, seal
from keys.lifecycle import KeyLifecycle
from keys.store import NewKey
from server.app import create_app
from server.key_scheduler import key_lifecycle
from server.settings import decode_kek, load_settings
from server.store import PgKeyStore

T = TypeVar("T")

# A next key may sign after ceil(max-age + reload) = 61 s; the scheduler ticks every 50 ms.
FAST_KEYS = {"TESSERA_JWKS_MAX_AGE": "60", "TESSERA_KEY_RELOAD_INTERVAL": "0.05", "TESSERA_KEY_ROTATION_INTERVAL": "3600"}


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def in_process_server(env: dict[str, str], clock: Callable[[], float], **extra: str) -> AsyncIterator[TestClient[Any, Any]]:
    settings = load_settings({**env, **extra})
    async with TestClient(TestServer(create_app(settings, clock=clock), host="127.0.0.1")) as http:
        yield http


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    full.update(env)
    full.update(extra)
    return full


def server_logs(log_dir: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted(log_dir.glob("server-*.log")))


@contextlib.asynccontextmanager
async def server_processes(env: dict[str, str], log_dir: Path, count: int, **extra: str) -> AsyncIterator[list[str]]:
    """Start ``count`` `tessera serve` processes on one database; yield their base URLs once all
    are ready; stop them (SIGTERM, then SIGKILL) however the test ends."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for index in range(count):
            port = free_port()
            log = open(log_dir / f"server-{index}.log", "wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
                    env=process_env(env, **extra),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
            urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as session:
            for url, process in zip(urls, processes):

                async def ready(url: str = url, process: subprocess.Popen[bytes] = process) -> bool:
                    assert process.poll() is None, server_logs(log_dir)
                    try:
                        async with session.get(f"{url}/readyz") as response:
                            return response.status == 200
                    except aiohttp.ClientConnectionError:
                        return False

                await eventually(ready, timeout=30, what=f"{url} ready")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
