"""PostgreSQL: the embedded server for development, the connection pool, and schema migrations.

With ``TESSERA_DATABASE_URL`` unset, Tessera runs a real PostgreSQL from the ``pgserver`` wheel
with its data under ``TESSERA_DATA_DIR/pg``; several local processes (``tessera serve`` and the
CLI) share it, and it stops when the last of them exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.resources
import logging
import math
import os
import re
import secrets
import base64
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from tessera.keys.kek import KekRing
from tessera.server.settings import Settings, SettingsError, decode_kek

log = logging.getLogger("tessera.db")

# What a lost, refused or silent database raises: every caller answers 503 or retries on these.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.InterfaceError,
    # A pooled connection whose backend was terminated while idle (pg_terminate_backend, a
    # failover) has already received PostgreSQL's FATAL message; asyncpg then refuses the next
    # query on it with this, not with a connection error (MagicStack/asyncpg#784, #1069). Nothing
    # was sent: like a lost connection, it is 503 and the pool replaces the connection.
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)

# Any fixed 64-bit number; every instance takes this lock before migrating.
MIGRATION_LOCK_ID = 0x7E55E4A_0001
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Database:
    """Where the database is and the key-encryption key that goes with it."""

    dsn: str
    kek: bytes  # empty when the command was started without one (it then never opens a key)
    embedded: Any = None  # the pgserver handle, kept alive while the process uses it
    new_kek: bytes | None = None  # only while the KEK is being changed (TESSERA_NEW_KEY_ENCRYPTION_KEY)

    @property
    def keks(self) -> KekRing:
        """What opens sealed keys and secrets: the KEK and, during a change, the new one."""
        return KekRing(self.kek, self.new_kek)


@contextlib.contextmanager
def open_database(settings: Settings) -> Iterator[Database]:
    """Yield the DSN to use: the configured server, or the embedded one started on demand."""
    if settings.database_url is not None:
        yield Database(settings.database_url, settings.key_encryption_key or b"", None, settings.new_key_encryption_key)
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    kek = settings.key_encryption_key or _dev_kek(settings.data_dir)
    server = _start_embedded(settings.data_dir / "pg")
    try:
        yield Database(server.get_uri(), kek, server, settings.new_key_encryption_key)
    finally:
        server.cleanup()


def _start_embedded(pgdata: Path) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            # The container image leaves the embedded database out: it always has a real one.
            raise SettingsError(
                "TESSERA_DATABASE_URL: required here (the embedded PostgreSQL, pgserver, is not installed)"
            ) from None

        return pgserver.get_server(pgdata, cleanup_mode="stop")


def _dev_kek(data_dir: Path) -> bytes:
    """The development key-encryption key: made once, mode 0600, beside the embedded database."""
    path = data_dir / "key-encryption-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return decode_kek(path.read_text(), str(path))
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=") + "\n")
    return decode_kek(path.read_text(), str(path))


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default RESET ALL / UNLISTEN / advisory-unlock round trip.

    asyncpg still rolls back any open transaction first. Tessera leaves no other session state on
    pooled connections (advisory locks are transaction-scoped, LISTEN uses its own connection), so
    the default reset would only add a second round trip to every request.
    """


# --- a request's deadline, in the database's clock -----------------------------------------------
#
# The server answers a request 503 when its time is up (tessera.server.http.limits), but a statement
# it sent may still be queued at a frozen backend or waiting for a lock, and would commit after the
# answer has gone. So every write a request makes carries the moment from which the server may have
# given up on it, as a moment of the DATABASE's clock, and the statement refuses to finish past it
# (``tessera_before_deadline``, migration 0010): the transaction rolls back instead of committing.


class GivesUp(Protocol):
    """When the server stops waiting for a request and answers it 503 (``limits.Deadline``):
    ``when`` in the event loop's clock, None while no clock runs."""

    when: float | None


