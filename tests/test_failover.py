"""A PostgreSQL primary killed under load, its synchronous standby promoted: no refresh answered
200 is lost, no family forks, the signing keys are intact and Tessera is back by itself, without a
restart (docs/operations.md, "Failover"). The same with asynchronous replication counts what it
loses instead.

Two real PostgreSQL clusters (tests/replication.py), Tessera on the multi-host URL with
``target_session_attrs=read-write``, refresh_token and client_credentials load from this test. The
figures are printed (``pytest -s``); to measure them again, with more load or a longer outage:

    .venv/bin/python -m tests.test_failover --mode sync           # or async-off, async-on
    .venv/bin/python -m tests.test_failover --help

The tests are skipped where the PostgreSQL server binaries are not installed (``unavailable()`` says
why); CI has them. About 25 s for the four.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tessera.server.oauth.families import parse_refresh_token
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.settings import load_settings
from tessera.server.store import ClientStore, UserStore, db
from tessera.server.tasks.listener import APPLICATION_NAME as LISTENER
from tests.conftest import FAST_ARGON2
from tests.helpers import PASSWORD, SECRET, basic, eventually, fetch_jwks, post_token, tessera_server, verify_with_joserfc
from tests.processes import parse_metrics, sample
from tests.replication import ReplicatedPostgres, unavailable

# A client whose request was in flight at the kill got 503 whether or not its rotation committed;
# it retries with the same token, which the grace answers with the same successor when it did.
REUSE_GRACE = 60
# How long a client waits before trying again after a 503 (the figures' resolution, too).
RETRY_AFTER_503 = 0.05
RECOVERY_WITHIN = 30.0

MODES = {
    # (synchronous standby, the primary's synchronous_commit)
    "sync": (True, "on"),
    "async-on": (False, "on"),
    "async-off": (False, "off"),
}


@dataclass
class Answer:
    kind: str  # "refresh" or "client_credentials"
    started: float
    finished: float
    status: int  # 0: no HTTP answer at all
    error: str | None


@dataclass
class Family:
    """One client's refresh-token family as the client sees it."""

    token: str
    # (generation presented, refresh token answered) for every 200, in order.
    rotations: list[tuple[int, str]] = field(default_factory=list)
    refused: tuple[int, str] | None = None  # a final answer other than 200 or 503
    recovered: bool = False  # a 200 for a request sent after the promotion

    @property
    def generation(self) -> int:
        parsed = parse_refresh_token(self.token)
        assert parsed is not None
        return parsed.generation

    @property
    def family_id(self) -> uuid.UUID:
        parsed = parse_refresh_token(self.token)
        assert parsed is not None
        return parsed.family_id


