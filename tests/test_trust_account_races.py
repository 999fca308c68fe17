"""A sign-in in flight when its account changes (CONTRACT.md, Robustness, accounts; issue 17): "disabling
a user, changing a password or deleting a user or client also stops a sign-in that was in flight at
that moment: no family is created for it afterwards".

The password grant reads the user, then runs argon2, then makes the family. Each test holds the
sign-in right after its password was checked (the hasher waits on an event), changes the account
as the CLI does, lets the sign-in go on, and looks at the answer and at the families table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tessera.server.oauth.passwords import SecretHasher
from tessera.server.store import ClientStore, UserStore
from tests.conftest import Admin
from tests.helpers import PASSWORD, SECRET, basic, eventually, post_token, tessera_server
from tests.sessions import APP_GRANTS, refresh


class PasswordChecks:
    """The server's argon2 checks of the user's password, each held after it ran until ``go``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.checked, self.go = asyncio.Event(), asyncio.Event()
        verify = SecretHasher.verify

        async def held(hasher: SecretHasher, stored_hash: str | None, secret: str) -> bool:
            matched = await verify(hasher, stored_hash, secret)
            if secret == PASSWORD:  # the user's password; the client's secret goes through
                self.checked.set()
                await self.go.wait()
            return matched

        monkeypatch.setattr(SecretHasher, "verify", held)


async def _sign_in(http: Any) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    status, body, _ = await post_token(http, form, headers=basic("app", SECRET))
    return status, body


async def _families(admin: Admin) -> int:
    return int(await admin.pool.fetchval("SELECT count(*) FROM refresh_families"))


# What the operator does while the password is being checked, as the CLI does it.
CHANGES: dict[str, Callable[[Admin], Awaitable[Any]]] = {
    "users disable": lambda admin: UserStore(admin.pool).set_disabled("alice", True),
    "users set-password": lambda admin: _set_password(admin),
    "users delete": lambda admin: UserStore(admin.pool).delete("alice"),
    "clients delete": lambda admin: ClientStore(admin.pool).delete("app"),
    "clients rotate-secret": lambda admin: _rotate_secret(admin),
}


async def _set_password(admin: Admin) -> None:
    assert await UserStore(admin.pool).set_password("alice", await admin.hasher.hash("a new password, quite long")) is not None


async def _rotate_secret(admin: Admin) -> None:
    assert await ClientStore(admin.pool).set_secret_hash("app", await admin.hasher.hash("a-new-secret-a-new-secret"))


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_an_account_change_during_a_sign_in_leaves_no_session(env, admin, monkeypatch, change):
    await admin.client("app", grant_types=APP_GRANTS)
    await admin.user("alice")
    checks = PasswordChecks(monkeypatch)
    async with tessera_server(env) as http:
        answer = asyncio.ensure_future(_sign_in(http))
        await asyncio.wait_for(checks.checked.wait(), 10)  # the password was right, for the user as read
        await CHANGES[change](admin)
        checks.go.set()
        status, body = await answer
        assert (status, body.get("error")) == (400, "invalid_grant"), body
        assert await _families(admin) == 0


async def test_a_sign_in_held_the_same_way_with_no_change_gets_its_session(env, admin, monkeypatch):
    """The control for the test above: holding the check changes nothing by itself."""
    await admin.client("app", grant_types=APP_GRANTS)
    await admin.user("alice")
    checks = PasswordChecks(monkeypatch)
    async with tessera_server(env) as http:
        answer = asyncio.ensure_future(_sign_in(http))
        await asyncio.wait_for(checks.checked.wait(), 10)
        checks.go.set()
        status, body = await answer
        assert status == 200, body
        assert await _families(admin) == 1
        assert (await refresh(http, body["refresh_token"]))[0] == 200


NEW_FAMILY_WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tessera'"
    " AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO refresh_families%'"
)


async def test_a_sign_in_meeting_a_disable_not_yet_committed_waits_for_it_and_leaves_no_session(env, admin, monkeypatch):
    """The disable's transaction has changed the user and revoked their families, but not committed,
    when the sign-in writes its family: a family written then would be missed by that revocation.
    The sign-in must wait for the disable and see it."""
    await admin.client("app", grant_types=APP_GRANTS)
    await admin.user("alice")
    checks = PasswordChecks(monkeypatch)
    async with tessera_server(env) as http:
        answer = asyncio.ensure_future(_sign_in(http))
        await asyncio.wait_for(checks.checked.wait(), 10)
        async with admin.pool.acquire() as connection:
            disabling = connection.transaction()
            await disabling.start()
            await UserStore(connection).set_disabled("alice", True)
            checks.go.set()

            async def family_write_waits() -> bool:
                return bool(await admin.pool.fetchval(NEW_FAMILY_WAITING))

            waited = await eventually(family_write_waits, timeout=3, fail=False)
            await disabling.commit()
        status, body = await answer
        assert waited, "the sign-in wrote its family without waiting for the disable"
        assert (status, body.get("error")) == (400, "invalid_grant"), body
        assert await _families(admin) == 0


async def test_a_sign_in_that_rehashes_the_password_and_secret_on_the_way_keeps_its_session(env, admin):
    """A rehash to new argon2 parameters keeps the password and the secret: the sign-in that made it
    still gets its family."""
    await admin.client("app", grant_types=APP_GRANTS)
    await admin.user("alice")
    stored = await admin.pool.fetchrow(
        "SELECT u.password_hash, c.secret_hash FROM users u, clients c WHERE u.username = 'alice' AND c.client_id = 'app'"
    )
    async with tessera_server(env, TESSERA_ARGON2_TIME_COST="2") as http:  # the test hashes were made with 1
        status, body = await _sign_in(http)
        assert status == 200, body
        rehashed = await admin.pool.fetchrow(
            "SELECT u.password_hash, c.secret_hash FROM users u, clients c WHERE u.username = 'alice' AND c.client_id = 'app'"
        )
        assert rehashed["password_hash"] != stored["password_hash"] and rehashed["secret_hash"] != stored["secret_hash"]
        assert await _families(admin) == 1
        assert (await refresh(http, body["refresh_token"]))[0] == 200