# The request being handled, set by tessera.server.http.limits.with_deadline; None outside a request
# (the CLI, background tasks), whose statements carry no deadline.
REQUEST_GIVES_UP: contextvars.ContextVar[GivesUp | None] = contextvars.ContextVar("tessera_request_gives_up", default=None)

# How long before the server's moment the database refuses to commit: room for the commit to reach
# the disk and its answer to reach the server, and for the two clocks to drift apart between
# measurements. It equals how much longer the client side waits than the statement timeout
# (``create_pool``), so a statement sent at once is refused no earlier than PostgreSQL's own
# statement timeout would cancel it.
DEADLINE_MARGIN_SECONDS = 1.0
# A connection's clock is measured when it opens, and again after this long (drift, a stepped clock);
CLOCK_RESYNC_SECONDS = 60.0
# sooner (after a second) if its measurement took longer than this: a slow round trip makes every
# deadline early by as much, which is safe but may refuse work that was in time.
CLOCK_ROUND_TRIP_SECONDS = 0.1


def request_gives_up() -> float | None:
    """When the server gives up on the request being handled (event-loop time), or None."""
    deadline = REQUEST_GIVES_UP.get()
    return deadline.when if deadline is not None else None


class DatabaseClock:
    """How one connection's database clock (``clock_timestamp()``) reads against this process's
    event-loop clock: the server and PostgreSQL may run on hosts whose clocks disagree by any amount,
    so a moment of the server's is handed to a statement converted with an offset measured on the
    connection itself.

    One query measures it: the database read its clock at some moment between sending and
    receiving, so ``database_now - received`` can only be early. A deadline converted with it
    comes, by the database's clock, no later than the server's moment.
    """

    __slots__ = ("_offset", "_measured_at", "_round_trip", "_client_timeout")

    def __init__(self, client_timeout: float) -> None:
        self._client_timeout = client_timeout  # the pool's command_timeout
        self._offset = 0.0
        self._measured_at = -math.inf
        self._round_trip = math.inf

    async def measure(self, connection: asyncpg.Connection) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        database_now = await connection.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        received = loop.time()
        self._offset, self._measured_at, self._round_trip = float(database_now) - received, received, received - sent

    def stale(self, now: float) -> bool:
        age = now - self._measured_at
        return age > CLOCK_RESYNC_SECONDS or (self._round_trip > CLOCK_ROUND_TRIP_SECONDS and age > 1.0)

    def deadline(self, gives_up: float | None, now: float) -> datetime | None:
        """The deadline, in the database's clock, of a statement sent ``now`` for a request whose
        server gives up at ``gives_up`` (None: no request waits, no deadline)."""
        if gives_up is None:
            return None
        # The client side also stops waiting for the statement after the pool's command timeout.
        give_up = min(gives_up, now + self._client_timeout)
        return datetime.fromtimestamp(give_up + self._offset - DEADLINE_MARGIN_SECONDS, UTC)


class ClockedConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no type hints
    """A pooled connection with its ``DatabaseClock``, set when it opens (``create_pool``)."""

    __slots__ = ("database_clock",)


def _clock_starter(client_timeout: float) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    async def start_clock(connection: asyncpg.Connection) -> None:
        clock = DatabaseClock(client_timeout)
        await clock.measure(connection)
        connection.database_clock = clock

    return start_clock


async def statement_deadlines(connection: asyncpg.Connection, gives_up: Sequence[float | None]) -> list[datetime | None]:
    """The deadlines of statements (or rows of one) about to be sent on ``connection`` for requests
    that give up at ``gives_up``, for ``tessera_before_deadline``. No extra round trip, except
    the clock's own measurement once a minute per connection. All None on a connection that has no
    clock (not from ``create_pool``: the CLI's, a test's)."""
    clock: DatabaseClock | None = getattr(connection, "database_clock", None)
    if clock is None or all(moment is None for moment in gives_up):
        return [None] * len(gives_up)
    loop = asyncio.get_running_loop()
    if clock.stale(loop.time()):
        await clock.measure(connection)
    now = loop.time()
    return [clock.deadline(moment, now) for moment in gives_up]


