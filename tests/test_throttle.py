"""Brute-force throttling of the password grant and of client authentication (CONTRACT.md,
Robustness): per username or client and address, shared through PostgreSQL, 429 with
Retry-After, and nothing an attacker elsewhere can use to lock the victim out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import PASSWORD, SECRET, basic, eventually, post_token, tessera_server

LIMIT = 3
ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.7"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    # The test client connects from 127.0.0.1, a trusted proxy here, so X-Forwarded-For sets the address.
    return {**env, "TESSERA_LOGIN_MAX_FAILURES": str(LIMIT), "TESSERA_TRUSTED_PROXIES": "127.0.0.1"}


@pytest.fixture
async def app_client(admin: Any) -> None:
    await admin.client("app", grant_types=("password",))
    await admin.user("alice", PASSWORD)


async def _login(http: TestClient[Any, Any], username: str = "alice", password: str = "wrong", *, address: str = ATTACKER):
    form = {"grant_type": "password", "username": username, "password": password}
    return await post_token(http, form, headers={**basic("app", SECRET), "X-Forwarded-For": address})


async def _client_credentials(http: TestClient[Any, Any], secret: str, *, address: str = ATTACKER):
    return await post_token(
        http, {"grant_type": "client_credentials"}, headers={**basic("svc", secret), "X-Forwarded-For": address}
    )


def _assert_throttled(status: int, body: dict[str, Any], response: Any, at_least: int = 1, at_most: int = 900) -> None:
    assert status == 429, body
    assert set(body) == {"error", "error_description"} and body["error"] == "too_many_requests"
    assert at_least <= int(response.headers["Retry-After"]) <= at_most
    assert response.headers["Cache-Control"] == "no-store"


async def test_past_the_limit_a_username_gets_429_with_retry_after_until_the_window_passes(client, app_client, clock):
    for _ in range(LIMIT):
        status, body, _ = await _login(client)
        assert (status, body["error"]) == (400, "invalid_grant")
    _assert_throttled(*await _login(client), at_least=899)
    # Even the right password is refused now: otherwise the answer would tell which guess was right.
    _assert_throttled(*await _login(client, password=PASSWORD))
    clock.advance(600)
    _assert_throttled(*await _login(client), at_least=299, at_most=300)
    clock.advance(301)
    status, body, _ = await _login(client, password=PASSWORD)
    assert status == 200, body


async def test_an_attacker_on_another_address_cannot_lock_the_user_out(client, app_client):
    for _ in range(LIMIT + 5):
        await _login(client, address=ATTACKER)
    _assert_throttled(*await _login(client, address=ATTACKER))
    status, body, _ = await _login(client, password=PASSWORD, address=VICTIM)
    assert status == 200, body


async def test_unknown_and_known_usernames_are_throttled_alike(client, app_client):
    answers = {}
    for username in ("alice", "nobody"):
        seen = []
        for _ in range(LIMIT + 1):
            status, body, response = await _login(client, username)
            seen.append((status, body, response.headers.get("Retry-After")))
        answers[username] = seen
    assert answers["alice"] == answers["nobody"]


async def test_concurrent_guesses_cannot_slip_past_the_limit(client, app_client):
    answers = await asyncio.gather(*(_login(client, password=f"guess-{n}") for n in range(30)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [400] * LIMIT + [429] * (30 - LIMIT)


async def test_a_burst_of_identical_attempts_counts_once(client, app_client):
    # A double-submitted login, a client's first burst of requests: one attempt, not thirty.
    answers = await asyncio.gather(*(_login(client, password=PASSWORD) for _ in range(30)))
    assert [status for status, _, _ in answers] == [200] * 30
    wrong = await asyncio.gather(*(_login(client, password="the same wrong guess") for _ in range(30)))
    assert [status for status, _, _ in wrong] == [400] * 30
    for _ in range(LIMIT - 1):
        assert (await _login(client))[0] == 400
    assert (await _login(client))[0] == 429


async def test_a_client_s_first_burst_of_requests_is_neither_throttled_nor_queued_away(env, admin, clock):
    async with tessera_server(env, clock, TESSERA_ARGON2_THREADS="1", TESSERA_ARGON2_QUEUE="0") as http:
        await admin.client("svc")
        answers = await asyncio.gather(*(_client_credentials(http, SECRET) for _ in range(40)))
        assert [status for status, _, _ in answers] == [200] * 40


async def test_a_success_starts_the_count_again(client, app_client):
    for _ in range(LIMIT - 1):
        await _login(client)
    assert (await _login(client, password=PASSWORD))[0] == 200
    for _ in range(LIMIT):
        assert (await _login(client))[0] == 400
    assert (await _login(client))[0] == 429


async def test_throttled_attempts_never_reach_argon2(env, admin, clock):
    # One argon2 thread and no queue: any attempt that reached argon2 alongside another would be a 503.
    async with tessera_server(env, clock, TESSERA_ARGON2_THREADS="1", TESSERA_ARGON2_QUEUE="0") as http:
        await admin.client("app", grant_types=("password",))
        await admin.user("alice", PASSWORD)
        assert (await _login(http, password=PASSWORD))[0] == 200  # the client's secret is now cached
        for _ in range(LIMIT):
            assert (await _login(http))[0] == 400
        answers = await asyncio.gather(*(_login(http, password=f"guess-{n}") for n in range(20)))
        assert [status for status, _, _ in answers] == [429] * 20


async def test_password_spraying_from_one_address_hits_the_per_address_cap(env, admin, clock):
    async with tessera_server(env, clock, TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS="5") as http:
        await admin.client("app", grant_types=("password",))
        await admin.user("alice", PASSWORD)
        for n in range(5):
            assert (await _login(http, f"user{n}"))[0] == 400
        _assert_throttled(*await _login(http, "user-next"))
        _assert_throttled(*await _login(http, "alice", PASSWORD))
        status, body, _ = await _login(http, "alice", PASSWORD, address=VICTIM)
        assert status == 200, body


async def test_client_secret_guessing_is_throttled_even_when_the_right_secret_is_cached(client, admin):
    await admin.client("svc")
    assert (await _client_credentials(client, SECRET))[0] == 200  # the real secret is now cached
    for n in range(LIMIT):
        status, body, response = await _client_credentials(client, f"guess-{n}-guess-{n}")
        assert (status, body["error"]) == (401, "invalid_client")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    _assert_throttled(*await _client_credentials(client, "another-guess-another"))
    # A cached right guess is refused too: the throttle is read in the same query as the client.
    _assert_throttled(*await _client_credentials(client, SECRET))
    status, body, _ = await _client_credentials(client, SECRET, address=VICTIM)
    assert status == 200, body


async def test_guessing_on_one_instance_throttles_the_cached_secret_on_another(client, admin, settings, clock):
    """Each instance answers a recently verified secret from memory; failures charged on another
    instance reach it by notification (milliseconds), and from then on the pair gets 429 there too."""
    await admin.client("svc")
    assert (await _client_credentials(client, SECRET))[0] == 200  # cached on this instance
    assert (await _client_credentials(client, SECRET))[0] == 200  # and its counter known to be clean
    async with tessera_server(settings, clock) as other:
        for n in range(LIMIT):
            assert (await _client_credentials(other, f"guess-{n}-guess-{n}"))[0] == 401

    async def throttled_here() -> bool:
        return (await _client_credentials(client, SECRET))[0] == 429

    await eventually(throttled_here, timeout=2.0, interval=0.005, what="the pair throttled here too")
    _assert_throttled(*await _client_credentials(client, SECRET))
    assert (await _client_credentials(client, SECRET, address=VICTIM))[0] == 200


async def test_unknown_clients_are_throttled_like_known_ones(client, admin):
    await admin.client("svc")
    for client_id in ("svc", "no-such-client"):
        answers = []
        for _ in range(LIMIT + 1):
            status, _, response = await post_token(
                client, {"grant_type": "client_credentials"},
                headers={**basic(client_id, "wrong-wrong-wrong"), "X-Forwarded-For": ATTACKER},
            )
            answers.append(status)
        assert answers == [401] * LIMIT + [429], client_id


async def test_the_counters_are_shared_by_every_instance(env, admin, clock):
    async with tessera_server(env, clock) as one, tessera_server(env, clock) as two:
        await admin.client("app", grant_types=("password",))
        await admin.user("alice", PASSWORD)
        for n in range(LIMIT):
            assert (await _login(one if n % 2 else two))[0] == 400
        _assert_throttled(*await _login(one))
        _assert_throttled(*await _login(two))


async def test_a_cached_client_authentication_writes_nothing(client, admin, db_conn):
    await admin.client("svc")
    assert (await _client_credentials(client, SECRET))[0] == 200  # cached from here on
    # Any write to the counters from now on fails the request (and the test).
    await db_conn.execute(
        "CREATE FUNCTION refuse_write() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'write on the hot path'; END $$;"
        "CREATE TRIGGER no_writes BEFORE INSERT OR UPDATE OR DELETE ON login_failures"
        " FOR EACH STATEMENT EXECUTE FUNCTION refuse_write()"
    )
    try:
        answers = await asyncio.gather(*(_client_credentials(client, SECRET) for _ in range(20)))
        assert [status for status, _, _ in answers] == [200] * 20
        # The trigger bites: a wrong secret has to be counted, so it fails here.
        assert (await _client_credentials(client, "wrong-wrong-wrong"))[0] == 500
    finally:
        await db_conn.execute("DROP TRIGGER no_writes ON login_failures; DROP FUNCTION refuse_write()")


async def test_usernames_and_addresses_are_not_stored_in_the_clear(env, clock, app_client, db_conn):
    # With the (opt-in) per-address cap on, so that the address's own counter is written too.
    async with tessera_server(env, clock, TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS="50") as http:
        await _login(http, "secret-looking-username")
    rows = await db_conn.fetch("SELECT counter, kind, remote FROM login_failures")
    assert {"user", "address"} <= {row["kind"] for row in rows}
    assert all(len(row["counter"]) == 32 and b"secret-looking" not in bytes(row["counter"]) for row in rows)
    assert {row["remote"] for row in rows} == {ATTACKER}


def test_ipv6_clients_are_counted_per_64_prefix():
    from tessera.server.oauth.throttle import address_key

    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key(None) == "unknown"


async def test_identical_attempts_share_a_check_only_against_the_same_stored_hash(admin, clock):
    """A secret rotated while a check of the old secret runs: a request that read the new row must
    not take that run's outcome (a match against the old hash) as its own."""
    from tessera.server.oauth.throttle import LoginThrottle
    from tessera.server.store.login_failures import LoginFailureStore

    throttle = LoginThrottle(
        LoginFailureStore(admin.pool), b"k" * 32, max_failures=10, max_failures_per_address=0, clock=clock
    )
    attempt = throttle.attempt("client", "svc", "198.51.100.7")
    release = asyncio.Event()
    checks: list[str] = []

    def check_against(stored: str) -> Any:
        async def check() -> bool:
            checks.append(stored)
            await release.wait()
            return stored == "old-hash"  # the presented (old) secret matches only the old hash

        return check

    before = asyncio.ensure_future(
        throttle.attempt_once(attempt, "old-secret", check_against("old-hash"), succeeded=bool, against="old-hash")
    )
    same = asyncio.ensure_future(
        throttle.attempt_once(attempt, "old-secret", check_against("old-hash"), succeeded=bool, against="old-hash")
    )
    after = asyncio.ensure_future(
        throttle.attempt_once(attempt, "old-secret", check_against("new-hash"), succeeded=bool, against="new-hash")
    )
    await eventually(lambda: len(checks) == 2, what="both checks started")
    release.set()
    assert await before is True and await same is True  # one run shared by the same row
    assert await after is False  # its own run, against the hash it read
    assert sorted(checks) == ["new-hash", "old-hash"]
