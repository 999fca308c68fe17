"""RFC 7009: POST /revoke. Any token of a family revokes the family; nothing else changes anything."""

from __future__ import annotations

import secrets

import pytest

from tessera.server.oauth.families import RefreshToken, parse_refresh_token
from tests.helpers import PASSWORD, SECRET, basic, post_token
from tests.sessions import APP_GRANTS, call, family_row, login, refresh


@pytest.fixture
async def app_and_alice(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    return await admin.user("alice", PASSWORD)


async def test_revoking_the_live_refresh_token_revokes_the_family(client, app_and_alice, db_conn):
    body = await login(client)
    status, answer = await call(client, "/revoke", body["refresh_token"])
    assert (status, answer) == (200, None)
    assert (await refresh(client, body["refresh_token"]))[1]["error"] == "invalid_grant"
    assert (await call(client, "/introspect", body["access_token"]))[1] == {"active": False}
    assert (await family_row(db_conn, body["refresh_token"]))["revoked_reason"] == "revoked_by_client"
    assert await db_conn.fetchval("SELECT count(*) FROM security_events") == 0  # a logout is no attack


async def test_revoking_a_spent_refresh_token_revokes_the_family_newest_included(client, app_and_alice):
    first = (await login(client))["refresh_token"]
    _, second = await refresh(client, first)
    assert (await call(client, "/revoke", first))[0] == 200
    assert (await refresh(client, second["refresh_token"]))[0] == 400


async def test_revoking_an_access_token_from_a_login_revokes_its_family(client, app_and_alice):
    body = await login(client)
    assert (await call(client, "/revoke", body["access_token"], token_type_hint="access_token"))[0] == 200
    assert (await refresh(client, body["refresh_token"]))[0] == 400
    assert (await call(client, "/introspect", body["access_token"]))[1] == {"active": False}


async def test_an_access_token_without_a_session_is_unsupported_token_type(client, admin):
    await admin.client("svc", grant_types=("client_credentials",))
    _, token, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    status, body = await call(client, "/revoke", token["access_token"], client_id="svc")
    assert (status, body["error"]) == (400, "unsupported_token_type")


@pytest.mark.parametrize(
    "token",
    ["nonsense", "tsr_" + "A" * 70, "eyJhbGciOiJub25lIn0.e30.", "a.b.c", "tsr_" + "A" * 69 + "B"],
)
async def test_unknown_or_malformed_tokens_answer_200(client, app_and_alice, token):
    assert await call(client, "/revoke", token) == (200, None)


async def test_a_forged_token_naming_a_real_family_revokes_nothing(client, app_and_alice):
    real = parse_refresh_token((await login(client))["refresh_token"])
    forged = RefreshToken(real.family_id, 0, secrets.token_bytes(32))
    assert (await call(client, "/revoke", str(forged)))[0] == 200
    assert (await refresh(client, str(real)))[0] == 200


async def test_a_client_cannot_revoke_another_clients_tokens(client, admin, app_and_alice):
    await admin.client("other", grant_types=APP_GRANTS)
    body = await login(client)
    assert await call(client, "/revoke", body["refresh_token"], client_id="other") == (200, None)
    assert await call(client, "/revoke", body["access_token"], client_id="other") == (200, None)
    assert (await refresh(client, body["refresh_token"]))[0] == 200


async def test_revocation_requires_client_authentication(client, app_and_alice):
    body = await login(client)
    response = await client.post("/revoke", data={"token": body["refresh_token"]})
    assert response.status == 401 and (await response.json())["error"] == "invalid_client"
    status, answer = await call(client, "/revoke", body["refresh_token"], secret="wrong-secret-value")
    assert (status, answer["error"]) == (401, "invalid_client")
    assert (await refresh(client, body["refresh_token"]))[0] == 200


async def test_a_public_client_revokes_its_own_tokens_with_its_client_id(client, admin):
    await admin.client("spa", secret=None, grant_types=APP_GRANTS)
    await admin.user("alice", PASSWORD)
    _, body, _ = await post_token(
        client, {"grant_type": "password", "username": "alice", "password": PASSWORD, "client_id": "spa"}
    )
    assert (await call(client, "/revoke", body["refresh_token"], client_id="spa", secret=None))[0] == 200
    assert (await refresh(client, body["refresh_token"], client_id="spa", secret=None))[0] == 400


async def test_a_missing_or_repeated_token_is_invalid_request(client, app_and_alice):
    response = await client.post("/revoke", data={"token_type_hint": "refresh_token"}, headers=basic("app", SECRET))
    assert response.status == 400 and (await response.json())["error"] == "invalid_request"
    response = await client.post(
        "/revoke", data="token=a&token=b", headers={**basic("app", SECRET), "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status == 400 and (await response.json())["error"] == "invalid_request"


HOSTILE_TOKENS = [
    b"token=tsr_%00" + b"A" * 66,
    b"token=%ff%fe",
    b"token=" + b"A" * 4096,
    b"token=tsr_" + b"A" * 4000,
    b"token=" + b"a." * 2000,
    b"token=eyJhbGciOiJSUzI1NiJ9." + b"A" * 3000 + b".AA",
    b"token=%27+OR+1%3D1--",
    b"token=tsr_" + b"_" * 70,
    b"token=tsr_" + b"-" * 70,
]


@pytest.mark.parametrize("path", ["/revoke", "/introspect", "/token"])
async def test_hostile_tokens_get_a_clean_answer_and_change_nothing(client, app_and_alice, db_conn, path):
    live = await login(client)
    before = await db_conn.fetch("SELECT * FROM refresh_families")
    headers = {**basic("app", SECRET), "Content-Type": "application/x-www-form-urlencoded"}
    for body in HOSTILE_TOKENS:
        if path == "/token":
            body = b"grant_type=refresh_token&refresh_" + body
        response = await client.post(path, data=body, headers=headers)
        assert response.status in (200, 400, 413), body
        answer = await response.json(content_type=None) if await response.read() else None
        assert answer is None or answer == {"active": False} or set(answer) == {"error", "error_description"}
    assert await db_conn.fetch("SELECT * FROM refresh_families") == before
    assert (await refresh(client, live["refresh_token"]))[0] == 200