async def fetchval_before_deadline(db: asyncpg.Pool | asyncpg.Connection, sql: str, *args: object) -> Any:
    """One write a request makes, with the request's deadline as the statement's last parameter (in
    the clock of the connection that sends it; None outside a request), for ``tessera_before_deadline``."""
    return await _before_deadline(db, "fetchval", sql, args)


async def fetchrow_before_deadline(db: asyncpg.Pool | asyncpg.Connection, sql: str, *args: object) -> Any:
    """``fetchval_before_deadline``, answering the statement's row."""
    return await _before_deadline(db, "fetchrow", sql, args)


async def _before_deadline(db: asyncpg.Pool | asyncpg.Connection, fetch: str, sql: str, args: tuple[object, ...]) -> Any:
    gives_up = request_gives_up()
    if gives_up is None or not isinstance(db, asyncpg.Pool):
        (deadline,) = await statement_deadlines(db, [gives_up])
        return await getattr(db, fetch)(sql, *args, deadline)
    async with db.acquire() as connection:
        (deadline,) = await statement_deadlines(connection, [gives_up])
        return await getattr(connection, fetch)(sql, *args, deadline)


async def fetchval_committed_locally(db: asyncpg.Pool | asyncpg.Connection, sql: str, *args: object) -> Any:
    """One statement in its own transaction whose commit does not wait for a synchronous standby
    (``synchronous_commit = local``): for the marks that settle a write whose acknowledgement was
    lost, which a standby being away is one reason for, and which are of no use where the write
    they mark is lost."""
    async with contextlib.AsyncExitStack() as stack:
        connection = await stack.enter_async_context(db.acquire()) if isinstance(db, asyncpg.Pool) else db
        await stack.enter_async_context(connection.transaction())
        await connection.execute("SET LOCAL synchronous_commit TO local")
        return await connection.fetchval(sql, *args)


class PoolObserver(Protocol):
    def pool_opened(self, max_size: int) -> None: ...

    def pool_acquired(self, seconds: float, exhausted: bool) -> None: ...

    def pool_released(self) -> None: ...


class MeteredPool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no type hints
    """asyncpg's pool, first come first served, telling an observer how long each acquire took and
    whether every connection was in use. Only the public ``acquire`` and ``release`` are wrapped
    (``fetch`` and friends go through them); connections in use are counted here, not by walking
    the pool on each call.

    Why the gate: asyncpg hands out connections through an ``asyncio.Queue``, which lets a request
    that arrives just as a connection is released take it ahead of the waiter that was woken for
    it, and sends that waiter to the back of the line. Under load (64 connections over 20) some
    requests waited ten times the mean: refresh p99 250-330 ms at a p50 of 13-18 ms. A semaphore
    (FIFO since Python 3.11.1) in front of it serves waiters in order.
    """

    __slots__ = ("_observer", "_in_use", "_gate")

    def __init__(self, dsn: str, *, observer: PoolObserver | None, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self._observer = observer
        self._in_use = 0
        self._gate: asyncio.Semaphore | None = None

    def acquire(self, *, timeout: float | None = None) -> Any:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.get_max_size())
        return _GatedAcquire(self, self._gate, super().acquire(timeout=timeout), timeout)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if self._gate is not None:
                self._gate.release()
            if self._observer is not None:
                self._in_use -= 1
                self._observer.pool_released()


class _GatedAcquire:
    """Usable as ``async with pool.acquire()`` and ``await pool.acquire()``, like asyncpg's own."""

    __slots__ = ("_pool", "_gate", "_inner", "_timeout")

    def __init__(self, pool: MeteredPool, gate: asyncio.Semaphore, inner: Any, timeout: float | None) -> None:
        self._pool, self._gate, self._inner, self._timeout = pool, gate, inner, timeout

    async def _acquire(self, acquiring: Callable[[], Awaitable[Any]]) -> Any:
        pool, observer = self._pool, self._pool._observer
        exhausted = pool._in_use >= pool.get_max_size()
        started = time.perf_counter()
        async with asyncio.timeout(self._timeout):
            await self._gate.acquire()
        try:
            connection = await acquiring()
        except BaseException:
            self._gate.release()
            raise
        if observer is not None:
            pool._in_use += 1
            observer.pool_acquired(time.perf_counter() - started, exhausted)
        return connection

    async def __aenter__(self) -> Any:
        return await self._acquire(self._inner.__aenter__)

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._acquire(lambda: self._inner).__await__()