@dataclass
class Outcome:
    mode: str
    answers: list[Answer]
    families: list[Family]
    killed: float
    promote_issued: float
    promoted: float
    kids_before: set[str]
    kids_after: set[str]
    stored: dict[uuid.UUID, asyncpg.Record]  # the promoted standby's refresh_families rows
    security_events: int
    retries_answered: float
    listener_back: float | None  # seconds after the promotion, None if not seen
    unverified_old_tokens: int
    ready_after: int  # /readyz once the load stopped

    def first_ok(self, kind: str, since: float | None = None) -> Answer | None:
        """The first 200 of ``kind`` for a request sent after ``since`` (the kill)."""
        since = self.killed if since is None else since
        ok = [a for a in self.answers if a.kind == kind and a.status == 200 and a.started >= since]
        return min(ok, key=lambda a: a.finished, default=None)

    def during_outage(self, kind: str) -> list[Answer]:
        """Answers of ``kind`` to requests sent between the kill and the first 200 after it."""
        first = self.first_ok(kind)
        end = first.started if first is not None else float("inf")
        return [a for a in self.answers if a.kind == kind and self.killed <= a.started < end]

    def lost(self) -> dict[uuid.UUID, int]:
        """Per family: how many refreshes answered 200 have no successor on the promoted standby
        (its stored generation behind the last token the client was given; no row at all counts
        the login too)."""
        missing = {}
        for family in self.families:
            row = self.stored.get(family.family_id)
            behind = family.generation + 1 if row is None else family.generation - row["generation"]
            if behind > 0:
                missing[family.family_id] = behind
        return missing

    def forked(self) -> list[uuid.UUID]:
        """Families whose stored state is not the last token their client was given: a generation
        ahead of it, or another token at its generation, or a presented token answered 200 twice."""
        forks = []
        for family in self.families:
            row = self.stored.get(family.family_id)
            presented = [generation for generation, _ in family.rotations]
            if presented != list(range(len(presented))):
                forks.append(family.family_id)
            elif row is not None and row["generation"] == family.generation:
                digest = hashlib.sha256(base64.urlsafe_b64decode(family.token[4:] + "==")).digest()
                if bytes(row["current_hash"]) != digest:
                    forks.append(family.family_id)
            elif row is not None and row["generation"] > family.generation:
                forks.append(family.family_id)
        return forks

    def report(self) -> str:
        lines = [f"failover ({self.mode}): {len(self.families)} refresh families, "
                 f"promotion took {(self.promoted - self.promote_issued) * 1000:.0f} ms "
                 f"({(self.promote_issued - self.killed) * 1000:.0f} ms after the kill)"]
        before = [a for a in self.answers if a.finished < self.killed and a.status == 200]
        for kind in ("refresh", "client_credentials"):
            after = [a for a in self.answers if a.kind == kind and a.started >= self.killed]
            served = sum(1 for a in before if a.kind == kind)
            early = sum(1 for a in after if a.status == 200 and a.finished < self.promote_issued)
            failed = Counter(a.status for a in after if a.status != 200)
            slowest = max((a.finished - a.started for a in after if a.status != 200), default=0.0)
            first = self.first_ok(kind, since=self.promote_issued)
            back = (f"first 200 {(first.finished - self.promote_issued) * 1000:.0f} ms after the promotion was issued "
                    f"({(first.finished - self.promoted) * 1000:+.0f} ms from its end)") if first else "no 200 after the promotion"
            lines.append(
                f"  {kind}: {served} answered 200 before the kill; after it {early} answered 200 before the promotion, "
                f"{sum(failed.values())} failed ({', '.join(f'{n} x {s}' for s, n in failed.items()) or 'none'}"
                f"{f', slowest answered in {slowest * 1000:.0f} ms' if failed else ''}); {back}"
            )
        lost = self.lost()
        lines.append(
            f"  refreshes answered 200 whose successor is missing on the promoted standby: "
            f"{sum(lost.values())} in {len(lost)} families; refused after the failover: "
            f"{sum(1 for f in self.families if f.refused)}; forked: {len(self.forked())}"
        )
        lines.append(
            f"  in-flight rotations that committed though their answer was lost (retries answered): "
            f"{self.retries_answered:.0f}; security events: {self.security_events}"
        )
        listener = f"{self.listener_back * 1000:.0f} ms" if self.listener_back is not None else "not seen"
        lines.append(
            f"  keys: {'same kids' if self.kids_before == self.kids_after else 'CHANGED'}, "
            f"tokens from before that fail to verify after: {self.unverified_old_tokens}; "
            f"LISTEN on the new primary {listener} after the promotion"
        )
        return "\n".join(lines)


class Load:
    """Refresh clients (one family each, refreshing in a loop) and client_credentials clients,
    until ``stop``; a 503 is retried after RETRY_AFTER_503 with the same token."""

    def __init__(self, http: TestClient[Any, Any], families: list[Family]) -> None:
        self.http = http
        self.families = families
        self.answers: list[Answer] = []
        self.promoted = float("inf")
        self.stopping = asyncio.Event()
        self.access_tokens: list[str] = []  # a few from before the kill, to verify after it

    async def _post(self, kind: str, form: dict[str, str], client_id: str) -> tuple[Answer, dict[str, Any]]:
        started = time.monotonic()
        try:
            status, body, _ = await post_token(self.http, form, headers=basic(client_id, SECRET))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            answer = Answer(kind, started, time.monotonic(), 0, type(exc).__name__)
            self.answers.append(answer)
            return answer, {}
        answer = Answer(kind, started, time.monotonic(), status, None if status == 200 else body.get("error"))
        self.answers.append(answer)
        return answer, body

    async def refresh(self, family: Family) -> None:
        while not self.stopping.is_set():
            presented = family.generation
            answer, body = await self._post("refresh", {"grant_type": "refresh_token", "refresh_token": family.token}, "app")
            if answer.status == 200:
                family.rotations.append((presented, body["refresh_token"]))
                family.token = body["refresh_token"]
                if answer.started >= self.promoted:
                    family.recovered = True
                if len(self.access_tokens) < 20:
                    self.access_tokens.append(body["access_token"])
            elif answer.status in (0, 503):
                await asyncio.sleep(RETRY_AFTER_503)
            else:
                family.refused = (answer.status, str(answer.error))
                return

    async def client_credentials(self) -> None:
        while not self.stopping.is_set():
            answer, body = await self._post("client_credentials", {"grant_type": "client_credentials"}, "svc")
            if answer.status == 200:
                if len(self.access_tokens) < 40:
                    self.access_tokens.append(body["access_token"])
            else:
                await asyncio.sleep(RETRY_AFTER_503)

    def done(self) -> bool:
        cc_back = any(a.kind == "client_credentials" and a.status == 200 and a.started >= self.promoted for a in self.answers)
        return cc_back and all(f.recovered or f.refused for f in self.families)


