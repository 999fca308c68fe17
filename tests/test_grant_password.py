"""RFC 6749 section 4.3: the password grant, and what it must not reveal."""

from __future__ import annotations

from argon2 import PasswordHasher

from tessera.server.store import UserStore
from tests.helpers import PASSWORD, SECRET, basic, fetch_jwks, post_token, verify_with_joserfc


async def _login(http, username="alice", password=PASSWORD, **extra):
    form = {"grant_type": "password", "username": username, "password": password, **extra}
    return await post_token(http, form, headers=basic("app", SECRET))


async def test_password_grant_issues_a_user_token_with_auth_time(client, admin, clock):
    await admin.client("app", grant_types=("password",))
    user = await admin.user("alice", PASSWORD)
    status, body, response = await _login(client)
    assert status == 200, body
    assert response.headers["Cache-Control"] == "no-store"
    claims = verify_with_joserfc(body["access_token"], await fetch_jwks(client)).claims
    assert claims["sub"] == str(user.user_id)
    assert claims["client_id"] == "app"
    assert claims["auth_time"] == int(clock())
    assert "refresh_token" not in body  # the client lacks the refresh_token grant


async def test_wrong_password_unknown_user_and_disabled_user_get_the_same_answer(client, admin):
    await admin.client("app", grant_types=("password",))
    await admin.user("alice", PASSWORD)
    await admin.user("bob", PASSWORD)
    await UserStore(admin.pool).set_disabled("bob", True)
    answers = [
        await _login(client, "alice", "wrong password"),
        await _login(client, "nobody", PASSWORD),
        await _login(client, "bob", PASSWORD),
    ]
    assert [(status, body) for status, body, _ in answers] == [
        (400, {"error": "invalid_grant", "error_description": "invalid username or password"})
    ] * 3


async def test_missing_username_or_password_is_invalid_request(client, admin):
    await admin.client("app", grant_types=("password",))
    status, body, _ = await post_token(
        client, {"grant_type": "password", "username": "alice"}, headers=basic("app", SECRET)
    )
    assert status == 400 and body["error"] == "invalid_request"


async def test_a_hash_with_old_parameters_is_upgraded_on_successful_login(client, admin, settings):
    await admin.client("app", grant_types=("password",))
    old_hash = PasswordHasher(time_cost=1, memory_cost=2048, parallelism=1).hash(PASSWORD)
    await UserStore(admin.pool).create("carol", old_hash)
    status, _, _ = await _login(client, "carol")
    assert status == 200
    stored = (await UserStore(admin.pool).by_username("carol")).password_hash
    assert stored != old_hash
    assert f"m={settings.argon2.memory_kib},t={settings.argon2.time_cost}" in stored
    status, _, _ = await _login(client, "carol")
    assert status == 200


async def test_passwords_are_stored_only_as_argon2id_hashes(admin, db_conn):
    await admin.user("alice", PASSWORD)
    stored = await db_conn.fetchval("SELECT password_hash FROM users WHERE username = 'alice'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
