"""Reuse detection (RFC 9700 section 4.14.2), the retry grace, and the races between them."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from datetime import UTC, datetime

import aiohttp
import pytest

from tessera.server.oauth.families import MAX_CHAIN_WALK, SECRET_NAME, RefreshChain, RefreshToken, parse_refresh_token
from tessera.server.store.secrets import server_secret
from tests.helpers import basic
from tests.processes import Processes, free_port, wait_until_ready
from tests.sessions import (
    APP_GRANTS,
    PASSWORD,
    SECRET,
    family_id_of,
    family_row,
    login,
    refresh,
    server_with,
)


@pytest.fixture
async def app_and_alice(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    return await admin.user("alice", PASSWORD)


async def test_reuse_by_the_attacker_revokes_the_whole_family_newest_token_included(client, app_and_alice):
    stolen = (await login(client))["refresh_token"]
    status, body = await refresh(client, stolen)  # the victim rotates first
    assert status == 200
    victims_newest = body["refresh_token"]
    status, body = await refresh(client, stolen)  # then the attacker replays the stolen token
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await refresh(client, victims_newest)
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_reuse_by_the_victim_locks_out_the_attacker_who_rotated_first(client, app_and_alice, db_conn):
    victims = (await login(client))["refresh_token"]
    status, body = await refresh(client, victims)  # the attacker, with a copy, is first
    attackers_chain = body["refresh_token"]
    status, body = await refresh(client, attackers_chain)
    attackers_newest = body["refresh_token"]
    status, body = await refresh(client, victims)  # the victim's token turns out to be spent
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await refresh(client, attackers_newest)
    assert (status, body["error"]) == (400, "invalid_grant")
    row = await family_row(db_conn, victims)
    assert row["revoked_reason"] == "refresh_reuse" and row["generation"] == 2


async def test_reuse_records_a_security_event_and_a_log_line(client, app_and_alice, db_conn, clock, caplog):
    first = (await login(client))["refresh_token"]
    await refresh(client, first)
    clock.advance(5)
    with caplog.at_level(logging.WARNING, logger="tessera.security"):
        status, _ = await refresh(client, first)
    assert status == 400
    events = await db_conn.fetch("SELECT * FROM security_events")
    assert len(events) == 1
    event = events[0]
    assert event["kind"] == "refresh_reuse"
    assert event["family_id"] == family_id_of(first)
    assert (event["client_id"], event["presented_by"]) == ("app", "app")
    assert event["user_id"] == app_and_alice.user_id
    assert event["remote"] == "127.0.0.1"
    assert event["occurred_at"] == datetime.fromtimestamp(clock(), UTC)
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "refresh_reuse"]
    assert record.family_id == str(family_id_of(first)) and record.remote == "127.0.0.1"
    assert first not in caplog.text


async def test_replaying_into_a_revoked_family_records_no_second_event(client, app_and_alice, db_conn):
    first = (await login(client))["refresh_token"]
    await refresh(client, first)
    await refresh(client, first)
    status, _ = await refresh(client, first)
    assert status == 400
    assert await db_conn.fetchval("SELECT count(*) FROM security_events") == 1


def forgeries(genuine: RefreshToken) -> list[str]:
    """Tokens that name a real family but were not derived from its chain."""
    return [
        str(RefreshToken(genuine.family_id, genuine.generation, secrets.token_bytes(32))),
        str(RefreshToken(genuine.family_id, 0, secrets.token_bytes(32))),
        str(RefreshToken(genuine.family_id, genuine.generation + 1, secrets.token_bytes(32))),
        str(RefreshToken(genuine.family_id, 2**32 - 1, secrets.token_bytes(32))),
    ]


async def test_a_forged_token_naming_a_real_family_revokes_nothing(client, app_and_alice, db_conn):
    token = (await login(client))["refresh_token"]
    for _ in range(3):
        token = (await refresh(client, token))[1]["refresh_token"]
    for forged in forgeries(parse_refresh_token(token)):
        status, body = await refresh(client, forged)
        assert (status, body["error"]) == (400, "invalid_grant")
    assert (await family_row(db_conn, token))["revoked_at"] is None
    assert await db_conn.fetchval("SELECT count(*) FROM security_events") == 0
    status, body = await refresh(client, token)
    assert status == 200, body


async def test_a_genuine_token_presented_by_another_client_is_refused_and_revokes_its_family(
    client, admin, app_and_alice, db_conn
):
    await admin.client("other", grant_types=APP_GRANTS)
    token = (await login(client))["refresh_token"]
    status, body = await refresh(client, token, client_id="other")
    assert (status, body["error"]) == (400, "invalid_grant")
    event = await db_conn.fetchrow("SELECT * FROM security_events")
    assert (event["kind"], event["client_id"], event["presented_by"]) == ("refresh_wrong_client", "app", "other")
    status, _ = await refresh(client, token)
    assert status == 400


async def test_with_no_grace_presenting_the_previous_token_again_is_reuse(client, app_and_alice):
    first = (await login(client))["refresh_token"]
    status, body = await refresh(client, first)
    assert status == 200
    status, body2 = await refresh(client, first)  # the same second: still reuse, grace is 0
    assert (status, body2["error"]) == (400, "invalid_grant")
    assert (await refresh(client, body["refresh_token"]))[0] == 400


async def test_a_retry_within_the_grace_gets_the_same_successor_and_a_fresh_access_token(
    env, clock, app_and_alice, db_conn
):
    async with server_with(env, clock, TESSERA_REFRESH_REUSE_GRACE="30") as http:
        first = (await login(http))["refresh_token"]
        status, lost = await refresh(http, first)  # imagine this response never arrived
        assert status == 200
        clock.advance(29)
        for _ in range(2):
            status, retried = await refresh(http, first)
            assert status == 200, retried
            assert retried["refresh_token"] == lost["refresh_token"]
            assert retried["access_token"] != lost["access_token"]
        row = await family_row(db_conn, first)
        assert row["generation"] == 1 and row["revoked_at"] is None  # no fork, nothing spent twice
        status, body = await refresh(http, lost["refresh_token"])
        assert status == 200, body
        status, body2 = await refresh(http, first)  # the successor is used: now it is reuse
        assert (status, body2["error"]) == (400, "invalid_grant")
        assert (await refresh(http, body["refresh_token"]))[0] == 400


async def test_a_retry_after_the_grace_is_reuse(env, clock, app_and_alice, db_conn):
    async with server_with(env, clock, TESSERA_REFRESH_REUSE_GRACE="30") as http:
        first = (await login(http))["refresh_token"]
        _, lost = await refresh(http, first)
        clock.advance(31)
        status, body = await refresh(http, first)
        assert (status, body["error"]) == (400, "invalid_grant")
        assert (await refresh(http, lost["refresh_token"]))[0] == 400
    assert (await family_row(db_conn, first))["revoked_reason"] == "refresh_reuse"


async def test_only_the_immediately_previous_token_may_be_retried(env, clock, app_and_alice):
    async with server_with(env, clock, TESSERA_REFRESH_REUSE_GRACE="30") as http:
        first = (await login(http))["refresh_token"]
        _, second = await refresh(http, first)
        _, third = await refresh(http, second["refresh_token"])
        status, body = await refresh(http, first)  # two generations behind, within seconds
        assert (status, body["error"]) == (400, "invalid_grant")
        assert (await refresh(http, third["refresh_token"]))[0] == 400


async def test_a_retry_by_another_client_is_not_a_retry(env, clock, admin, app_and_alice):
    await admin.client("other", grant_types=APP_GRANTS)
    async with server_with(env, clock, TESSERA_REFRESH_REUSE_GRACE="30") as http:
        first = (await login(http))["refresh_token"]
        _, lost = await refresh(http, first)
        status, body = await refresh(http, first, client_id="other")
        assert (status, body["error"]) == (400, "invalid_grant")
        assert (await refresh(http, lost["refresh_token"]))[0] == 400


async def test_a_retry_may_not_widen_the_scope_either(env, clock, app_and_alice, db_conn):
    async with server_with(env, clock, TESSERA_REFRESH_REUSE_GRACE="30") as http:
        first = (await login(http, scope="read"))["refresh_token"]
        _, lost = await refresh(http, first)
        status, body = await refresh(http, first, scope="write")
        assert (status, body["error"]) == (400, "invalid_scope")
        status, body = await refresh(http, first)
        assert status == 200 and body["refresh_token"] == lost["refresh_token"]


async def test_of_30_concurrent_refreshes_with_one_token_exactly_one_succeeds(client, app_and_alice, db_conn):
    token = (await login(client))["refresh_token"]
    answers = await asyncio.gather(*(refresh(client, token) for _ in range(30)))
    assert sorted(status for status, _ in answers) == [200] + [400] * 29
    assert {body["error"] for status, body in answers if status == 400} == {"invalid_grant"}
    row = await family_row(db_conn, token)
    assert row["generation"] == 1  # rotated once, never forked
    assert row["revoked_reason"] == "refresh_reuse"  # with no grace the other 29 are reuse


async def test_with_a_grace_30_concurrent_refreshes_all_carry_the_same_refresh_token(env, clock, app_and_alice, db_conn):
    async with server_with(env, clock, TESSERA_REFRESH_REUSE_GRACE="60") as http:
        token = (await login(http))["refresh_token"]
        answers = await asyncio.gather(*(refresh(http, token) for _ in range(30)))
        assert [status for status, _ in answers] == [200] * 30
        assert len({body["refresh_token"] for _, body in answers}) == 1
        assert len({body["access_token"] for _, body in answers}) == 30
        row = await family_row(db_conn, token)
        assert row["generation"] == 1 and row["revoked_at"] is None
        status, body = await refresh(http, answers[0][1]["refresh_token"])
        assert status == 200, body


# --- the same race across two server processes on one database ------------------------------------


async def _race_two_processes(env, processes: Processes, grace: str) -> tuple[list[tuple[int, dict]], int]:
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        settings = {"TESSERA_REFRESH_REUSE_GRACE": grace, "TESSERA_HOST": "127.0.0.1", "TESSERA_PORT": str(port)}
        server = processes.serve(f"serve-{index}", {**env, **settings})
        await wait_until_ready(f"http://127.0.0.1:{port}/readyz", server)
    async with aiohttp.ClientSession() as session:
        urls = [f"http://127.0.0.1:{port}/token" for port in ports]
        auth = basic("app", SECRET)
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        async with session.post(urls[0], data=form, headers=auth) as response:
            token = (await response.json())["refresh_token"]

        async def one(url: str) -> tuple[int, dict]:
            data = {"grant_type": "refresh_token", "refresh_token": token}
            async with session.post(url, data=data, headers=auth) as response:
                return response.status, await response.json()

        answers = await asyncio.gather(*(one(urls[i % 2]) for i in range(30)))
        return answers, family_id_of(token)


async def test_of_30_concurrent_refreshes_spread_over_two_server_processes_exactly_one_succeeds(
    env, app_and_alice, db_conn, processes
):
    answers, family_id = await _race_two_processes(env, processes, grace="0")
    assert sorted(status for status, _ in answers) == [200] + [400] * 29
    row = await db_conn.fetchrow("SELECT generation, revoked_reason FROM refresh_families WHERE family_id = $1", family_id)
    assert (row["generation"], row["revoked_reason"]) == (1, "refresh_reuse")


async def test_with_a_grace_two_server_processes_hand_out_one_successor(env, app_and_alice, db_conn, processes):
    answers, family_id = await _race_two_processes(env, processes, grace="60")
    assert [status for status, _ in answers] == [200] * 30
    assert len({body["refresh_token"] for _, body in answers}) == 1
    row = await db_conn.fetchrow("SELECT generation, revoked_at FROM refresh_families WHERE family_id = $1", family_id)
    assert (row["generation"], row["revoked_at"]) == (1, None)


async def _chain(db_conn, kek: str) -> RefreshChain:
    return RefreshChain(await server_secret(db_conn, base64.urlsafe_b64decode(kek + "="), SECRET_NAME))


@pytest.mark.parametrize("behind,recognised", [(MAX_CHAIN_WALK, True), (MAX_CHAIN_WALK + 1, False)])
async def test_the_chain_walk_is_bounded(client, app_and_alice, db_conn, kek, behind, recognised):
    old = parse_refresh_token((await login(client))["refresh_token"])
    chain = await _chain(db_conn, kek)
    current = old
    for _ in range(behind):
        current = chain.successor(current)
    await db_conn.execute(
        "UPDATE refresh_families SET generation = $2, current_hash = $3 WHERE family_id = $1",
        old.family_id, current.generation, current.digest,
    )
    status, body = await refresh(client, str(old))
    assert (status, body["error"]) == (400, "invalid_grant")
    # Within the bound the spent token is recognised as reuse; beyond it, it is merely refused.
    revoked = (await family_row(db_conn, str(old)))["revoked_reason"]
    assert revoked == ("refresh_reuse" if recognised else None)
