"""RFC 7662: POST /introspect, for refresh and access tokens, and who may ask about what."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, import_key

from tessera.keys import kek as kek_box
from tessera.keys.signer import b64url
from tessera.server.settings import decode_kek
from tests.helpers import PASSWORD, SECRET, basic, decode_segment, post_token, tessera_server
from tests.sessions import APP_GRANTS, call, login, refresh

INACTIVE = {"active": False}


@pytest.fixture
async def app_and_alice(admin):
    await admin.client("app", grant_types=APP_GRANTS)
    return await admin.user("alice", PASSWORD)


async def test_a_live_refresh_token_is_active_with_its_claims(env, clock, app_and_alice):
    async with tessera_server(env, clock, TESSERA_REFRESH_TOKEN_TTL="600", TESSERA_SESSION_TTL="1000") as http:
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
    async with tessera_server(env, clock, TESSERA_REFRESH_TOKEN_TTL="600") as http:
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
    async with tessera_server(env, clock, TESSERA_ISSUER="https://elsewhere.test") as other_issuer:
        foreign = (await login(other_issuer))["access_token"]  # same keys, another issuer
    candidates = [
        "x", "a.b.c", "..", signed_by_impostor, tampered, foreign,
        head + "." + payload + ".", "eyJhbGciOiJub25lIn0." + payload + ".",
        "tsr_" + "A" * 70, _altered(body["refresh_token"], 40), json.dumps(claims),
    ]
    for candidate in candidates:
        assert await call(client, "/introspect", candidate) == (200, INACTIVE), candidate


async def test_tokens_signed_with_this_servers_key_but_not_as_it_issues_them_are_inactive(
    client, env, db_conn, app_and_alice
):
    """The attacks keys.Verifier refuses, made here with the server's own active private key, so that
    only the check under attack can refuse them."""
    row = await db_conn.fetchrow("SELECT kid, alg, private_sealed FROM signing_keys WHERE state = 'active'")
    kek = decode_kek(env["TESSERA_KEY_ENCRYPTION_KEY"], "kek")
    private = import_key(json.loads(kek_box.unseal(kek, bytes(row["private_sealed"]), row["kid"].encode())))
    public_jwk = json.dumps(private.as_dict(private=False)).encode()
    kid, alg = row["kid"], row["alg"]
    claims = decode_segment((await login(client))["access_token"].split(".")[1])

    def signed(header: dict[str, str] | None = None, **changes: object) -> str:
        return jws.serialize_compact(
            {"typ": "at+jwt", "alg": alg, "kid": kid, **(header or {})}, json.dumps({**claims, **changes}), private
        )

    def unsigned(alg: str, mac_key: bytes | None = None) -> str:
        header = b64url(json.dumps({"typ": "at+jwt", "alg": alg, "kid": kid}).encode())
        signing_input = header + b"." + b64url(json.dumps(claims).encode())
        mac = b"" if mac_key is None else b64url(hmac.new(mac_key, signing_input, hashlib.sha256).digest())
        return (signing_input + b"." + mac).decode()

    assert (await call(client, "/introspect", signed()))[1]["active"] is True
    assert (await call(client, "/introspect", signed(nbf=claims["iat"] + 30)))[1]["active"] is True  # NBF leeway
    head, _, signature = signed().split(".")
    attacks = {
        "alg none": unsigned("none"),
        "HS256 keyed with the public key": unsigned("HS256", mac_key=public_jwk),
        "tampered payload": ".".join([head, signed(scope="read write admin").split(".")[1], signature]),
        "unknown kid": signed({"kid": "not-" + kid}),
        "wrong typ": signed({"typ": "JWT"}),
        "expired (no leeway on exp)": signed(exp=claims["iat"]),
        "not yet valid": signed(nbf=claims["iat"] + 31),
    }
    for attack, token in attacks.items():
        assert await call(client, "/introspect", token) == (200, INACTIVE), attack


async def test_introspection_verifies_eddsa_tokens(env, clock, admin, app_and_alice):
    async with tessera_server(env, clock, TESSERA_SIGNING_ALG="EdDSA") as http:
        body = await login(http)
        assert decode_segment(body["access_token"].split(".")[0])["alg"] == "EdDSA"
        assert (await call(http, "/introspect", body["access_token"]))[1]["active"] is True


async def test_a_missing_token_is_invalid_request(client, app_and_alice):
    response = await client.post("/introspect", data={}, headers=basic("app", SECRET))
    assert response.status == 400 and (await response.json())["error"] == "invalid_request"
