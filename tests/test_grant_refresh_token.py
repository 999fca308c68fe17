"""RFC 6749 section 6: the refresh_token grant, with rotation; lifetimes; what is stored."""

from __future__ import annotations

import base64
import struct

import pytest

from tessera.server.oauth.families import parse_refresh_token
from tests.helpers import basic, fetch_jwks, post_token, verify_with_joserfc
from tests.sessions import APP_GRANTS, PASSWORD, family_id_of, family_row, login, refresh, server_with


@pytest.fixture
async def app_and_alice(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    return await admin.user("alice", PASSWORD)


async def test_login_issues_a_tsr_refresh_token_of_256_random_bits_and_a_sid(client, app_and_alice):
    body = await login(client)
    token = body["refresh_token"]
    assert token.startswith("tsr_") and len(token) == 74
    payload = base64.urlsafe_b64decode(token[4:] + "==")
    family, generation, secret = payload[:16], struct.unpack(">I", payload[16:20])[0], payload[20:]
    assert generation == 0 and len(secret) == 32
    claims = verify_with_joserfc(body["access_token"], await fetch_jwks(client)).claims
    assert claims["sid"] == str(family_id_of(token)) and family.hex() == claims["sid"].replace("-", "")


async def test_a_client_without_the_refresh_grant_gets_no_refresh_token_and_may_not_refresh(client, admin):
    await admin.client("web", grant_types=("password",))
    await admin.user("alice", PASSWORD)
    status, body, _ = await post_token(
        client, {"grant_type": "password", "username": "alice", "password": PASSWORD},
        headers=basic("web", "s3cret-s3cret-s3cret"),
    )
    assert status == 200 and "refresh_token" not in body
    assert "sid" not in verify_with_joserfc(body["access_token"], await fetch_jwks(client)).claims
    status, body = await refresh(client, "tsr_" + "A" * 70, client_id="web")
    assert (status, body["error"]) == (400, "unauthorized_client")


async def test_every_refresh_rotates_in_the_same_family_and_keeps_user_audience_and_auth_time(
    client, app_and_alice, clock
):
    first = await login(client, resource="https://billing.example")
    login_time = int(clock())
    keys = await fetch_jwks(client)
    token, seen = first["refresh_token"], {first["refresh_token"]}
    for generation in range(1, 6):
        clock.advance(60)
        status, body = await refresh(client, token)
        assert status == 200, body
        token = body["refresh_token"]
        assert token not in seen and parse_refresh_token(token).generation == generation
        assert family_id_of(token) == family_id_of(first["refresh_token"])
        seen.add(token)
        claims = verify_with_joserfc(body["access_token"], keys).claims
        assert claims["sub"] == str(app_and_alice.user_id)
        assert claims["aud"] == "https://billing.example"
        assert claims["auth_time"] == login_time and claims["iat"] == int(clock())
        assert claims["sid"] == str(family_id_of(token))
        assert body["scope"] == "read write" and body["token_type"] == "Bearer"


async def test_refresh_may_narrow_the_scope_and_the_family_keeps_the_original(client, app_and_alice):
    token = (await login(client))["refresh_token"]
    status, body = await refresh(client, token, scope="read")
    assert status == 200 and body["scope"] == "read"
    assert verify_with_joserfc(body["access_token"], await fetch_jwks(client)).claims["scope"] == "read"
    status, body = await refresh(client, body["refresh_token"])
    assert status == 200 and body["scope"] == "read write"


async def test_widening_the_scope_is_invalid_scope_and_spends_nothing(client, app_and_alice, db_conn):
    token = (await login(client, scope="read"))["refresh_token"]
    status, body = await refresh(client, token, scope="read write")
    assert (status, body["error"]) == (400, "invalid_scope")
    assert (await family_row(db_conn, token))["generation"] == 0
    status, body = await refresh(client, token, scope="read")
    assert status == 200, body


async def test_another_audience_is_invalid_target_and_spends_nothing(client, app_and_alice, db_conn):
    token = (await login(client))["refresh_token"]
    status, body = await refresh(client, token, resource="https://billing.example")
    assert (status, body["error"]) == (400, "invalid_target")
    status, body = await refresh(client, token, resource="https://unknown.example")
    assert (status, body["error"]) == (400, "invalid_target")
    assert (await family_row(db_conn, token))["generation"] == 0
    status, body = await refresh(client, token, audience="https://orders.example")
    assert status == 200, body


@pytest.mark.parametrize(
    "presented",
    [
        "",  # omitted: section 3.2 treats an empty parameter as absent
        "not-a-token",
        "tsr_" + "A" * 69,
        "tsr_" + "A" * 71,
        "tsx_" + "A" * 70,
        "tsr_" + "A" * 69 + "B",  # non-canonical base64: stray bits in the last character
        "tsr_" + "A" * 69 + "=",
        "tsr_" + "A" * 70,  # well formed, names no family
    ],
)
async def test_malformed_or_unknown_refresh_tokens_are_refused(client, app_and_alice, presented):
    status, body = await refresh(client, presented)
    assert status == 400
    assert body["error"] == ("invalid_request" if presented == "" else "invalid_grant")


async def test_public_clients_refresh_with_their_client_id_alone(client, admin):
    await admin.client("spa", secret=None, grant_types=APP_GRANTS)
    await admin.user("alice", PASSWORD)
    status, body, _ = await post_token(
        client, {"grant_type": "password", "username": "alice", "password": PASSWORD, "client_id": "spa"}
    )
    assert status == 200, body
    status, body = await refresh(client, body["refresh_token"], client_id="spa", secret=None)
    assert status == 200, body


async def test_refresh_tokens_are_stored_only_as_hashes(client, app_and_alice, db_conn):
    first = await login(client)
    _, second = await refresh(client, first["refresh_token"])
    tables = await db_conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    dump = ""
    for table in tables:  # every row of every table, as PostgreSQL prints it (bytea as hex)
        dump += "\n".join(await db_conn.fetchval(f'SELECT array_agg(t::text) FROM "{table[0]}" t') or [])
    assert "refresh_families" in {t[0] for t in tables} and dump
    for token in (first["refresh_token"], second["refresh_token"]):
        parsed = parse_refresh_token(token)
        for needle in (token, token[4:], parsed.secret.hex(), parsed.payload.hex()):
            assert needle not in dump
    # The dump would show a stored token: it does show the stored SHA-256 of the current one.
    assert parse_refresh_token(second["refresh_token"]).digest.hex() in dump


async def test_a_token_idle_longer_than_the_refresh_ttl_is_refused(env, clock, app_and_alice):
    async with server_with(env, clock, TESSERA_REFRESH_TOKEN_TTL="100") as http:
        token = (await login(http))["refresh_token"]
        clock.advance(99)
        status, body = await refresh(http, token)
        assert status == 200, body
        clock.advance(99)  # each rotation restarts the idle lifetime
        status, body = await refresh(http, body["refresh_token"])
        assert status == 200, body
        clock.advance(100)
        status, body = await refresh(http, body["refresh_token"])
        assert (status, body["error"]) == (400, "invalid_grant")


async def test_rotation_never_extends_the_absolute_session_lifetime(env, clock, app_and_alice):
    async with server_with(env, clock, TESSERA_REFRESH_TOKEN_TTL="100", TESSERA_SESSION_TTL="250") as http:
        token = (await login(http))["refresh_token"]
        for _ in range(2):
            clock.advance(90)
            status, body = await refresh(http, token)
            assert status == 200, body
            token = body["refresh_token"]
        clock.advance(71)  # 251 s after login, 71 s after the last rotation
        status, body = await refresh(http, token)
        assert (status, body["error"]) == (400, "invalid_grant")


async def test_an_expired_refresh_is_refused_without_revoking(env, clock, app_and_alice, db_conn):
    async with server_with(env, clock, TESSERA_REFRESH_TOKEN_TTL="100") as http:
        token = (await login(http))["refresh_token"]
        clock.advance(101)
        status, _ = await refresh(http, token)
        assert status == 400
    row = await family_row(db_conn, token)
    assert row["revoked_at"] is None and row["generation"] == 0
    assert await db_conn.fetchval("SELECT count(*) FROM security_events") == 0


async def test_metadata_names_the_refresh_grant_and_the_revocation_and_introspection_endpoints(client):
    response = await client.get("/.well-known/oauth-authorization-server")
    document = await response.json()
    assert "refresh_token" in document["grant_types_supported"]
    assert document["revocation_endpoint"] == "https://tessera.test/revoke"
    assert document["introspection_endpoint"] == "https://tessera.test/introspect"
    assert "client_secret_basic" in document["introspection_endpoint_auth_methods_supported"]
    assert "none" not in document["introspection_endpoint_auth_methods_supported"]
