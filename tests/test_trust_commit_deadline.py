"""A request answered with an error has changed nothing and never will (CONTRACT.md, Robustness; issue
17, "a 503 changes nothing"): work the server left at a frozen, slow or killed database never commits
after the answer has gone.

The server answers 503 when a request's time is up, but the statement it sent may still be queued at
a frozen backend or waiting for a lock. Were it to commit later, a refresh answered 503 would have
spent the token its client still holds, whose retry is then reuse (with no grace the whole family is
revoked), a revocation answered 503 would revoke after all, and a login answered 503 would leave a
family nobody holds a token of. Each test leaves a request's write at the database past the moment
the server gives up, lets the database go on, and shows the write never landed.

Frozen: the server's backend is stopped (SIGSTOP), as a frozen PostgreSQL looks to a statement, and
continued after the 503; a statement queued at a stopped backend runs when it resumes (the cancel
the client sent is ignored by a backend that had not read the statement yet). Slow: a rotation,
which the server sends on behalf of its request and does not cancel with it (group commit), starts
late in its request's time (an earlier read held by a lock) and waits for a row lock until after
the 503. Killed: the lock holder's backend, or the waiting backend itself, is terminated
(``pg_terminate_backend``). Refreshes go alone and in one batch; the batch's size is read from
/metrics. To freeze the database between a request's reads and its write, the write is held at
the store until the backend is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tessera.server.oauth.families import parse_refresh_token
from tessera.server.store import db
from tessera.server.store.families import FamilyStore
from tests.helpers import PASSWORD, SECRET, basic, eventually, post_token, tessera_server
from tests.processes import parse_metrics, sample
from tests.sessions import APP_GRANTS, call, family_id_of, family_row, login, refresh
from tests.test_garbage_collection import LIVE, _families, owner  # noqa: F401  (the fixture)

# Frozen: one pool connection, so every statement of the server goes to the one backend frozen; a
# short statement timeout, so the server gives up soon (the pool's command timeout, 2 s).
FROZEN = {"TESSERA_DB_POOL_SIZE": "1", "TESSERA_DB_STATEMENT_TIMEOUT": "1", "TESSERA_REFRESH_REUSE_GRACE": "0"}
# Slow: the server gives up on a request 4 + 2 s after its body arrived (tessera.server.http.limits),
# and PostgreSQL cancels a statement 4 s after it started.
SLOW = {"TESSERA_DB_STATEMENT_TIMEOUT": "4", "TESSERA_REFRESH_REUSE_GRACE": "0"}
# How long an earlier read of the request is held: less than the statement timeout (it is not
# cancelled), more than the 2 s the server allows past it, so the write starts with less than a
# statement timeout left and PostgreSQL's own timeout would not stop it before the 503.
HOLD_READ = 3.0
# Time for a statement released at the database to run and, had it been allowed, commit.
SETTLE = 1.0

SERVER_BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tessera'"
)
# A rotation inside PostgreSQL waiting for a row lock (alone: the waiting function; any version).
ROTATION_WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tessera'"
    " AND wait_event_type = 'Lock' AND query LIKE '%rotate_families_waiting%'"
)


# --- freezing the server's backends ----------------------------------------------------------------

def _is_local_postgres(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"postgres" in cmdline.read()
    except OSError:
        return False


async def _server_backend(db_conn: asyncpg.Connection) -> int:
    """The one backend of a server with one pool connection; skips the test when the database does
    not run on this machine (its processes cannot be stopped from here)."""
    pids = [row["pid"] for row in await db_conn.fetch(SERVER_BACKENDS)]
    assert len(pids) == 1, pids
    if not _is_local_postgres(pids[0]):
        pytest.skip("the database's processes are not on this machine")
    return pids[0]


@contextlib.contextmanager
def _frozen(pid: int) -> Iterator[None]:
    """The backend stopped (SIGSTOP) for the block, then continued, however the block ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# --- holding locks from another session --------------------------------------------------------------

@contextlib.asynccontextmanager
async def _holding(url: str, statement: str, *args: Any) -> AsyncIterator[asyncpg.Connection]:
    """Another session's transaction that ran ``statement`` and holds its locks until the block ends
    (rolled back), or until the test terminates its backend."""
    connection = await asyncpg.connect(url, server_settings={"application_name": "lock-holder"})
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute(statement, *args)
        yield connection
        if not connection.is_closed():
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
                await transaction.rollback()
    finally:
        connection.terminate()


