"""Garbage collection: dead families and old security events go, in bounded statements; live ones stay."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tessera.server.tasks.janitor import FAMILY_RETENTION, SECURITY_EVENT_RETENTION, Janitor, collect_garbage
from tests.helpers import PASSWORD, eventually
from tests.sessions import APP_GRANTS, login, refresh
from tests.test_cli import tessera

NOW = datetime.now(UTC)
HOUR, DAYS_AGO_2 = timedelta(hours=1), NOW - timedelta(days=2)
LIVE = {"expires_at": NOW + HOUR, "idle_expires_at": NOW + HOUR, "revoked_at": None}
# Each kind of dead family, past the retention (gone) or within it (kept).
CASES = {
    "live": (LIVE, True),
    "revoked two days ago": (dict(LIVE, revoked_at=DAYS_AGO_2), False),
    "revoked an hour ago": (dict(LIVE, revoked_at=NOW - HOUR), True),
    "session ended two days ago": (dict(LIVE, expires_at=DAYS_AGO_2), False),
    "idle two days ago": (dict(LIVE, idle_expires_at=DAYS_AGO_2), False),
    "idle an hour ago": (dict(LIVE, idle_expires_at=NOW - HOUR), True),
}


@pytest.fixture
async def owner(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    user = await admin.user("alice", PASSWORD)
    return user.user_id


async def _families(db_conn, user_id, states: list[dict]) -> list[uuid.UUID]:
    """Families put straight into the table (as COPY would), in the given states."""
    ids = [uuid.uuid4() for _ in states]
    await db_conn.copy_records_to_table(
        "refresh_families",
        columns=["family_id", "client_id", "user_id", "scopes", "audience", "auth_time", "created_at", "expires_at",
                 "generation", "current_hash", "last_rotated_at", "idle_expires_at", "revoked_at", "revoked_reason"],
        records=[
            (family_id, "app", user_id, ["read"], "https://orders.example", NOW - 3 * HOUR, NOW - 3 * HOUR,
             state["expires_at"], 0, uuid.uuid4().bytes * 2, NOW - 3 * HOUR, state["idle_expires_at"],
             state["revoked_at"], "test" if state["revoked_at"] else None)
            for family_id, state in zip(ids, states)
        ],
    )
    return ids


async def _remaining(db_conn) -> set[uuid.UUID]:
    return {r[0] for r in await db_conn.fetch("SELECT family_id FROM refresh_families")}


async def test_gc_deletes_families_dead_for_longer_than_the_retention_and_keeps_the_rest(owner, db_conn, admin):
    ids = dict(zip(CASES, await _families(db_conn, owner, [state for state, _ in CASES.values()])))
    collected = await collect_garbage(admin.pool, NOW)
    assert collected.families == 3
    assert await _remaining(db_conn) == {ids[name] for name, (_, kept) in CASES.items() if kept}


async def test_gc_works_through_a_large_table_in_bounded_statements(owner, db_conn, admin):
    states = [LIVE if i % 3 else CASES["idle two days ago"][0] for i in range(6000)]
    ids = await _families(db_conn, owner, states)
    pages = await db_conn.fetchval("SELECT pg_relation_size('refresh_families') / 8192")
    assert pages > 40  # so eight pages a statement takes several statements
    collected = await collect_garbage(admin.pool, NOW, pages_per_statement=8)
    assert collected.families == 2000
    assert await _remaining(db_conn) == {family_id for family_id, state in zip(ids, states) if state is LIVE}


async def test_gc_deletes_security_events_past_their_retention(owner, db_conn, admin):
    for age in (SECURITY_EVENT_RETENTION + HOUR, SECURITY_EVENT_RETENTION - HOUR):
        await db_conn.execute(
            "INSERT INTO security_events (kind, occurred_at) VALUES ('refresh_reuse', $1)", NOW - age
        )
    assert (await collect_garbage(admin.pool, NOW)).security_events == 1
    assert await db_conn.fetchval("SELECT count(*) FROM security_events") == 1


def test_tessera_gc_reports_what_it_deleted(env):
    result = tessera(env, "gc", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["families"] == 0 and report["security_events"] == 0 and "keys" in report


async def test_rotations_add_no_rows_and_gc_removes_a_revoked_family_but_never_a_live_one(
    client, owner, db_conn, admin, clock
):
    live = (await login(client))["refresh_token"]
    dead = (await login(client))["refresh_token"]
    _, body = await refresh(client, dead)
    await refresh(client, dead)  # reuse: revoked
    assert await db_conn.fetchval("SELECT count(*) FROM refresh_families") == 2  # no row per rotation
    later = datetime.fromtimestamp(clock(), UTC) + FAMILY_RETENTION + HOUR
    assert (await collect_garbage(admin.pool, later)).families == 1
    assert (await refresh(client, live))[0] == 200


async def test_the_background_janitor_collects_on_its_own(owner, db_conn, admin):
    await _families(db_conn, owner, [CASES["revoked two days ago"][0], LIVE])
    janitor = Janitor(admin.pool, lambda: NOW.timestamp(), interval=0.05)

    async def collected() -> bool:
        return len(await _remaining(db_conn)) == 1

    janitor.start()
    try:
        await eventually(collected, timeout=5, interval=0.05, fail=False)
    finally:
        await janitor.stop()
    assert len(await _remaining(db_conn)) == 1
