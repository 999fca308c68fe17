"""RFC 6749 section 4.4 and the contract's access-token section, over real HTTP."""

from __future__ import annotations

import pytest

from tests.helpers import SECRET, basic, decode_segment, fetch_jwks, post_token, verify_with_joserfc


async def test_client_credentials_token_carries_every_rfc9068_claim(client, admin, clock):
    await admin.client("svc")
    status, body, response = await post_token(
        client, {"grant_type": "client_credentials", "scope": "read"}, headers=basic("svc", SECRET)
    )
    assert status == 200, body
    assert response.headers["Cache-Control"] == "no-store"
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["scope"] == "read"

    header = decode_segment(body["access_token"].split(".")[0])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
    token = verify_with_joserfc(body["access_token"], await fetch_jwks(client))
    claims = token.claims
    now = int(clock())
    assert claims["iss"] == "https://tessera.test"
    assert claims["sub"] == "svc" and claims["client_id"] == "svc"
    assert claims["aud"] == "https://orders.example"
    assert claims["iat"] == now and claims["nbf"] == now and claims["exp"] == now + 900
    assert claims["scope"] == "read"
    assert len(claims["jti"]) >= 16
    assert "auth_time" not in claims


async def test_client_credentials_never_returns_a_refresh_token(client, admin):
    await admin.client("svc", grant_types=("client_credentials",))
    status, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200 and "refresh_token" not in body


async def test_omitted_scope_grants_the_clients_whole_scope(client, admin):
    await admin.client("svc", scopes=("read", "write"))
    _, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert body["scope"] == "read write"


async def test_scope_beyond_the_clients_is_invalid_scope_as_a_whole(client, admin):
    await admin.client("svc", scopes=("read",))
    status, body, _ = await post_token(
        client, {"grant_type": "client_credentials", "scope": "read admin"}, headers=basic("svc", SECRET)
    )
    assert status == 400 and body["error"] == "invalid_scope"


@pytest.mark.parametrize("parameter", ["resource", "audience"])
async def test_resource_or_audience_selects_an_allowed_audience(client, admin, parameter):
    await admin.client("svc")
    _, body, _ = await post_token(
        client,
        {"grant_type": "client_credentials", parameter: "https://billing.example"},
        headers=basic("svc", SECRET),
    )
    token = verify_with_joserfc(body["access_token"], await fetch_jwks(client))
    assert token.claims["aud"] == "https://billing.example"


@pytest.mark.parametrize("parameter", ["resource", "audience"])
async def test_audience_not_allowed_for_the_client_is_invalid_target(client, admin, parameter):
    await admin.client("svc")
    status, body, _ = await post_token(
        client,
        {"grant_type": "client_credentials", parameter: "https://evil.example"},
        headers=basic("svc", SECRET),
    )
    assert status == 400 and body["error"] == "invalid_target"


async def test_relative_resource_is_invalid_target(client, admin):
    await admin.client("svc")
    status, body, _ = await post_token(
        client, {"grant_type": "client_credentials", "resource": "orders"}, headers=basic("svc", SECRET)
    )
    assert status == 400 and body["error"] == "invalid_target"


async def test_grant_type_the_client_may_not_use_is_unauthorized_client(client, admin):
    await admin.client("svc", grant_types=("password",))
    status, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 400 and body["error"] == "unauthorized_client"


async def test_each_token_has_a_fresh_jti(client, admin):
    await admin.client("svc")
    jtis = set()
    for _ in range(3):
        _, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
        jtis.add(decode_segment(body["access_token"].split(".")[1])["jti"])
    assert len(jtis) == 3