async def _terminate(db_conn: asyncpg.Connection, pid: int, *, wait: bool = True) -> None:
    """``pg_terminate_backend``; waits until the backend has gone, unless it cannot (frozen)."""
    if wait:
        assert await db_conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    else:
        assert await db_conn.fetchval("SELECT pg_terminate_backend($1)", pid)


# --- what the client holds, and what the database says of it -----------------------------------------

def _digest(token: str) -> bytes:
    parsed = parse_refresh_token(token)
    assert parsed is not None
    return parsed.digest


async def _assert_still_current(db_conn: asyncpg.Connection, token: str) -> None:
    """The family is live and its current token is ``token``: nothing was spent or revoked."""
    row = await family_row(db_conn, token)
    parsed = parse_refresh_token(token)
    assert parsed is not None
    assert (row["generation"], bytes(row["current_hash"]), row["revoked_at"]) == (parsed.generation, parsed.digest, None)


async def _assert_refreshes(http: TestClient[Any, Any], token: str) -> str:
    """With no grace, a spent token would be reuse here (400, family revoked): it must refresh."""
    status, body = await refresh(http, token)
    assert status == 200, body
    return str(body["refresh_token"])


def _unavailable(status: int, body: dict[str, Any]) -> bool:
    return status == 503 and body.get("error") == "temporarily_unavailable"


async def _batches(http: TestClient[Any, Any]) -> tuple[float, float]:
    """Rotation statements sent so far, and how many of them carried more than one row."""
    response = await http.get("/metrics")
    parsed = parse_metrics(await response.text())
    count = sample(parsed, "tessera_refresh_rotation_batch_rows_count")
    single = sample(parsed, "tessera_refresh_rotation_batch_rows_bucket", le="1.0")
    return count, count - single


# --- raw HTTP, so several requests reach the server at the same instant ------------------------------

async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), json.loads(body) if body else {}


def _refresh_request(token: str) -> bytes:
    body = urlencode({"grant_type": "refresh_token", "refresh_token": token}).encode()
    head = (
        "POST /token HTTP/1.1\r\nHost: tessera.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Authorization: {basic('app', SECRET)['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@contextlib.asynccontextmanager
async def _connections(http: TestClient[Any, Any], count: int) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``count`` keep-alive connections, each already served once (so the server reads the next
    request on it as soon as it arrives)."""
    opened = [await asyncio.open_connection(http.host, http.port) for _ in range(count)]
    try:
        for reader, writer in opened:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: tessera.test\r\n\r\n")
            assert (await _read_answer(reader))[0] == 200
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def _refresh_together(
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], tokens: list[str]
) -> list[tuple[int, dict[str, Any]]]:
    """All the requests written before the server's loop runs again, so it reads them in one turn
    and their rotations are sent as one batch."""
    for (_, writer), token in zip(connections, tokens):
        writer.write(_refresh_request(token))
    return list(await asyncio.gather(*(_read_answer(reader) for reader, _ in connections)))


# --- frozen ------------------------------------------------------------------------------------------

@pytest.fixture
async def app_and_alice(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    await admin.user("alice")


async def _warm_up(http: TestClient[Any, Any]) -> None:
    """A login and a refresh, so the server answers the client's authentication from memory (the
    next refresh goes to the database with its rotation and nothing else), and the statements are
    prepared on the connection: the next one is sent whole, as on any long-lived connection, and not
    a preparation first that a frozen backend would never answer."""
    await _assert_refreshes(http, (await login(http))["refresh_token"])


class _Held:
    """Calls of a store method held until the test lets them go (it stops the backend meanwhile)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
        self.reached, self.go = asyncio.Event(), asyncio.Event()
        self.go.set()
        original = getattr(owner, name)

        async def held(*args: Any, **kwargs: Any) -> Any:
            self.reached.set()
            await self.go.wait()
            return await original(*args, **kwargs)

        monkeypatch.setattr(owner, name, held)

    def hold(self) -> None:
        """Hold the next call (until now, calls went through)."""
        self.reached.clear()
        self.go.clear()


@pytest.mark.parametrize("then", ["thawed", "killed, then thawed"])
async def test_a_refresh_answered_503_under_a_frozen_database_never_commits_later(env, app_and_alice, db_conn, then):
    async with tessera_server(env, **FROZEN) as http:
        await _warm_up(http)
        token = (await login(http))["refresh_token"]
        sent_before, _ = await _batches(http)
        backend = await _server_backend(db_conn)
        with _frozen(backend):
            started = time.monotonic()
            status, body = await refresh(http, token)
            assert _unavailable(status, body), (status, body)
            assert time.monotonic() - started < 10
            # The rotation went to the database (not stuck before it) and is queued at the frozen backend.
            assert (await _batches(http))[0] == sent_before + 1
            if then == "killed, then thawed":
                await _terminate(db_conn, backend, wait=False)  # it dies when it runs again
        await asyncio.sleep(SETTLE)
        await _assert_still_current(db_conn, token)
        await _assert_refreshes(http, token)