async def _prepare(pair: ReplicatedPostgres, env: dict[str, str]) -> None:
    """Schema, a client with the password and refresh grants, a client_credentials one, a user."""
    hasher = SecretHasher(load_settings(env).argon2)
    connection = await asyncpg.connect(pair.primary_dsn)
    try:
        await db.migrate(connection)
        secret_hash = await hasher.hash(SECRET)
        clients = ClientStore(connection)
        await clients.create("app", secret_hash=secret_hash, grant_types=["password", "refresh_token"],
                             scopes=["read"], audiences=["https://orders.example"])
        await clients.create("svc", secret_hash=secret_hash, grant_types=["client_credentials"],
                             scopes=["read"], audiences=["https://orders.example"])
        await UserStore(connection).create("alice", await hasher.hash(PASSWORD))
    finally:
        await connection.close()
        hasher.close()


async def _login(http: TestClient[Any, Any]) -> Family:
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    status, body, _ = await post_token(http, form, headers=basic("app", SECRET))
    assert status == 200, body
    return Family(body["refresh_token"])


async def _refresh(http: TestClient[Any, Any], token: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    status, body, _ = await post_token(http, form, headers=basic("app", SECRET))
    return status, body


def _env(pair: ReplicatedPostgres, data_dir: str, **extra: str) -> dict[str, str]:
    return {
        "TESSERA_DATABASE_URL": pair.dsn,
        "TESSERA_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
        "TESSERA_DATA_DIR": data_dir,
        "TESSERA_ISSUER": "https://tessera.test",
        "TESSERA_REFRESH_REUSE_GRACE": str(REUSE_GRACE),
        **FAST_ARGON2,
        **extra,
    }


@contextlib.asynccontextmanager
async def _pair(mode: str) -> AsyncIterator[ReplicatedPostgres]:
    synchronous, synchronous_commit = MODES[mode]
    pair = ReplicatedPostgres(synchronous=synchronous, synchronous_commit=synchronous_commit)
    try:
        await asyncio.to_thread(pair.start)
        yield pair
    finally:
        await asyncio.to_thread(pair.close)


async def _listener_on(dsn: str) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", LISTENER
        ))
    finally:
        await connection.close()


