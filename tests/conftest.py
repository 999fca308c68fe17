"""Test fixtures: a real PostgreSQL, a real HTTP server, an injectable clock (tests.helpers.FakeClock).

The database is the one named by TESSERA_DATABASE_URL (a fresh database is created on it for the
run and dropped after), or else an embedded PostgreSQL (pgserver) in a temporary directory.
Every test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tessera.server.store import db
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.settings import Settings, load_settings
from tessera.server.store import Client, ClientStore, User, UserStore
from tests.helpers import PASSWORD, SECRET, FakeClock, tessera_server, with_database
from tests.processes import processes  # noqa: F401  (the fixture that starts real processes, for every module)

# Cheap argon2 in tests: the cost parameters are exercised by their own tests.
FAST_ARGON2 = {"TESSERA_ARGON2_TIME_COST": "1", "TESSERA_ARGON2_MEMORY_KIB": "1024", "TESSERA_ARGON2_PARALLELISM": "1"}
TABLES_KEPT = {"schema_migrations"}


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    external = os.environ.get("TESSERA_DATABASE_URL")
    name = f"tessera_test_{os.getpid()}"
    embedded = None
    tmp = None
    if external:
        admin_url = external
    else:
        tmp = tempfile.mkdtemp(prefix="tessera-test-pg-")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            embedded = pgserver.get_server(tmp, cleanup_mode="stop")
        admin_url = embedded.get_uri()

    async def setup() -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        connection = await asyncpg.connect(with_database(admin_url, name))
        try:
            await db.migrate(connection)
        finally:
            await connection.close()

    async def teardown() -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(setup())
    try:
        yield with_database(admin_url, name)
    finally:
        asyncio.run(teardown())
        if embedded is not None:
            embedded.cleanup()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def clean_database(database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        tables = [
            r["tablename"]
            for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r["tablename"] not in TABLES_KEPT
        ]
        if tables:
            await connection.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
    finally:
        await connection.close()
    return database_url


@pytest.fixture
def kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@pytest.fixture
def env(clean_database: str, kek: str, tmp_path: Any) -> dict[str, str]:
    """The environment a server under test is started with; tests may add to it."""
    return {
        "TESSERA_DATABASE_URL": clean_database,
        "TESSERA_KEY_ENCRYPTION_KEY": kek,
        "TESSERA_DATA_DIR": str(tmp_path / "data"),
        "TESSERA_ISSUER": "https://tessera.test",
        **FAST_ARGON2,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
async def client(settings: Settings, clock: FakeClock) -> AsyncIterator[TestClient[Any, Any]]:
    """An HTTP client talking to a real Tessera server on 127.0.0.1."""
    async with tessera_server(settings, clock) as http:
        yield http


@dataclass
class Admin:
    """What an operator does with the CLI, done directly against the same database."""

    pool: asyncpg.Pool
    hasher: SecretHasher

    async def client(
        self,
        client_id: str = "svc",
        *,
        secret: str | None = SECRET,
        grant_types: tuple[str, ...] = ("client_credentials",),
        scopes: tuple[str, ...] = ("read", "write"),
        audiences: tuple[str, ...] = ("https://orders.example", "https://billing.example"),
        redirect_uris: tuple[str, ...] = (),
        first_party: bool = False,
        exchange_from: tuple[str, ...] = (),
        jwks: dict[str, Any] | None = None,
        jwks_uri: str | None = None,
        allowed_origins: tuple[str, ...] = (),
        refresh_token_cookie: bool = False,
    ) -> Client:
        # With jwks or jwks_uri: a private_key_jwt client, which has keys instead of a secret.
        keys = jwks is not None or jwks_uri is not None
        secret_hash = await self.hasher.hash(secret) if secret is not None and not keys else None
        return await ClientStore(self.pool).create(
            client_id,
            secret_hash=secret_hash,
            grant_types=list(grant_types),
            scopes=list(scopes),
            audiences=list(audiences),
            redirect_uris=list(redirect_uris),
            first_party=first_party,
            exchange_from=list(exchange_from),
            token_endpoint_auth_method="private_key_jwt" if keys else None,
            jwks=jwks,
            jwks_uri=jwks_uri,
            allowed_origins=list(allowed_origins),
            refresh_token_cookie=refresh_token_cookie,
        )

    async def user(self, username: str = "alice", password: str = PASSWORD) -> User:
        return await UserStore(self.pool).create(username, await self.hasher.hash(password))


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[Admin]:
    assert settings.database_url is not None
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    hasher = SecretHasher(settings.argon2)
    try:
        yield Admin(pool, hasher)
    finally:
        hasher.close()
        await pool.close()


@pytest.fixture
async def db_conn(clean_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(clean_database)
    try:
        yield connection
    finally:
        await connection.close()