async def test_a_batch_of_refreshes_answered_503_under_a_frozen_database_never_commits_later(env, app_and_alice, db_conn):
    async with tessera_server(env, **FROZEN) as http:
        await _warm_up(http)
        tokens = [(await login(http))["refresh_token"] for _ in range(6)]
        async with _connections(http, len(tokens)) as connections:
            # A batch first, so the batch's statement is prepared on the connection too.
            _, batched_before = await _batches(http)
            warm = [(await login(http))["refresh_token"] for _ in range(2)]
            assert [status for status, _ in await _refresh_together(connections[:2], warm)] == [200, 200]
            _, batched_before = await _batches(http)
            assert batched_before > 0
            with _frozen(await _server_backend(db_conn)):
                answers = await _refresh_together(connections, tokens)
                assert all(_unavailable(status, body) for status, body in answers), answers
                assert (await _batches(http))[1] > batched_before, "the rotations were not sent together"
        await asyncio.sleep(SETTLE)
        for token in tokens:
            await _assert_still_current(db_conn, token)
            await _assert_refreshes(http, token)


# --- slow and killed ---------------------------------------------------------------------------------

async def test_a_refresh_answered_503_while_its_row_is_locked_never_commits_when_the_holder_is_killed(
    env, app_and_alice, db_conn, clean_database
):
    async with tessera_server(env, **SLOW) as first:
        token = (await login(first))["refresh_token"]
    # An instance that has not seen the client yet: its authentication reads the client's row, held
    # here past the 2 s margin, so the rotation starts late in the request's time.
    async with tessera_server(env, **SLOW) as second:
        row_lock = "SELECT 1 FROM refresh_families WHERE family_id = $1 FOR UPDATE"
        async with _holding(clean_database, row_lock, family_id_of(token)) as holder:
            async with _holding(clean_database, "LOCK TABLE clients IN ACCESS EXCLUSIVE MODE"):
                answer = asyncio.ensure_future(refresh(second, token))
                await asyncio.sleep(HOLD_READ)
            status, body = await answer
            assert _unavailable(status, body), (status, body)
            assert await db_conn.fetch(ROTATION_WAITING), "the rotation is no longer waiting inside PostgreSQL"
            # The session holding the row dies; its lock goes, and the rotation could go on.
            await _terminate(db_conn, holder.get_server_pid())
        await asyncio.sleep(SETTLE)
        await _assert_still_current(db_conn, token)
        await _assert_refreshes(second, token)


async def test_in_a_slow_batch_only_the_rows_whose_requests_gave_up_are_refused(env, app_and_alice, db_conn, clean_database):
    """Six refreshes go to the database as one batch; two of their families are locked by other
    sessions. The other four are answered 200 and committed; one locked rotation has its own
    backend terminated while it waits (503 at once, nothing committed); the other waits past its
    503, and its lock is then released: it must not commit."""
    async with tessera_server(env, **SLOW) as first:
        tokens = [(await login(first))["refresh_token"] for _ in range(6)]
    released, killed = tokens[0], tokens[1]
    row_lock = "SELECT 1 FROM refresh_families WHERE family_id = $1 FOR UPDATE"
    async with tessera_server(env, **SLOW) as second:
        _, batched_before = await _batches(second)
        async with (
            _holding(clean_database, row_lock, family_id_of(released)),
            _holding(clean_database, row_lock, family_id_of(killed)) as killed_holder,
        ):
            async with _holding(clean_database, "LOCK TABLE clients IN ACCESS EXCLUSIVE MODE"):
                answers = asyncio.gather(*(refresh(second, token) for token in tokens))
                await asyncio.sleep(HOLD_READ)

            async def waiting_for_the_killed_row() -> int | None:
                return await db_conn.fetchval(
                    ROTATION_WAITING + " AND $1 = ANY (pg_blocking_pids(pid))", killed_holder.get_server_pid()
                )

            await _terminate(db_conn, await eventually(waiting_for_the_killed_row, what="the rotation waiting"))
            results = await answers
            assert await db_conn.fetch(ROTATION_WAITING), "the released row's rotation is no longer waiting"
        # Both locks are gone now (the holders rolled back).
        assert (await _batches(second))[1] > batched_before, "the rotations were not sent together"
        await asyncio.sleep(SETTLE)
        for token, (status, body) in zip(tokens, results):
            if token in (released, killed):
                assert _unavailable(status, body), (status, body)
                await _assert_still_current(db_conn, token)
                await _assert_refreshes(second, token)
            else:
                # Answered 200: committed before the answer, and the new token is the live one.
                assert status == 200, body
                await _assert_still_current(db_conn, body["refresh_token"])
                await _assert_refreshes(second, body["refresh_token"])


