"""The key set, server metadata, health, and keys at rest."""

from __future__ import annotations

import json

import pytest
from joserfc.errors import BadSignatureError

from tessera.keys import kek as kek_box
from tests.helpers import SECRET, basic, fetch_jwks, post_token, tessera_server, verify_with_joserfc

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


async def _token(http) -> str:
    _, body, _ = await post_token(http, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    return body["access_token"]


async def test_jwks_holds_public_members_only_and_an_active_and_next_key(client, db_conn):
    response = await client.get("/.well-known/jwks.json")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    document = await response.json(content_type=None)
    assert len(document["keys"]) == 2
    for jwk in document["keys"]:
        assert not PRIVATE_MEMBERS & set(jwk), jwk
        assert jwk["use"] == "sig" and jwk["alg"] == "ES256" and jwk["kid"]
    states = dict(await db_conn.fetch("SELECT kid, state FROM signing_keys"))
    assert sorted(states.values()) == ["active", "next"]
    assert document["keys"][0]["kid"] == next(k for k, s in states.items() if s == "active")


async def test_token_verifies_against_the_jwks_and_fails_after_one_signature_byte_changes(client, admin):
    await admin.client("svc")
    token = await _token(client)
    key_set = await fetch_jwks(client)
    verify_with_joserfc(token, key_set)
    head, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    with pytest.raises(BadSignatureError):
        verify_with_joserfc(f"{head}.{payload}.{flipped}", key_set)


async def test_kid_is_the_rfc7638_thumbprint(client):
    key_set = await fetch_jwks(client)
    for key in key_set:
        assert key.kid == key.thumbprint()


async def test_jwks_etag_answers_304(client):
    first = await client.get("/.well-known/jwks.json")
    etag = first.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith('W/')
    assert first.headers["Content-Type"] == "application/jwk-set+json"
    second = await client.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert second.status == 304 and await second.read() == b""
    assert second.headers["ETag"] == etag and second.headers["Cache-Control"] == first.headers["Cache-Control"]
    third = await client.get("/.well-known/jwks.json", headers={"If-None-Match": '"other"'})
    assert third.status == 200
    assert third.headers["Content-Type"] == "application/jwk-set+json" and await third.read() == await first.read()


async def test_a_restart_keeps_the_same_kid(settings, clock, admin):
    await admin.client("svc")
    kids = []
    for _ in range(2):
        async with tessera_server(settings, clock) as http:
            token = await _token(http)
            kids.append(verify_with_joserfc(token, await fetch_jwks(http)).header["kid"])
    assert kids[0] == kids[1]


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS256", "PS256"])
async def test_every_signing_algorithm_makes_tokens_joserfc_verifies(env, clock, admin, alg):
    await admin.client("svc")
    async with tessera_server(env, clock, TESSERA_SIGNING_ALG=alg) as http:
        token = await _token(http)
        verified = verify_with_joserfc(token, await fetch_jwks(http), [alg])
        assert verified.header["alg"] == alg


async def test_private_keys_are_sealed_under_the_kek_and_bound_to_their_kid(client, db_conn, settings):
    rows = await db_conn.fetch("SELECT kid, private_sealed FROM signing_keys")
    for row in rows:
        sealed = bytes(row["private_sealed"])
        assert b'"d"' not in sealed
        private = json.loads(kek_box.unseal(settings.key_encryption_key, sealed, row["kid"].encode()))
        assert private["kid"] == row["kid"] and "d" in private
        with pytest.raises(kek_box.UnsealError):
            kek_box.unseal(settings.key_encryption_key, sealed, b"another-kid")
        with pytest.raises(kek_box.UnsealError):
            kek_box.unseal(b"\x00" * 32, sealed, row["kid"].encode())


async def test_metadata_is_served_at_both_well_known_paths(client):
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        response = await client.get(path)
        assert response.status == 200
        document = await response.json(content_type=None)
        assert document["issuer"] == "https://tessera.test"
        assert document["token_endpoint"] == "https://tessera.test/token"
        assert document["jwks_uri"] == "https://tessera.test/.well-known/jwks.json"
        assert "client_credentials" in document["grant_types_supported"]


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"
