"""Crash safety of refresh-token rotation (CONTRACT.md, Robustness): "`kill -9` loses nothing that
was answered" and "No refresh is ever half-applied: it is answered 200 if and only if its rotation
committed".

Both tests run real ``tessera serve`` processes on the test database, drive a concurrent refresh
load with aiohttp (one walker per family: present the token, on 200 continue with the new one),
record what every request sent and what came back, and then hold the record against the
database row of each family (``generation`` and ``current_hash`` = SHA-256 of the current token)
and against a server started afresh.

How a half-applied rotation would be caught:

* **200 before the commit** (the successor handed out while the UPDATE is still pending, or
  written after the answer): a family whose last 200 carried generation k would be found, after
  the ``kill -9``, below k (the row never reached it): ``assert_row_matches_what_was_answered``
  demands k or k + 1. Under load the walker also presents the new token at once and would meet a
  row that does not know it yet: a 400 during the load, and every answer before the kill must be
  200. In the database-fault test the row is read right after every answer and must already hold
  the token that was handed out.
* **Two-step writes** (generation, then hash, or the token stored in a second statement): a kill
  between them leaves a row whose hash is not SHA-256 of the token of its generation; the test
  recomputes the exact token of the row's generation (from the client's last token and the
  server's chain key) and compares hashes. Such a family also fails its first refresh after the
  restart.
* **A lost rotation** (a 200 whose rotation did not survive the crash): as in the first bullet,
  the row would be behind the last answered generation, and the answered token would be refused
  after the restart instead of refreshing.
* **A fork, or two live tokens** (a rotation applied twice, or from a stale row): the row would
  be k + 2 or more beyond what was answered, or its hash off the one HMAC chain that every token
  the client received must walk onto.
* **Committed but answered with an error** (the other half of "if and only if"): in the database
  fault test a refresh answered 503 must leave generation and hash exactly as they were; the
  walker then retries the same token with no grace, so a silently committed rotation would also
  surface as reuse (400, family revoked).
* **A spent token still accepted:** after the restart every token the load generator received is
  replayed; each must be refused, the first as reuse (family revoked, one security event), and
  the family's newest token must then be dead too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest

from tessera.server.oauth.families import SECRET_NAME, RefreshChain, parse_refresh_token
from tessera.server.store.secrets import server_secret
from tests.helpers import PASSWORD, SECRET, basic, eventually
from tests.processes import Process, Processes, free_port, wait_until_ready
from tests.sessions import APP_GRANTS

FAMILIES = 40
WALKERS = 32  # families under load; the other FAMILIES - WALKERS stay idle and must stay at generation 0
AUTH = basic("app", SECRET)
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass
class Walk:
    """One family, as the load generator saw it."""

    received: list[str]  # the login's token, then the refresh token of every 200, in order
    answers: list[tuple[int, str | None]] = field(default_factory=list)  # (status, error) of every answer
    ending: str = "running"  # "refused": the last request never connected; "lost": sent, no answer

    @property
    def last(self) -> str:
        return self.received[-1]

    @property
    def answered_generation(self) -> int:
        return len(self.received) - 1


def _digest(token: str) -> bytes:
    parsed = parse_refresh_token(token)
    assert parsed is not None
    return parsed.digest


def _family_id(token: str) -> Any:
    parsed = parse_refresh_token(token)
    assert parsed is not None
    return parsed.family_id


async def _chain(db: asyncpg.Connection, kek: str) -> RefreshChain:
    """The server's own successor function (its key is in the database, sealed under the KEK)."""
    return RefreshChain(await server_secret(db, base64.urlsafe_b64decode(kek + "=" * (-len(kek) % 4)), SECRET_NAME))


def _successor(chain: RefreshChain, token: str) -> str:
    parsed = parse_refresh_token(token)
    assert parsed is not None
    return str(chain.successor(parsed))


