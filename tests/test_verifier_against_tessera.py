"""The verifier and a third-party JOSE library against tokens from a real, running Tessera."""

from __future__ import annotations

import asyncio

import jwt as pyjwt
import pytest

from tessera.keys import BadSignature, Verifier, WrongAudience
from tests.helpers import SECRET, basic, post_token, tessera_server

ISSUER = "https://tessera.test"


async def _token(http, **form):
    status, body, _ = await post_token(
        http, {"grant_type": "client_credentials", **form}, headers=basic("svc", SECRET)
    )
    assert status == 200, body
    return body["access_token"]


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
async def test_tessera_tokens_verify_with_the_verifier_and_with_pyjwt(env, clock, admin, alg):
    await admin.client("svc")
    async with tessera_server(env, TESSERA_SIGNING_ALG=alg) as http:
        token = await _token(http)
        jwks_url = str(http.make_url("/.well-known/jwks.json"))
        async with Verifier(issuer=ISSUER, audience="https://orders.example", algorithms=[alg], jwks_url=jwks_url) as verifier:
            claims = await verifier.verify(token, required_scopes=["read"])
            assert claims.client_id == "svc" and claims.sub == "svc"
            with pytest.raises(BadSignature):
                head, payload, signature = token.split(".")
                await verifier.verify(f"{head}.{payload}.{signature[:-4]}AAAA")
        async with Verifier(issuer=ISSUER, audience="https://billing.example", algorithms=[alg], jwks_url=jwks_url) as other:
            with pytest.raises(WrongAudience):
                await other.verify(token)

        # PyJWT, knowing nothing of Tessera but the JWKS URL (its fetch blocks: run it off the loop
        # that serves the JWKS).
        signing_key = await asyncio.to_thread(pyjwt.PyJWKClient(jwks_url).get_signing_key_from_jwt, token)
        decoded = pyjwt.decode(token, signing_key.key, algorithms=[alg], audience="https://orders.example", issuer=ISSUER)
        assert decoded["client_id"] == "svc"
        assert pyjwt.get_unverified_header(token)["typ"] == "at+jwt"


async def test_cached_verification_keeps_working_with_the_server_stopped(settings, admin):
    await admin.client("svc")
    async with tessera_server(settings) as http:
        token = await _token(http)
        jwks_url = str(http.make_url("/.well-known/jwks.json"))
        verifier = Verifier(issuer=ISSUER, audience="https://orders.example", jwks_url=jwks_url)
        await verifier.verify(token)
    try:
        claims = await verifier.verify(token)  # the server is gone; the cached key set answers
        assert claims.sub == "svc"
    finally:
        await verifier.close()