async def create_pool(
    dsn: str, *, size: int, statement_timeout: float, observer: PoolObserver | None = None
) -> asyncpg.Pool:
    """A pool on ``dsn`` as given: asyncpg reads several hosts, ``sslmode``, ``sslrootcert`` and
    ``target_session_attrs`` from it, as libpq does."""
    # Bounds every query client-side too, so a database that accepts connections but never answers
    # cannot hang a request past the statement timeout.
    command_timeout = statement_timeout + 1.0
    pool = MeteredPool(
        dsn,
        observer=observer,
        # asyncpg.create_pool's own defaults; it has no way to name a Pool subclass.
        min_size=1,
        max_size=size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        setup=None,
        # Each connection learns how its database's clock reads against ours (request deadlines).
        init=_clock_starter(command_timeout),
        loop=None,
        connection_class=ClockedConnection,
        record_class=asyncpg.Record,
        reset=_keep_session,
        command_timeout=command_timeout,
        timeout=min(statement_timeout, 10.0),
        server_settings={
            "application_name": "tessera",
            "statement_timeout": str(int(statement_timeout * 1000)),
            "idle_in_transaction_session_timeout": str(int(statement_timeout * 2000)),
        },
    )
    await pool
    if observer is not None:
        observer.pool_opened(size)
    return pool


async def create_pool_when_reachable(dsn: str, *, wait: float, **options: Any) -> asyncpg.Pool:
    """``create_pool``, retried while the database cannot be reached, for up to ``wait`` seconds.

    A server started together with its database (compose, a rebooted host) waits for it with one
    log line per try instead of dying at once; past ``wait`` the last error stops the start.
    Errors that retrying cannot fix (a wrong password, a missing database) stop it at once.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait
    delay = 0.25
    while True:
        try:
            return await create_pool(dsn, **options)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError) as exc:
            left = give_up - loop.time()
            if left <= 0:
                log.error("database unreachable; giving up", extra={"cause": f"{type(exc).__name__}: {exc}"})
                raise
            delay = min(delay * 2, 5.0, left)
            log.warning(
                "database unreachable; retrying",
                extra={"cause": f"{type(exc).__name__}: {exc}", "retry_in": round(delay, 2), "gives_up_in": round(left, 1)},
            )
            await asyncio.sleep(delay)


async def close_pool(pool: asyncpg.Pool, timeout: float) -> None:
    """Close gracefully, but never hang a shutdown on a database that stopped answering."""
    try:
        async with asyncio.timeout(timeout):
            await pool.close()
    except TimeoutError:
        log.warning("database did not answer the pool's goodbye; connections dropped")
        pool.terminate()


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in importlib.resources.files("tessera.server.store.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [number for number, _, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n without gaps: {numbers}")
    return found


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Apply pending migrations in order, in one transaction, under an advisory lock.

    Several instances starting together serialise on the lock; the later ones find nothing to do.
    Returns the names applied.
    """
    applied_now = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for number, name, sql in _migrations():
            if number in done:
                continue
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name
            )
            applied_now.append(f"{number:04d}_{name}")
    for name in applied_now:
        log.info("migration applied", extra={"migration": name})
    return applied_now


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn, server_settings={"application_name": "tessera-cli"})
    try:
        yield connection
    finally:
        await connection.close()


__all__ = [
    "REQUEST_GIVES_UP", "Database", "DatabaseClock", "close_pool", "connect", "create_pool", "create_pool_when_reachable",
    "migrate", "open_database", "request_gives_up", "statement_deadlines",
]
