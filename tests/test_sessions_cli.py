"""What operators do to sessions: user and client changes that end them, and `tessera sessions revoke`."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tessera.server.store import UserStore
from tests.helpers import PASSWORD
from tests.sessions import APP_GRANTS, call, family_id_of, family_row, login, refresh
from tests.test_cli import tessera


@pytest.fixture
async def sessions(admin, client):
    """alice with two sessions at app, bob with one; the tokens of each login."""
    await admin.client("app", grant_types=APP_GRANTS)
    await admin.client("other", grant_types=APP_GRANTS)
    await admin.user("alice", PASSWORD)
    await admin.user("bob", PASSWORD)
    return {
        "alice": [await login(client, "alice"), await login(client, "alice", client_id="other")],
        "bob": [await login(client, "bob")],
    }


async def test_disabling_a_user_revokes_their_sessions_at_once(env, client, sessions, db_conn):
    assert tessera(env, "users", "disable", "alice").returncode == 0
    alice = sessions["alice"][0]
    assert (await refresh(client, alice["refresh_token"]))[1]["error"] == "invalid_grant"
    assert (await refresh(client, sessions["alice"][1]["refresh_token"], client_id="other"))[0] == 400
    assert await call(client, "/introspect", alice["access_token"]) == (200, {"active": False})
    assert (await family_row(db_conn, alice["refresh_token"]))["revoked_reason"] == "user_disabled"
    assert (await refresh(client, sessions["bob"][0]["refresh_token"]))[0] == 200


async def test_changing_a_password_revokes_the_users_sessions(env, client, sessions, db_conn):
    assert tessera(env, "users", "set-password", "alice", "--password-stdin", stdin="a new password\n").returncode == 0
    assert (await refresh(client, sessions["alice"][0]["refresh_token"]))[0] == 400
    assert (await family_row(db_conn, sessions["alice"][0]["refresh_token"]))["revoked_reason"] == "password_changed"
    assert (await refresh(client, sessions["bob"][0]["refresh_token"]))[0] == 200


async def test_a_password_rehash_on_login_does_not_revoke_sessions(client, sessions, admin):
    user = await UserStore(admin.pool).by_username("alice")
    await UserStore(admin.pool).rehash_password(user.user_id, user.password_hash, user.password_hash)
    assert (await refresh(client, sessions["alice"][0]["refresh_token"]))[0] == 200


@pytest.mark.parametrize("change", ["disable", "set_password"])
async def test_the_user_change_and_the_revocation_commit_together_or_not_at_all(sessions, admin, db_conn, change):
    # Make revoking fail, as a lost connection or a full disk would: the user change must not stay.
    await db_conn.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'refused'; END $$;"
        "CREATE TRIGGER refuse BEFORE UPDATE ON refresh_families FOR EACH ROW EXECUTE FUNCTION refuse()"
    )
    users = UserStore(admin.pool)
    before = await users.by_username("alice")
    try:
        with pytest.raises(asyncpg.RaiseError):
            if change == "disable":
                await users.set_disabled("alice", True)
            else:
                await users.set_password("alice", "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$aGFzaA")
    finally:
        await db_conn.execute("DROP TRIGGER refuse ON refresh_families; DROP FUNCTION refuse()")
    assert await users.by_username("alice") == before


async def test_enabling_a_user_again_does_not_bring_sessions_back(client, sessions, admin):
    users = UserStore(admin.pool)
    await users.set_disabled("alice", True)
    await users.set_disabled("alice", False)
    assert (await refresh(client, sessions["alice"][0]["refresh_token"]))[0] == 400
    assert (await login(client, "alice"))["refresh_token"]


async def test_deleting_a_user_or_a_client_ends_their_sessions(env, client, sessions, db_conn):
    alice = sessions["alice"][0]
    assert tessera(env, "users", "delete", "alice").returncode == 0
    assert (await refresh(client, alice["refresh_token"]))[1]["error"] == "invalid_grant"
    assert await call(client, "/introspect", alice["access_token"]) == (200, {"active": False})
    assert tessera(env, "clients", "delete", "app").returncode == 0
    assert await db_conn.fetchval("SELECT count(*) FROM refresh_families WHERE client_id = 'app'") == 0
    assert await db_conn.fetchval("SELECT count(*) FROM refresh_families") == 0  # alice@other went with alice


async def test_sessions_revoke_by_user_client_and_family(env, client, sessions, db_conn):
    result = tessera(env, "sessions", "revoke", "--family", str(family_id_of(sessions["bob"][0]["refresh_token"])), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"revoked": 1}
    assert (await refresh(client, sessions["bob"][0]["refresh_token"]))[0] == 400
    result = tessera(env, "sessions", "revoke", "--client", "other", "--json")
    assert json.loads(result.stdout) == {"revoked": 1}
    assert (await refresh(client, sessions["alice"][0]["refresh_token"]))[0] == 200  # alice@app is untouched
    result = tessera(env, "sessions", "revoke", "--user", "alice", "--json")
    assert json.loads(result.stdout) == {"revoked": 1}
    assert await db_conn.fetchval("SELECT count(*) FROM refresh_families WHERE revoked_at IS NULL") == 0
    assert set(await db_conn.fetchval("SELECT array_agg(DISTINCT revoked_reason) FROM refresh_families")) == {
        "revoked_by_admin"
    }


@pytest.mark.parametrize(
    "args",
    [
        ("--user", "nobody"),
        ("--client", "nobody"),
        ("--family", "not-a-uuid"),
        ("--family", "00000000-0000-4000-8000-000000000000"),
        (),
        ("--user", "alice", "--client", "app"),
    ],
)
def test_sessions_revoke_refusals_are_one_line_with_a_nonzero_status(env, args):
    result = tessera(env, "sessions", "revoke", *args)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip() and "Traceback" not in result.stderr