async def run_failover(
    mode: str, *, families: int = 24, cc_clients: int = 4, before: float = 2.0, detection: float = 0.5,
    data_dir: Path | None = None,
) -> Outcome:
    """Load, kill -9 the primary, wait ``detection`` seconds (what a failover manager takes to
    decide), promote the standby, keep the load on until every family has refreshed again."""
    async with _pair(mode) as pair, contextlib.AsyncExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tessera-failover-data-")))
        env = _env(pair, str(data_dir))
        await _prepare(pair, env)
        http = await stack.enter_async_context(tessera_server(env))
        kids_before = {key.kid for key in (await fetch_jwks(http)).keys if key.kid}

        logged_in = list(await asyncio.gather(*(_login(http) for _ in range(families))))
        load = Load(http, logged_in)
        workers = [asyncio.create_task(load.refresh(f)) for f in logged_in]
        workers += [asyncio.create_task(load.client_credentials()) for _ in range(cc_clients)]
        try:
            await asyncio.sleep(before)
            killed = time.monotonic()
            pair.kill_primary()
            old_tokens = list(load.access_tokens)
            await asyncio.sleep(detection)
            promote_issued = time.monotonic()
            await pair.promote()
            promoted = load.promoted = time.monotonic()
            recovery_deadline = promoted + RECOVERY_WITHIN
            listener_back = None
            while not load.done() or listener_back is None:
                if listener_back is None and await _listener_on(pair.standby_dsn):
                    listener_back = time.monotonic() - promoted
                if time.monotonic() > recovery_deadline:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a little load on the new primary
        finally:
            load.stopping.set()
            await asyncio.gather(*workers)

        ready_after = (await http.get("/readyz")).status
        keys_after = await fetch_jwks(http)
        unverified = 0
        for token in old_tokens:
            try:
                verify_with_joserfc(token, keys_after)
            except Exception:  # noqa: BLE001 - any refusal is what is counted
                unverified += 1
        metrics = parse_metrics(await (await http.get("/metrics")).text())
        connection = await asyncpg.connect(pair.standby_dsn)
        try:
            rows = await connection.fetch("SELECT family_id, generation, current_hash, revoked_at FROM refresh_families")
            events = await connection.fetchval("SELECT count(*) FROM security_events")
        finally:
            await connection.close()

    return Outcome(
        mode=mode, answers=load.answers, families=logged_in, killed=killed, promote_issued=promote_issued,
        promoted=promoted, kids_before=kids_before, kids_after={key.kid for key in keys_after.keys if key.kid},
        stored={row["family_id"]: row for row in rows}, security_events=events,
        retries_answered=sample(metrics, "tessera_refresh_retries_total", client_id="app"),
        listener_back=listener_back, unverified_old_tokens=unverified, ready_after=ready_after,
    )


pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"two PostgreSQL clusters cannot be started here: {unavailable()}")


async def test_a_synchronous_standby_promoted_under_load_loses_no_refresh_and_tessera_comes_back_by_itself():
    outcome = await run_failover("sync")
    print("\n" + outcome.report())

    # Nothing but 200 and clean 503s, during the outage too: no 500, no dropped connection.
    statuses = Counter((a.status, a.error) for a in outcome.answers if a.status != 200)
    assert set(statuses) <= {(503, "temporarily_unavailable")}, statuses
    # Every family's last token answered 200 before the kill rotated again after the promotion;
    # none was refused, none lost, none forked, none revoked.
    assert not [f.refused for f in outcome.families if f.refused]
    assert all(f.recovered for f in outcome.families), "a family did not refresh after the failover"
    assert outcome.lost() == {}
    assert outcome.forked() == []
    assert all(outcome.stored[f.family_id]["revoked_at"] is None for f in outcome.families)
    assert outcome.security_events == 0
    # Sanity of the scenario itself: there was load before the kill, and an outage after it.
    assert sum(len(f.rotations) for f in outcome.families) > len(outcome.families)
    assert any(a.status == 503 for a in outcome.during_outage("refresh"))
    # Service back without a restart: both grants, and the LISTEN connection on the new primary.
    assert outcome.first_ok("refresh") is not None and outcome.first_ok("client_credentials") is not None
    assert outcome.listener_back is not None
    assert outcome.ready_after == 200
    # The signing keys: the same kids, and every access token from before the kill still verifies.
    assert outcome.kids_after == outcome.kids_before
    assert outcome.unverified_old_tokens == 0


async def test_asynchronous_replication_loses_refreshes_that_were_answered_200_and_the_clients_find_out():
    """What the synchronous standby prevents: with ``synchronous_commit=off`` a commit is answered
    before its WAL is even flushed, so the last rotations die with the primary. Each family whose
    answered successor is missing on the new primary is refused at its next refresh (the client's
    token is ahead of the stored chain: ``invalid_grant``, its user signs in again), and only those."""
    outcome = await run_failover("async-off")
    print("\n" + outcome.report())

    statuses = Counter((a.status, a.error) for a in outcome.answers if a.status != 200)
    assert set(statuses) <= {(503, "temporarily_unavailable"), (400, "invalid_grant")}, statuses
    lost = outcome.lost()
    refused = {f.family_id for f in outcome.families if f.refused}
    assert refused == set(lost), "the families refused after the failover are exactly those that lost a rotation"
    assert outcome.forked() == []
    assert outcome.security_events == 0  # a lost rotation is not taken for theft
    assert all(f.recovered for f in outcome.families if f.family_id not in lost)
    assert outcome.kids_after == outcome.kids_before


