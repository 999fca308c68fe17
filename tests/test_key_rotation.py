"""Key lifecycle in one process: pre-published rotation, retirement, revocation, the database's
own guarantees, and the scheduler, all timed with the FakeClock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from joserfc.errors import InvalidKeyIdError

from tessera.keys.keyring import Keyring
from tessera.keys.lifecycle import RETIRED_KEY_LEEWAY, NotPublishedLongEnough, NoSuchKey, key_roles
from tessera.server.tasks.key_scheduler import KeyScheduler
from tessera.server.store import PgKeyStore
from tests.helpers import SECRET, basic, eventually, post_token, tessera_server, verify_with_joserfc
from tests.key_helpers import FAST_KEYS, jwks_of, kek_bytes, lifecycle_for, lifecycle_on, new_key


async def _token(http) -> str:
    status, body, _ = await post_token(http, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200, body
    return body["access_token"]


async def _states(db_conn) -> dict[str, str]:
    return dict(await db_conn.fetch("SELECT kid, state FROM signing_keys"))


def _kid(states: dict[str, str], state: str) -> str:
    return next(k for k, s in states.items() if s == state)


# --- when a next key may sign ---------------------------------------------------------------------


async def test_a_next_key_signs_only_after_jwks_max_age_plus_reload_interval(env, clock):
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
        with pytest.raises(NotPublishedLongEnough) as refused:
            await lifecycle.rotate()
        assert refused.value.required == 61 and refused.value.remaining == 61
        clock.advance(60)
        with pytest.raises(NotPublishedLongEnough):
            await lifecycle.rotate()
        clock.advance(1)
        rotation = await lifecycle.rotate()
        assert not rotation.early


async def test_rotation_waits_for_publication_even_when_the_interval_is_shorter_than_max_age(env, clock, db_conn):
    settings = {**FAST_KEYS, "TESSERA_KEY_ROTATION_INTERVAL": "60", "TESSERA_JWKS_MAX_AGE": "600"}
    async with lifecycle_on(env, clock, **settings) as lifecycle:
        await lifecycle.prepare()
        clock.advance(120)  # two intervals, but the next key has been published for only 120 s
        assert await lifecycle.rotate_if_due() is None
        clock.advance(481)
        assert await lifecycle.rotate_if_due() is not None
        assert sorted((await _states(db_conn)).values()) == ["active", "next", "retired"]


async def test_an_instance_with_a_longer_jwks_max_age_holds_back_rotation_elsewhere(env, clock, admin):
    async with tessera_server(env, clock, **{**FAST_KEYS, "TESSERA_JWKS_MAX_AGE": "600"}):
        # This server caches for 600 s, so the next key it serves must wait 601 s, even for a
        # CLI or instance configured with 60.
        async with lifecycle_on(env, clock, **FAST_KEYS) as elsewhere:
            clock.advance(100)
            with pytest.raises(NotPublishedLongEnough) as refused:
                await elsewhere.rotate()
            assert refused.value.required == 601
            clock.advance(502)
            await elsewhere.rotate()


# --- the scheduler --------------------------------------------------------------------------------


async def test_the_scheduler_rotates_when_due_and_a_jwks_cached_before_verifies_the_new_tokens(env, clock, admin, db_conn):
    await admin.client("svc")
    async with tessera_server(env, clock, **FAST_KEYS) as http:
        cached, kids_before = await jwks_of(http)
        old_token = await _token(http)
        clock.advance(3599)
        await asyncio.sleep(0.2)  # several ticks: not due yet
        assert (await jwks_of(http))[1][0] == kids_before[0]
        clock.advance(2)
        await eventually(lambda: _active_is(http, kids_before[1]), what="rotation")
        new_token = await _token(http)
        assert verify_with_joserfc(new_token, cached).header["kid"] == kids_before[1]
        assert verify_with_joserfc(old_token, (await jwks_of(http))[0]).header["kid"] == kids_before[0]
        await asyncio.sleep(0.2)  # more ticks: still one rotation in this interval
        assert sorted((await _states(db_conn)).values()) == ["active", "next", "retired"]


async def _active_is(http, kid: str) -> bool:
    return (await jwks_of(http))[1][0] == kid


async def test_many_concurrent_schedulers_make_exactly_one_rotation_per_interval(env, clock, db_conn):
    pools = [await asyncpg.create_pool(env["TESSERA_DATABASE_URL"], min_size=1, max_size=1) for _ in range(8)]
    try:
        await lifecycle_for(pools[0], env, clock, **FAST_KEYS).prepare()
        schedulers = [  # eight instances, each on its own connection, ticking at the same moment
            KeyScheduler(
                Keyring(PgKeyStore(pool), kek_bytes(env["TESSERA_KEY_ENCRYPTION_KEY"]), clock=clock),
                lifecycle_for(pool, env, clock, **FAST_KEYS), reload_interval=0.05, clock=clock,
            )
            for pool in pools
        ]
        for round_ in (1, 2):
            clock.advance(3601)
            results = await asyncio.gather(*(s.tick() for s in schedulers))
            assert sum(r is not None for r in results) == 1, results
            assert sorted((await _states(db_conn)).values()).count("retired") == round_
    finally:
        for pool in pools:
            await pool.close()


async def test_a_change_reaches_an_instance_through_notify_without_waiting_for_its_poll(env, clock, admin):
    await admin.client("svc")
    async with tessera_server(env, clock, **{**FAST_KEYS, "TESSERA_KEY_RELOAD_INTERVAL": "300"}) as http:
        _, kids = await jwks_of(http)
        async with lifecycle_on(env, clock, **FAST_KEYS) as elsewhere:
            await elsewhere.rotate(force=True)
        await eventually(lambda: _active_is(http, kids[1]), timeout=3, what="notified reload")
        assert verify_with_joserfc(await _token(http), (await jwks_of(http))[0]).header["kid"] == kids[1]


async def test_the_listener_reconnects_after_its_connection_is_killed(env, clock, admin, db_conn):
    await admin.client("svc")
    listeners = "SELECT pid FROM pg_stat_activity WHERE application_name = 'tessera-listen' AND datname = current_database()"
    async with tessera_server(env, clock, **{**FAST_KEYS, "TESSERA_KEY_RELOAD_INTERVAL": "300"}) as http:
        _, kids = await jwks_of(http)
        first = await eventually(lambda: db_conn.fetchval(listeners), what="listener connected")
        await db_conn.execute("SELECT pg_terminate_backend($1)", first)
        await eventually(lambda: _other_listener(db_conn, listeners, first), what="listener reconnected")
        async with lifecycle_on(env, clock, **FAST_KEYS) as elsewhere:
            await elsewhere.rotate(force=True)
        await eventually(lambda: _active_is(http, kids[1]), timeout=3, what="reload after reconnect")


async def _other_listener(db_conn, query: str, old_pid: int) -> bool:
    return any(pid != old_pid for pid in [r["pid"] for r in await db_conn.fetch(query)])


# --- retirement -----------------------------------------------------------------------------------


async def test_a_retired_key_stays_published_until_its_tokens_expire_plus_leeway_then_gc_drops_it(env, clock, admin, db_conn):
    await admin.client("svc")
    async with tessera_server(env, clock, **FAST_KEYS) as http:
        _, kids = await jwks_of(http)
        old_token = await _token(http)
        async with lifecycle_on(env, clock, **FAST_KEYS) as elsewhere:
            rotation = await elsewhere.rotate(force=True)
        await eventually(lambda: _active_is(http, kids[1]))
        expires = rotation.retired_expires_at
        assert (expires - datetime.fromtimestamp(clock(), UTC)).total_seconds() == pytest.approx(
            900 + 0.05 + RETIRED_KEY_LEEWAY, abs=0.01
        )
        clock.advance(900 + RETIRED_KEY_LEEWAY - 1)  # the token has expired; verifiers' leeway has not
        await asyncio.sleep(0.2)
        key_set, published = await jwks_of(http)
        assert kids[0] in published
        verify_with_joserfc(old_token, key_set)  # signature still checks (exp is the verifier's business)
        clock.advance(2)
        await eventually(lambda: _not_published(http, kids[0]), what="retired key leaves the JWKS")
        store = PgKeyStore(admin.pool)
        assert await store.delete_expired_keys(datetime.fromtimestamp(clock(), UTC)) == 1
        assert sorted((await _states(db_conn)).values()) == ["active", "next"]


async def _not_published(http, kid: str) -> bool:
    return kid not in (await jwks_of(http))[1]


async def test_gc_keeps_revoked_keys_for_the_record_for_thirty_days(env, clock, admin, db_conn):
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
        rotation = await lifecycle.rotate(force=True)
        await lifecycle.revoke(rotation.retired.kid)
    store = PgKeyStore(admin.pool)
    now = datetime.fromtimestamp(clock(), UTC)
    assert await store.delete_expired_keys(now + timedelta(days=29)) == 0
    assert await store.delete_expired_keys(now + timedelta(days=30, seconds=1)) == 1
    assert sorted((await _states(db_conn)).values()) == ["active", "next"]


# --- revocation -----------------------------------------------------------------------------------


async def test_revoking_the_active_key_rotates_first_and_its_tokens_stop_verifying(env, clock, admin, db_conn):
    await admin.client("svc")
    async with tessera_server(env, clock, **FAST_KEYS) as http:
        cached, kids = await jwks_of(http)
        doomed = await _token(http)
        async with lifecycle_on(env, clock, **FAST_KEYS) as elsewhere:
            revocation = await elsewhere.revoke(kids[0])
        assert revocation.previous_state == "active" and revocation.rotation is not None
        await eventually(lambda: _not_published(http, kids[0]), what="revoked key leaves the JWKS")
        fresh, published = await jwks_of(http)
        assert published[0] == kids[1]
        with pytest.raises(InvalidKeyIdError):
            verify_with_joserfc(doomed, fresh)
        assert verify_with_joserfc(await _token(http), cached).header["kid"] == kids[1]
        states = await _states(db_conn)
        assert states[kids[0]] == "revoked" and states[kids[1]] == "active"


async def test_revoking_the_next_key_publishes_a_fresh_one_that_must_wait_its_turn(env, clock, db_conn):
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
        clock.advance(3600)
        old_next = _kid(await _states(db_conn), "next")
        revocation = await lifecycle.revoke(old_next)
        assert revocation.next_key is not None and revocation.next_key.kid != old_next
        with pytest.raises(NotPublishedLongEnough):
            await lifecycle.rotate()


async def test_revoking_twice_is_harmless_and_an_unknown_kid_is_refused(env, clock):
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
        rotation = await lifecycle.rotate(force=True)
        assert (await lifecycle.revoke(rotation.retired.kid)).previous_state == "retired"
        assert (await lifecycle.revoke(rotation.retired.kid)).previous_state == "revoked"
        with pytest.raises(NoSuchKey):
            await lifecycle.revoke("no-such-kid")


async def test_a_change_prepared_from_a_stale_key_set_is_refused_by_the_store(env, clock, admin, db_conn):
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
        store = PgKeyStore(admin.pool)
        now = datetime.fromtimestamp(clock(), UTC)
        active, upcoming = key_roles(await store.published_keys(now))  # what a slower process read
        await lifecycle.rotate(force=True)  # ... before this one rotated
        after = await _states(db_conn)
        spare = new_key(kek_bytes(env["TESSERA_KEY_ENCRYPTION_KEY"]))
        for attempt in (
            store.rotate(active=active, next_key=upcoming, new_next=spare, now=now, publish_seconds=0,
                         retired_expires_at=now, revoke_old=False),
            store.replace_next(next_key=upcoming, active=active, new_next=spare, now=now, publish_seconds=0),
            store.revoke(upcoming, active=active, now=now, new_next=spare, publish_seconds=0),
        ):
            assert await attempt is False
        assert await _states(db_conn) == after


# --- what the database itself refuses -------------------------------------------------------------


async def test_the_database_refuses_zero_or_two_active_keys_whoever_writes(env, clock, db_conn):
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
    attempts = [
        # zero active keys: refused at commit by the deferred trigger
        ("UPDATE signing_keys SET state = 'retired', retired_at = now(), expires_at = now() WHERE state = 'active'",
         asyncpg.IntegrityConstraintViolationError),
        ("DELETE FROM signing_keys WHERE state = 'active'", asyncpg.IntegrityConstraintViolationError),
        ("UPDATE signing_keys SET state = 'revoked', revoked_at = now() WHERE state = 'active'",
         asyncpg.IntegrityConstraintViolationError),
        # two active keys: refused by the unique index
        ("UPDATE signing_keys SET state = 'active', activated_at = now() WHERE state = 'next'",
         asyncpg.UniqueViolationError),
        # states without their dates
        ("UPDATE signing_keys SET state = 'revoked' WHERE state = 'next'", asyncpg.CheckViolationError),
    ]
    before = await _states(db_conn)
    for sql, error in attempts:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await db_conn.execute(sql)
        assert refused.type is error, (sql, refused.value)
        assert await _states(db_conn) == before, sql


# --- algorithm changes and the JWKS headers -------------------------------------------------------


async def test_changing_the_signing_algorithm_takes_effect_at_the_next_rotation_without_breaking_tokens(
    env, clock, admin, db_conn
):
    await admin.client("svc")
    async with tessera_server(env, clock, **FAST_KEYS) as http:
        es256_token = await _token(http)
    async with tessera_server(env, clock, **FAST_KEYS, TESSERA_SIGNING_ALG="PS256") as http:
        key_set, kids = await jwks_of(http)
        algs = {k.kid: k.alg for k in key_set}
        assert algs[kids[0]] == "ES256" and algs[kids[1]] == "PS256"  # the unused next key was replaced
        assert verify_with_joserfc(await _token(http), key_set).header["alg"] == "ES256"  # no surprise switch
        clock.advance(3601)
        await eventually(lambda: _active_is(http, kids[1]), timeout=10, what="rotation to PS256")
        fresh, _ = await jwks_of(http)
        assert verify_with_joserfc(await _token(http), key_set).header["alg"] == "PS256"
        assert verify_with_joserfc(es256_token, fresh).header["alg"] == "ES256"
        assert [k["alg"] for k in (await db_conn.fetch("SELECT alg FROM signing_keys WHERE state = 'next'"))] == ["PS256"]


async def test_the_jwks_etag_follows_the_key_set(env, clock):
    async with tessera_server(env, clock, **FAST_KEYS) as http:
        first = await http.get("/.well-known/jwks.json")
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"] == "public, max-age=60"
        assert (await http.get("/.well-known/jwks.json", headers={"If-None-Match": etag})).status == 304
        async with lifecycle_on(env, clock, **FAST_KEYS) as elsewhere:
            await elsewhere.rotate(force=True)

        async def changed() -> bool:
            response = await http.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
            return response.status == 200 and response.headers["ETag"] != etag

        await eventually(changed, what="a new ETag")