async def _serve(processes: Processes, name: str, env: dict[str, str], **settings: str) -> tuple[Process, str]:
    port = free_port()
    server = processes.serve(name, {**env, **settings, "TESSERA_HOST": "127.0.0.1", "TESSERA_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    await wait_until_ready(f"{base}/readyz", server)
    return server, base


async def _post_token(http: aiohttp.ClientSession, base: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/token", data=form, headers=AUTH) as response:
        return response.status, await response.json(content_type=None)


async def _refresh(http: aiohttp.ClientSession, base: str, token: str) -> tuple[int, dict[str, Any]]:
    return await _post_token(http, base, {"grant_type": "refresh_token", "refresh_token": token})


async def _logins(http: aiohttp.ClientSession, base: str, count: int) -> list[str]:
    tokens = []
    for _ in range(count):
        status, body = await _post_token(
            http, base, {"grant_type": "password", "username": "alice", "password": PASSWORD}
        )
        assert status == 200, body
        tokens.append(body["refresh_token"])
    return tokens


def _error_free(server: Process) -> None:
    """No traceback, no error-level line, no 5xx answered. (``kill -9`` may cut the last line.)"""
    text = server.stderr().splitlines()
    lines = [json.loads(line) for line in text[:-1] if line.strip()]
    with contextlib.suppress(json.JSONDecodeError, IndexError):
        lines.append(json.loads(text[-1]))
    bad = [line for line in lines if line.get("level") in ("error", "critical") or "exception" in line]
    assert not bad, bad[:3]
    assert not [line for line in lines if line.get("status", 0) >= 500], "a 5xx was answered"


async def _walk(http: aiohttp.ClientSession, base: str, walk: Walk) -> None:
    """Refresh along the family's chain until the server stops answering."""
    while True:
        try:
            status, body = await _refresh(http, base, walk.last)
        except aiohttp.ClientConnectorError:
            walk.ending = "refused"  # never reached the server
            return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            walk.ending = "lost"  # may have reached it, and may have committed: the answer is lost
            return
        walk.answers.append((status, body.get("error")))
        if status != 200:
            walk.ending = f"answered {status}"
            return
        walk.received.append(body["refresh_token"])


async def _assert_row_matches_what_was_answered(
    db: asyncpg.Connection, chain: RefreshChain, walk: Walk
) -> int:
    """The family's one live token is the last one answered, or (only if the last request's answer
    was lost) the one that request would have received. Returns the row's generation."""
    row = await db.fetchrow(
        "SELECT generation, current_hash, revoked_at FROM refresh_families WHERE family_id = $1",
        _family_id(walk.last),
    )
    k = walk.answered_generation
    assert row["revoked_at"] is None
    allowed = {k, k + 1} if walk.ending == "lost" else {k}
    assert row["generation"] in allowed, (
        f"answered up to generation {k} ({walk.ending}), but the row is at {row['generation']}"
    )
    expected = walk.last if row["generation"] == k else _successor(chain, walk.last)
    assert bytes(row["current_hash"]) == _digest(expected), "the row's hash is not its generation's token"
    # Every token the client ever received lies on the one chain that ends at the row: no fork.
    for token in walk.received:
        parsed = parse_refresh_token(token)
        assert parsed is not None
        assert chain.walk(parsed, row["generation"], bytes(row["current_hash"])) is not None
    return int(row["generation"])


@pytest.fixture
async def app_and_alice(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    return await admin.user("alice", PASSWORD)


@pytest.mark.parametrize("grace", ["0", "30"])
async def test_kill_9_in_the_middle_of_refresh_load_loses_nothing_that_was_answered(
    env, kek, clean_database, app_and_alice, db_conn, processes, grace
):
    started = time.monotonic()
    settings = {"TESSERA_REFRESH_REUSE_GRACE": grace}
    first, base = await _serve(processes, "serve-killed", env, **settings)
    connector = aiohttp.TCPConnector(limit=WALKERS + 8)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as http:
        walks = [Walk([token]) for token in await _logins(http, base, FAMILIES)]
        loaded, idle = walks[:WALKERS], walks[WALKERS:]
        load = [asyncio.create_task(_walk(http, base, walk)) for walk in loaded]
        await asyncio.sleep(random.uniform(0.3, 1.0))
        first.signal(signal.SIGKILL)
        async with asyncio.timeout(15):
            await asyncio.gather(*load)
        assert first.wait(5) == -signal.SIGKILL

    # The database after the crash, family by family, against what the client was answered.
    chain = await _chain(db_conn, kek)
    generations = [await _assert_row_matches_what_was_answered(db_conn, chain, walk) for walk in walks]
    assert generations[WALKERS:] == [0] * len(idle)
    # Before the kill the server was healthy: every answer it gave was a 200.
    statuses = Counter(status for walk in loaded for status, _ in walk.answers)
    assert set(statuses) <= {200}, statuses
    assert statuses[200] > 0, "the kill came before any refresh was answered"
    endings = Counter(walk.ending for walk in loaded)
    assert set(endings) <= {"lost", "refused"}, endings

    lost_answers = [walk for walk, g in zip(walks, generations) if g == walk.answered_generation + 1]

    second, base = await _serve(processes, "serve-restarted", env, **settings)
    pool = await asyncpg.create_pool(clean_database, min_size=1, max_size=4)
    async with pool, aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200

        async def after_restart(walk: Walk, generation: int) -> None:
            family = _family_id(walk.last)
            status, body = await _refresh(http, base, walk.last)
            if generation == walk.answered_generation:
                # The last answered token is the live one: it refreshes, to exactly its successor.
                assert status == 200, body
                assert body["refresh_token"] == _successor(chain, walk.last)
                newest = body["refresh_token"]
            elif grace == "0":
                # Its rotation committed but the answer was lost in the crash: with no grace the
                # token is spent, so presenting it again is reuse.
                assert (status, body["error"]) == (400, "invalid_grant"), body
                row = await pool.fetchrow("SELECT * FROM refresh_families WHERE family_id = $1", family)
                assert row["revoked_reason"] == "refresh_reuse"
                assert await pool.fetchval("SELECT count(*) FROM security_events WHERE family_id = $1", family) == 1
                return
            else:
                # With a grace the client's retry gets the very answer the crash swallowed.
                assert status == 200, body
                assert body["refresh_token"] == _successor(chain, walk.last)
                newest = body["refresh_token"]
            # One more rotation, so every token the client ever received is two or more behind
            # (never a grace retry) when it is replayed below.
            status, body = await _refresh(http, base, newest)
            assert status == 200, body
            newest = body["refresh_token"]
            # Replay every token the load generator received: each is spent and refused; the first
            # is reuse and revokes the family, its newest token included.
            for index, token in enumerate(walk.received):
                status, body = await _refresh(http, base, token)
                assert (status, body["error"]) == (400, "invalid_grant"), (index, body)
                if index == 0:
                    row = await pool.fetchrow(
                        "SELECT revoked_reason FROM refresh_families WHERE family_id = $1", family
                    )
                    assert row["revoked_reason"] == "refresh_reuse"
            status, body = await _refresh(http, base, newest)
            assert (status, body["error"]) == (400, "invalid_grant")
            events = await pool.fetchval("SELECT count(*) FROM security_events WHERE family_id = $1", family)
            assert events == 1

        async with asyncio.timeout(60):
            await asyncio.gather(*(after_restart(walk, g) for walk, g in zip(walks, generations)))
    second.stop()
    _error_free(first)
    _error_free(second)
    print(
        f"\nkill -9 (grace {grace}): {statuses[200]} rotations answered, {dict(endings)} at the kill,"
        f" {len(lost_answers)} committed with the answer lost; {time.monotonic() - started:.1f} s"
    )


# --- a refresh interrupted inside the database ---------------------------------------------------

ROTATION_WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tessera'"
    " AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE '%tessera_rotate_families%'"
)


async def test_a_refresh_interrupted_inside_the_database_is_answered_200_iff_it_committed(
    env, clean_database, app_and_alice, processes
):
    """Three ways a rotation is cut short in PostgreSQL, during a refresh load with no grace:
    the server's connections terminated at random (``pg_terminate_backend``), rotations blocked
    on a row lock and then terminated, and rotations blocked past the statement timeout. After
    every answer the walker reads its family's row: a 200 must find the new token committed, any
    other answer must find the presented token still current; the walker then retries the same
    token, which would be reuse had an error answer hidden a committed rotation."""
    server, base = await _serve(processes, "serve", env, TESSERA_DB_STATEMENT_TIMEOUT="1")
    observer = await asyncpg.create_pool(
        clean_database, min_size=2, max_size=8, server_settings={"application_name": "crash-observer"}
    )
    stop = asyncio.Event()
    violations: list[str] = []
    answers: Counter[int] = Counter()
    try:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
            walks = [Walk([token]) for token in await _logins(http, base, WALKERS)]

            async def walker(walk: Walk) -> None:
                family = _family_id(walk.last)
                while not stop.is_set():
                    sent = walk.last
                    sent_generation = walk.answered_generation
                    try:
                        status, body = await _refresh(http, base, sent)
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        violations.append(f"no answer from a live server: {exc!r}")
                        return
                    answers[status] += 1
                    row = await observer.fetchrow(
                        "SELECT generation, current_hash, revoked_at FROM refresh_families WHERE family_id = $1",
                        family,
                    )
                    state = (row["generation"], bytes(row["current_hash"]), row["revoked_at"])
                    if status == 200:
                        token = body["refresh_token"]
                        if state != (sent_generation + 1, _digest(token), None):
                            violations.append(f"200 without its rotation committed: row at {row['generation']}")
                        walk.received.append(token)
                    elif status == 503 and body.get("error") == "temporarily_unavailable":
                        if state != (sent_generation, _digest(sent), None):
                            violations.append(f"503, but the rotation committed: row at {row['generation']}")
                            return
                        await asyncio.sleep(0.01)  # retry the same token: a 503 spent nothing
                    else:
                        violations.append(f"unexpected answer {status}: {body}")
                        return

            load = [asyncio.create_task(walker(walk)) for walk in walks]
            killer = await asyncpg.connect(clean_database, server_settings={"application_name": "crash-observer"})
            try:
                # 1. Connections terminated at random under load, whatever they are doing.
                terminated = 0
                until = time.monotonic() + 1.5
                while time.monotonic() < until:
                    terminated += len(await killer.fetch(
                        "SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity"
                        "  WHERE datname = current_database() AND application_name = 'tessera'"
                        "  ORDER BY random() LIMIT 2) AS victims"
                    ))
                    await asyncio.sleep(random.uniform(0.02, 0.08))
                # 2. Rotations held inside PostgreSQL on a row lock, then their connections terminated.
                held = [_family_id(walk.last) for walk in walks[:8]]
                blocked_terminated = await _hold_rows(observer, held, killer, terminate=True)
                # 3. Rotations held past the statement timeout (1 s): PostgreSQL cancels them.
                held_past_timeout = await _hold_rows(observer, held, killer, terminate=False)
                await asyncio.sleep(0.3)  # the load goes on after the faults: service resumed
            finally:
                stop.set()
                await killer.close()
                async with asyncio.timeout(20):
                    await asyncio.gather(*load)

            assert not violations, violations[:5]
            assert set(answers) <= {200, 503}, answers
            assert terminated > 0 and blocked_terminated > 0 and held_past_timeout > 0
            assert answers[503] > 0, "no refresh was interrupted"
            # Nothing was spent by an interrupted refresh: every family carries on from its last 200.
            for walk in walks:
                row = await observer.fetchrow(
                    "SELECT generation, current_hash, revoked_at FROM refresh_families WHERE family_id = $1",
                    _family_id(walk.last),
                )
                assert (row["generation"], bytes(row["current_hash"]), row["revoked_at"]) == (
                    walk.answered_generation, _digest(walk.last), None
                )
                status, body = await _refresh(http, base, walk.last)
                assert status == 200, body
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
            print(
                f"\ninterrupted in the database: {dict(answers)} answers; {terminated} connections terminated"
                f" at random, {blocked_terminated} blocked rotations terminated,"
                f" {held_past_timeout} held past the statement timeout"
            )
    finally:
        stop.set()
        await observer.close()
    server.stop()
    lines = server.log_lines()
    assert not [line for line in lines if line.get("level") in ("error", "critical") or "exception" in line]
    assert {line["status"] for line in lines if line.get("status", 0) >= 500} <= {503}
    causes = Counter(line["cause"] for line in lines if line.get("msg") == "database unavailable")
    assert causes["QueryCanceledError"] > 0, causes  # the statement timeout did cut rotations short


async def _hold_rows(pool: asyncpg.Pool, family_ids: list[Any], killer: asyncpg.Connection, *, terminate: bool) -> int:
    """Lock the families' rows until rotations of them are waiting on the lock inside PostgreSQL;
    then terminate those connections, or (``terminate=False``) hold on past the statement
    timeout. Returns how many rotations were caught waiting."""
    async with pool.acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM refresh_families WHERE family_id = ANY($1) FOR UPDATE", family_ids)
        waiting: list[int] = []

        async def two_waiting() -> bool:
            waiting[:] = [row["pid"] for row in await killer.fetch(ROTATION_WAITING)]
            return len(waiting) >= 2

        await eventually(two_waiting, timeout=5, fail=False)  # then go on with those caught, if fewer
        if terminate:
            for pid in waiting:
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
        else:
            await asyncio.sleep(1.5)  # past TESSERA_DB_STATEMENT_TIMEOUT
    return len(waiting)