async def test_a_revocation_answered_503_under_a_frozen_database_never_commits_later(
    env, app_and_alice, db_conn, monkeypatch
):
    revocation = _Held(monkeypatch, FamilyStore, "revoke")
    async with tessera_server(env, **FROZEN) as http:
        await _warm_up(http)
        assert (await call(http, "/revoke", (await login(http))["refresh_token"]))[0] == 200
        revocation.hold()
        token = (await login(http))["refresh_token"]
        backend = await _server_backend(db_conn)
        answer = asyncio.ensure_future(call(http, "/revoke", token))
        await asyncio.wait_for(revocation.reached.wait(), 10)  # the family was read; its revocation is next
        with _frozen(backend):
            revocation.go.set()
            status, body = await answer
            assert _unavailable(status, body), (status, body)
        await asyncio.sleep(SETTLE)
        await _assert_still_current(db_conn, token)
        await _assert_refreshes(http, token)


async def test_a_login_answered_503_under_a_frozen_database_never_makes_its_family_later(
    env, app_and_alice, db_conn, monkeypatch
):
    family = _Held(monkeypatch, FamilyStore, "create")
    async with tessera_server(env, **FROZEN) as http:
        await _warm_up(http)
        family.hold()
        backend = await _server_backend(db_conn)
        before = await db_conn.fetchval("SELECT count(*) FROM refresh_families")
        answer = asyncio.ensure_future(post_token(
            http, {"grant_type": "password", "username": "alice", "password": PASSWORD}, headers=basic("app", SECRET)
        ))
        await asyncio.wait_for(family.reached.wait(), 10)  # password checked, counters written; the family is next
        with _frozen(backend):
            family.go.set()
            status, body, _ = await answer
            assert _unavailable(status, body), (status, body)
        await asyncio.sleep(SETTLE)
        assert await db_conn.fetchval("SELECT count(*) FROM refresh_families") == before
        await _assert_refreshes(http, (await login(http))["refresh_token"])  # and the next sign-in works


# --- the deadline of each row of a batch ------------------------------------------------------------

@pytest.fixture
async def pool(clean_database):
    pool = await db.create_pool(clean_database, size=4, statement_timeout=10)
    yield pool
    await pool.close()


class _Request:
    """A request's deadline as the HTTP layer sets it (``limits.Deadline``): loop time."""

    def __init__(self, when: float) -> None:
        self.when: float | None = when


async def test_a_batched_rotation_whose_request_gave_up_refuses_only_itself(owner, db_conn, pool):  # noqa: F811
    ids = await _families(db_conn, owner, [LIVE] * 5)
    hashes = {row["family_id"]: bytes(row["current_hash"]) for row in await db_conn.fetch(
        "SELECT family_id, current_hash FROM refresh_families")}
    store = FamilyStore(pool)
    loop = asyncio.get_running_loop()
    now = datetime.now(UTC)

    async def rotate(family_id: uuid.UUID, gives_up: float) -> Any:
        db.REQUEST_GIVES_UP.set(_Request(gives_up))  # this task is that request
        return await store.rotate(
            family_id=family_id, generation=0, current_hash=hashes[family_id], client_id="app",
            successor_hash=family_id.bytes * 2, now=now, idle_expires_at=now + timedelta(hours=1), scopes=None,
            audience=None,
        )

    late = ids[2]
    results = await asyncio.gather(
        *(rotate(family_id, loop.time() - 5 if family_id == late else loop.time() + 30) for family_id in ids),
        return_exceptions=True,
    )
    refused = results[ids.index(late)]
    assert isinstance(refused, asyncpg.QueryCanceledError), refused  # answered 503
    assert all(result is not None and not isinstance(result, BaseException) for i, result in enumerate(results) if ids[i] != late)
    rows = {row["family_id"]: (row["generation"], bytes(row["current_hash"])) for row in await db_conn.fetch(
        "SELECT family_id, generation, current_hash FROM refresh_families")}
    assert rows == {
        family_id: (0, hashes[family_id]) if family_id == late else (1, family_id.bytes * 2) for family_id in ids
    }