async def test_while_the_synchronous_standby_is_down_a_refresh_commits_on_the_primary_and_its_retry_gets_the_successor(
    tmp_path,
):
    """The other failure: the standby dies. Each commit then waits for it; the client side gives
    up after the statement timeout + 1 s and answers 503, but PostgreSQL has already committed the
    rotation on the primary (it says so in a WARNING) and cannot take it back. Tessera then marks
    the family (migration 0016), so the client's retry with the same token is answered with the
    successor that committed, with no reuse grace at all: the 503 changed nothing the client can
    tell. Once the standby is back it catches up, and a failover after that loses nothing."""
    async with _pair("sync") as pair:
        env = _env(pair, str(tmp_path / "data"), TESSERA_DB_STATEMENT_TIMEOUT="1", TESSERA_REFRESH_REUSE_GRACE="0")
        await _prepare(pair, env)
        async with tessera_server(env) as http:
            families = [await _login(http) for _ in range(4)]
            for family in families:
                status, body = await _refresh(http, family.token)
                assert status == 200, body
                family.token = body["refresh_token"]

            pair.kill_standby()
            started = time.monotonic()
            answers = await asyncio.gather(*(_refresh(http, family.token) for family in families))
            elapsed = time.monotonic() - started
            assert [(status, body["error"]) for status, body in answers] == [(503, "temporarily_unavailable")] * 4
            assert elapsed < 10.0  # CONTRACT.md: a 503 within 10 seconds
            connection = await asyncpg.connect(pair.primary_dsn)
            try:
                stored = {r["family_id"]: r["generation"] for r in await connection.fetch(
                    "SELECT family_id, generation FROM refresh_families WHERE revoked_at IS NULL")}
            finally:
                await connection.close()
            committed = sum(1 for f in families if stored[f.family_id] == f.generation + 1)
            print(f"\nstandby down: 4 refreshes answered 503 in {elapsed:.1f} s; committed on the primary anyway: {committed}")

            async def marked() -> bool:
                connection = await asyncpg.connect(pair.primary_dsn)
                try:
                    return bool(await connection.fetchval(
                        "SELECT count(*) = $1 FROM refresh_families WHERE unanswered_generation = generation",
                        committed))
                finally:
                    await connection.close()

            await eventually(marked, timeout=10, interval=0.1, what="the unanswered rotations marked")
            for family in families:  # the client's retry, with the same token
                status, body = await _refresh(http, family.token)
                assert status == 200, body
                assert parse_refresh_token(body["refresh_token"]).generation == stored[family.family_id]
                family.token = body["refresh_token"]

            await pair.restart_standby()
            for family in families:
                status, body = await _refresh(http, family.token)
                assert status == 200, body
                family.token = body["refresh_token"]

            pair.kill_primary()
            await pair.promote()
            for family in families:
                async def rotated(family: Family = family) -> bool:
                    status, body = await _refresh(http, family.token)
                    assert status in (200, 503), body
                    if status == 200:
                        family.token = body["refresh_token"]
                    return status == 200

                await eventually(rotated, timeout=RECOVERY_WITHIN, interval=0.05, what="a refresh on the promoted standby")
            connection = await asyncpg.connect(pair.standby_dsn)
            try:
                assert await connection.fetchval("SELECT count(*) FROM security_events") == 0
                assert await connection.fetchval("SELECT count(*) FROM refresh_families WHERE revoked_at IS NOT NULL") == 0
            finally:
                await connection.close()


