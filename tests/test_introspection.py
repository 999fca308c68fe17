"""RFC 7662: POST /introspect, for refresh and access tokens, and who may ask about what."""

from __future__ import annotations

import json

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.helpers import basic, decode_segment, post_token
from tests.sessions import APP_GRANTS, PASSWORD, SECRET, call, login, refresh, server_with

INACTIVE = {"active": False}


@pytest.fixture
async def app_and_alice(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    return await admin.user("alice", PASSWORD)


async def test_a_live_refresh_token_is_active_with_its_claims(env, clock, app_and_alice):
    async with server_with(env, clock, TESSERA_REFRESH_TOKEN_TTL="600", TESSERA_SESSION_TTL="1000") as http:
        login_time = int(clock())
        token = (await login(http, scope="read"))["refresh_token"]
        clock.advance(500)
        _, body = await refresh(http, token)
        status, answer = await call(http, "/introspect", body["refresh_token"])
    assert status == 200
    assert answer == {
        "active": True,
        "scope": "read",
        "client_id": "app",
        "sub": str(app_and_alice.user_id),
        "aud": "https://orders.example",
        "exp": login_time + 1000,  # the absolute lifetime ends before the idle one (500 + 600)
        "iat": login_time + 500,
        "token_type": "refresh_token",
    }


async def test_spent_revoked_and_expired_refresh_tokens_are_inactive(env, clock, app_and_alice):
    async with server_with(env, clock, TESSERA_REFRESH_TOKEN_TTL="600") as http:
        first = (await login(http))["refresh_token"]
        _, second = await refresh(http, first)
        assert await call(http, "/introspect", first) == (200, INACTIVE)
        clock.advance(601)
        assert await call(http, "/introspect", second["refresh_token"]) == (200, INACTIVE)
        clock.advance(-601)
        assert (await call(http, "/introspect", second["refresh_token"]))[1]["active"] is True
        await call(http, "/revoke", second["refresh_token"])
        assert await call(http, "/introspect", second["refresh_token"]) == (200, INACTIVE)


async def test_an_access_token_is_active_until_its_family_is_revoked(client, app_and_alice, clock):
    body = await login(client)
    status, answer = await call(client, "/introspect", body["access_token"])
    claims = decode_segment(body["access_token"].split(".")[1])
    assert status == 200
    assert answer == {
        "active": True,
        "scope": "read write",
        "client_id": "app",
        "sub": str(app_and_alice.user_id),
        "aud": "https://orders.example",
        "exp": claims["exp"],
        "iat": int(clock()),
        "token_type": "access_token",
    }
    await call(client, "/revoke", body["refresh_token"])
    assert await call(client, "/introspect", body["access_token"]) == (200, INACTIVE)


async def test_a_client_credentials_token_is_active_until_it_expires(client, admin, clock):
    await admin.client("svc", grant_types=("client_credentials",))
    _, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    answer = (await call(client, "/introspect", body["access_token"], client_id="svc"))[1]
    assert answer["active"] is True and answer["sub"] == "svc" and answer["token_type"] == "access_token"
    clock.advance(900)
    assert await call(client, "/introspect", body["access_token"], client_id="svc") == (200, INACTIVE)


async def test_other_clients_see_nothing_unless_the_token_is_for_their_audience(client, admin, app_and_alice):
    await admin.client("orders-api", audiences=("https://orders.example",))  # a resource server
    await admin.client("stranger", grant_types=APP_GRANTS, audiences=("https://other.example",))
    body = await login(client)  # aud https://orders.example
    assert (await call(client, "/introspect", body["access_token"], client_id="orders-api"))[1]["active"] is True
    assert await call(client, "/introspect", body["access_token"], client_id="stranger") == (200, INACTIVE)
    # Refresh tokens are for their own client only, even for a resource server of their audience.
    assert await call(client, "/introspect", body["refresh_token"], client_id="orders-api") == (200, INACTIVE)
    assert await call(client, "/introspect", body["refresh_token"], client_id="stranger") == (200, INACTIVE)
    assert (await refresh(client, body["refresh_token"]))[0] == 200  # and asking changed nothing


async def test_public_clients_may_not_introspect(client, admin, app_and_alice):
    await admin.client("spa", secret=None, grant_types=APP_GRANTS)
    body = await login(client)
    status, answer = await call(client, "/introspect", body["access_token"], client_id="spa", secret=None)
    assert (status, answer["error"]) == (401, "invalid_client")
    response = await client.post("/introspect", data={"token": body["access_token"]})
    assert response.status == 401


def _altered(token: str, index: int) -> str:
    return token[:index] + ("B" if token[index] != "B" else "C") + token[index + 1:]


async def test_forged_foreign_and_malformed_tokens_are_exactly_inactive(client, env, clock, app_and_alice):
    body = await login(client)
    header = decode_segment(body["access_token"].split(".")[0])
    claims = decode_segment(body["access_token"].split(".")[1])
    impostor = ECKey.generate_key("P-256", private=True)
    signed_by_impostor = jwt.encode(header, claims, impostor, algorithms=["ES256"])
    head, payload, signature = body["access_token"].split(".")
    tampered_claims = dict(claims, scope="read write admin")
    tampered = ".".join([head, jwt.encode(header, tampered_claims, impostor).split(".")[1], signature])
    async with server_with(env, clock, TESSERA_ISSUER="https://elsewhere.test") as other_issuer:
        foreign = (await login(other_issuer))["access_token"]  # same keys, another issuer
    candidates = [
        "x", "a.b.c", "..", signed_by_impostor, tampered, foreign,
        head + "." + payload + ".", "eyJhbGciOiJub25lIn0." + payload + ".",
        "tsr_" + "A" * 70, _altered(body["refresh_token"], 40), json.dumps(claims),
    ]
    for candidate in candidates:
        assert await call(client, "/introspect", candidate) == (200, INACTIVE), candidate


async def test_introspection_verifies_eddsa_tokens(env, clock, admin, app_and_alice):
    async with server_with(env, clock, TESSERA_SIGNING_ALG="EdDSA") as http:
        body = await login(http)
        assert decode_segment(body["access_token"].split(".")[0])["alg"] == "EdDSA"
        assert (await call(http, "/introspect", body["access_token"]))[1]["active"] is True


async def test_a_missing_token_is_invalid_request(client, app_and_alice):
    response = await client.post("/introspect", data={}, headers=basic("app", SECRET))
    assert response.status == 400 and (await response.json())["error"] == "invalid_request"
