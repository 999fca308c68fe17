"""What the database benchmarks share: a scratch database (an embedded PostgreSQL unless a server
URL is given), the schema with a client and users, families COPYed in bulk (not through the API),
and the server's rotation UPDATE driven directly with asyncpg.

Used by bench_refresh.py (rotation at 10 thousand and 1 or 10 million families) and bench_gc.py
(garbage-collection throughput). Run as scripts, they import it as ``scratch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tessera.server.store import db  # noqa: E402
from tessera.server.oauth.families import RefreshChain, RefreshToken  # noqa: E402
from tessera.server.store.families import FamilyStore  # noqa: E402

CLIENT, SECRET, PASSWORD = "bench", "bench-secret-0123456789", "bench password"
AUDIENCE = "https://api.example"
FILLER_USERS = 1000
FAMILY_COLUMNS = ["family_id", "client_id", "user_id", "scopes", "audience", "auth_time", "created_at", "expires_at",
                  "generation", "current_hash", "last_rotated_at", "idle_expires_at", "revoked_at", "revoked_reason"]
# The end of a family's row after current_hash: (last_rotated_at, idle_expires_at, revoked_at, revoked_reason)
# and its expires_at, given the family's index and the time of the fill. Default: live for weeks.
FamilyState = Callable[[int, datetime], tuple[datetime, datetime, datetime | None, str | None]]


def live(index: int, now: datetime) -> tuple[datetime, datetime, datetime | None, str | None]:
    """(expires_at, idle_expires_at, revoked_at, revoked_reason) of a live family."""
    return now + timedelta(days=30), now + timedelta(days=14), None, None


# --- a scratch database ---------------------------------------------------------------------------


class ScratchServer:
    """A PostgreSQL server on which this process makes databases and drops them all at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.made: list[str] = []

    async def admin(self, sql: str) -> None:
        connection = await asyncpg.connect(self.server_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    def dsn(self, name: str) -> str:
        parts = urlsplit(self.server_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    async def database(self, template: str | None = None) -> str:
        """A new empty database, or a file-level copy of the database ``template`` (its DSN; nothing
        may be connected to it); returns the new one's DSN."""
        name = f"tessera_bench_{os.getpid()}_{len(self.made)}"
        self.made.append(name)
        sql = f'CREATE DATABASE "{name}"'
        if template is not None:
            connection = await asyncpg.connect(self.server_url)
            try:
                version = int(await connection.fetchval("SELECT current_setting('server_version_num')"))
            finally:
                await connection.close()
            # FILE_COPY (PostgreSQL 15+): copy the files after a checkpoint, rather than the default
            # WAL_LOG, which writes the whole database into the WAL.
            sql += f' TEMPLATE "{urlsplit(template).path.lstrip("/")}"'
            sql += " STRATEGY FILE_COPY" if version >= 150000 else ""
        await self.admin(sql)
        return self.dsn(name)

    async def drop_all(self) -> None:
        for name in reversed(self.made):
            await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_server(server_url: str | None, workdir: Path) -> Iterator[ScratchServer]:
    """``server_url``, or an embedded PostgreSQL in ``workdir`` (Unix socket only, no TCP port),
    stopped at the end; every database made on it is dropped at the end."""
    embedded = None
    if server_url is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            embedded = pgserver.get_server(workdir / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
        server_url = embedded.get_uri()
    server = ScratchServer(server_url)
    try:
        yield server
    finally:
        try:
            asyncio.run(server.drop_all())
        finally:
            if embedded is not None:
                embedded.cleanup()


@contextlib.contextmanager
def scratch_database(server_url: str | None, workdir: Path) -> Iterator[str]:
    """One scratch database's DSN (see ``scratch_server``)."""
    with scratch_server(server_url, workdir) as server:
        yield asyncio.run(server.database())


async def prepare_schema(dsn: str, unique_hash_index: bool = False) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await db.migrate(connection)
        if unique_hash_index:
            await connection.execute("CREATE UNIQUE INDEX bench_current_hash ON refresh_families (current_hash)")
        await connection.copy_records_to_table(
            "users",
            columns=["user_id", "username", "password_hash"],
            records=[(uuid.uuid4(), f"filler-{i}", "x") for i in range(FILLER_USERS)],
        )
    finally:
        await connection.close()


async def create_client_and_user(dsn: str) -> None:
    from tessera.server.oauth.passwords import SecretHasher
    from tessera.server.settings import Argon2Profile
    from tessera.server.store import ClientStore, UserStore

    hasher = SecretHasher(Argon2Profile(time_cost=1, memory_kib=1024, parallelism=1))
    connection = await asyncpg.connect(dsn)
    try:
        await ClientStore(connection).create(
            CLIENT, secret_hash=hasher.hash_sync(SECRET), grant_types=["password", "refresh_token"],
            scopes=["read", "write"], audiences=[AUDIENCE],
        )
        await UserStore(connection).create("bench-user", hasher.hash_sync(PASSWORD))
    finally:
        hasher.close()
        await connection.close()


async def fill_families(dsn: str, total: int, state: FamilyState = live) -> None:
    """COPY filler families until the table holds ``total`` (not through the API); the n-th one
    COPYed (from 0) ends as ``state(n, now)`` says. VACUUM ANALYZE at the end, as after a day's
    traffic: hint bits set, the visibility map current."""
    connection = await asyncpg.connect(dsn)
    try:
        users = [r[0] for r in await connection.fetch("SELECT user_id FROM users WHERE username LIKE 'filler-%'")]
        missing = total - await connection.fetchval("SELECT count(*) FROM refresh_families")
        now = datetime.now(UTC)
        index = 0
        while missing > 0:
            batch = min(missing, 100_000)
            records = [
                (uuid.uuid4(), CLIENT, users[i % len(users)], ["read", "write"], AUDIENCE, now, now,
                 expires, 0, secrets.token_bytes(32), now, idle, revoked, reason)
                for i in range(index, index + batch)
                for expires, idle, revoked, reason in (state(i, now),)
            ]
            await connection.copy_records_to_table("refresh_families", columns=FAMILY_COLUMNS, records=records)
            missing -= batch
            index += batch
        await connection.execute("VACUUM ANALYZE refresh_families")
    finally:
        await connection.close()


async def server_settings(connection: asyncpg.Connection) -> dict[str, Any]:
    """The settings that decide what a write costs, for the report."""
    row = await connection.fetchrow(
        "SELECT current_setting('server_version') AS version, current_setting('fsync') AS fsync,"
        " current_setting('synchronous_commit') AS synchronous_commit,"
        " current_setting('shared_buffers') AS shared_buffers,"
        " current_setting('full_page_writes') AS full_page_writes, current_setting('max_wal_size') AS max_wal_size"
    )
    assert row is not None
    return dict(row)


async def table_facts(dsn: str) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS families, pg_total_relation_size('refresh_families') AS bytes FROM refresh_families"
        )
        assert row is not None
        return {**dict(row), **await server_settings(connection)}
    finally:
        await connection.close()


# --- the rotation UPDATE, driven directly -----------------------------------------------------------


def summary(count: int, seconds: float, latencies_ms: list[float], failures: int) -> dict[str, Any]:
    latencies_ms.sort()
    pick = (lambda q: latencies_ms[min(len(latencies_ms) - 1, int(q * len(latencies_ms)))]) if latencies_ms else None
    return {
        "rotations_per_s": round(count / seconds, 1),
        "p50_ms": round(pick(0.50), 3) if pick else None,
        "p99_ms": round(pick(0.99), 3) if pick else None,
        "rotations": count,
        "failures": failures,
    }


async def direct_families(dsn: str, chain: RefreshChain, count: int) -> list[RefreshToken]:
    """Families for the direct driver, with tokens whose chains it can walk."""
    tokens = [chain.first(uuid.uuid4()) for _ in range(count)]
    connection = await asyncpg.connect(dsn)
    try:
        user_id = await connection.fetchval("SELECT user_id FROM users WHERE username = 'bench-user'")
        now = datetime.now(UTC)
        await connection.copy_records_to_table(
            "refresh_families",
            columns=FAMILY_COLUMNS,
            records=[(t.family_id, CLIENT, user_id, ["read", "write"], AUDIENCE, now, now, now + timedelta(days=30),
                      0, t.digest, now, now + timedelta(days=14), None, None) for t in tokens],
        )
    finally:
        await connection.close()
    return tokens


async def rotate_chains(
    pool: asyncpg.Pool, chain: RefreshChain, tokens: list[RefreshToken], done: Callable[[], bool]
) -> tuple[list[float], int]:
    """The server's rotation UPDATE (``FamilyStore.rotate``, the waiting rotation function of migration 0009), one per round trip,
    autocommit (durable), one chain per token, until ``done()``; ``tokens`` is advanced in place to
    each chain's current token. Returns the latencies (ms) and the number of failed rotations."""
    store = FamilyStore(pool)
    latencies: list[float] = []
    failures = 0
    idle = timedelta(days=14)

    async def worker(index: int) -> None:
        nonlocal failures
        token = tokens[index]
        while not done():
            successor = chain.successor(token)
            now = datetime.now(UTC)
            started = time.perf_counter()
            rotated = await store.rotate(
                family_id=token.family_id, generation=token.generation, current_hash=token.digest,
                client_id=CLIENT, successor_hash=successor.digest, now=now, idle_expires_at=now + idle,
                scopes=None, audience=None,
            )
            if rotated is None:
                failures += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)
            token = successor
        tokens[index] = token

    await asyncio.gather(*(worker(i) for i in range(len(tokens))))
    return latencies, failures


async def direct_loop(dsn: str, chain: RefreshChain, tokens: list[RefreshToken], duration: float) -> dict[str, Any]:
    """``rotate_chains`` for ``duration`` seconds on a pool of one connection per chain, with the
    WAL it wrote per rotation."""
    pool = await asyncpg.create_pool(dsn, min_size=len(tokens), max_size=len(tokens))
    deadline = time.perf_counter() + duration
    try:
        wal_before = await pool.fetchval("SELECT pg_current_wal_lsn()")
        started = time.perf_counter()
        latencies, failures = await rotate_chains(pool, chain, tokens, lambda: time.perf_counter() >= deadline)
        elapsed = time.perf_counter() - started
        wal = await pool.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
    finally:
        await pool.close()
    result = summary(len(latencies), elapsed, latencies, failures)
    result["wal_bytes_per_rotation"] = round(float(wal) / max(1, len(latencies)))
    return result
