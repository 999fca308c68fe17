"""Schema migrations: numbered, recorded, safe when several instances start at once."""

from __future__ import annotations

import asyncio

import asyncpg

from tessera.server.store import db
from tests.helpers import with_database


async def test_concurrent_migrations_apply_each_migration_once(database_url):
    # A scratch database, so the run starts from nothing.
    admin = await asyncpg.connect(database_url)
    name = "tessera_migrate_race"
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    scratch = with_database(database_url, name)
    try:
        connections = [await asyncpg.connect(scratch) for _ in range(5)]
        results = await asyncio.gather(*(db.migrate(c) for c in connections))
        for c in connections:
            await c.close()
        applied = [name for result in results for name in result]
        expected = [f"{n:04d}_{m}" for n, m, _ in db._migrations()]
        assert sorted(applied) == sorted(expected)  # each applied exactly once across the five
        check = await asyncpg.connect(scratch)
        versions = [r["version"] for r in await check.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        await check.close()
        assert versions == list(range(1, len(expected) + 1))
    finally:
        admin = await asyncpg.connect(database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_failed_login_counters_are_unlogged_and_everything_else_is_logged(db_conn):
    # Counters may be lost in a crash (migration 0008 says why); keys, clients, users and refresh
    # families may not.
    persistence = dict(await db_conn.fetch(
        "SELECT c.relname, c.relpersistence::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    ))
    assert persistence.pop("login_failures") == "u"
    assert {"signing_keys", "clients", "users", "refresh_families", "server_secrets"} <= set(persistence)
    assert set(persistence.values()) == {"p"}, persistence