async def test_while_the_synchronous_standby_is_down_a_code_redemption_answered_503_is_redeemed_again_not_replayed(
    tmp_path,
):
    """The same lost acknowledgement for an authorization code: the redemption (and the family it
    starts) commits on the primary while the client gets a 503. Taken as a replay, the retry would
    revoke the session and send the user back to the login page; instead the code is marked
    (migration 0017) and its retry, with the same verifier and redirect URI, is redeemed anew: the
    family nobody received is revoked, a new one starts, once. A third presentation is a replay."""
    async with _pair("sync") as pair:
        env = _env(pair, str(tmp_path / "data"), TESSERA_DB_STATEMENT_TIMEOUT="1", TESSERA_REFRESH_REUSE_GRACE="0")
        await _prepare(pair, env)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        code = secrets.token_urlsafe(32)
        redirect_uri = "https://app.example/callback"
        connection = await asyncpg.connect(pair.primary_dsn)
        try:
            hasher = SecretHasher(load_settings(env).argon2)
            await ClientStore(connection).create(
                "web", secret_hash=await hasher.hash(SECRET), grant_types=["authorization_code", "refresh_token"],
                scopes=["openid", "read"], audiences=["https://orders.example"], redirect_uris=[redirect_uri],
            )
            hasher.close()
            user_id = await connection.fetchval("SELECT user_id FROM users WHERE username = 'alice'")
            session_id = uuid.uuid4()
            await connection.execute(
                "INSERT INTO login_sessions (session_id, cookie_hash, user_id, auth_time, expires_at)"
                " VALUES ($1, $2, $3, now(), now() + interval '1 hour')",
                session_id, secrets.token_bytes(32), user_id,
            )
            await connection.execute(
                "INSERT INTO authorization_codes (code_hash, client_id, user_id, session_id, redirect_uri,"
                " code_challenge, scopes, audience, nonce, auth_time, expires_at)"
                " VALUES ($1, 'web', $2, $3, $4, $5, ARRAY['openid', 'read'], 'https://orders.example', 'n-0s',"
                " now(), now() + interval '1 minute')",
                hashlib.sha256(code.encode()).digest(), user_id, session_id, redirect_uri, challenge,
            )
        finally:
            await connection.close()
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": redirect_uri}

        async with tessera_server(env) as http:
            pair.kill_standby()
            status, body, _ = await post_token(http, form, headers=basic("web", SECRET))
            assert (status, body.get("error")) == (503, "temporarily_unavailable"), body

            async def marked() -> bool:
                connection = await asyncpg.connect(pair.primary_dsn)
                try:
                    return bool(await connection.fetchval("SELECT unanswered FROM authorization_codes"))
                finally:
                    await connection.close()

            await eventually(marked, timeout=10, interval=0.1, what="the unanswered redemption marked")
            await pair.restart_standby()

            status, body, _ = await post_token(http, form, headers=basic("web", SECRET))
            assert status == 200, body
            assert body["id_token"] and body["refresh_token"]
            connection = await asyncpg.connect(pair.primary_dsn)
            try:
                families = {r["revoked_reason"]: r["family_id"] for r in await connection.fetch(
                    "SELECT family_id, revoked_reason FROM refresh_families WHERE client_id = 'web'")}
                assert set(families) == {"redemption_unanswered", None}
                assert parse_refresh_token(body["refresh_token"]).family_id == families[None]
                assert await connection.fetchval("SELECT count(*) FROM security_events") == 0
            finally:
                await connection.close()
            status, refreshed = await _refresh_as(http, "web", body["refresh_token"])
            assert status == 200, refreshed

            status, again, _ = await post_token(http, form, headers=basic("web", SECRET))  # now a replay
            assert (status, again.get("error")) == (400, "invalid_grant"), again
            status, refused = await _refresh_as(http, "web", refreshed["refresh_token"])
            assert status == 400, refused  # the replay revoked the family the retry started


async def _refresh_as(http: TestClient[Any, Any], client_id: str, token: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    status, body, _ = await post_token(http, form, headers=basic(client_id, SECRET))
    return status, body


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure Tessera across a PostgreSQL failover (kill -9, promote).")
    parser.add_argument("--mode", choices=sorted(MODES), default="sync",
                        help="sync: a synchronous standby; async-on / async-off: asynchronous streaming with the "
                             "primary's synchronous_commit on / off")
    parser.add_argument("--families", type=int, default=24, help="refresh clients, one family each")
    parser.add_argument("--cc-clients", type=int, default=4, help="client_credentials clients")
    parser.add_argument("--before", type=float, default=2.0, help="seconds of load before the kill")
    parser.add_argument("--detection", type=float, default=0.5, help="seconds between the kill and the promotion")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="show Tessera's warnings (database unavailable...)")
    options = parser.parse_args()
    if not options.verbose:
        for name in ("tessera", "asyncpg"):
            logging.getLogger(name).addHandler(logging.NullHandler())
            logging.getLogger(name).propagate = False
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"cannot run: {reason}")
    for _ in range(options.runs):
        outcome = asyncio.run(run_failover(
            options.mode, families=options.families, cc_clients=options.cc_clients, before=options.before,
            detection=options.detection,
        ))
        print(outcome.report(), flush=True)


if __name__ == "__main__":
    main()
