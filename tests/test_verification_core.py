"""tessera.keys.verifier.AccessTokenVerifier, the core that keys.Verifier feeds from the JWKS over HTTP,
fed here from a FixedKeySet, as the token server feeds it from its keyring."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from tessera.keys import (
    BadSignature,
    Expired,
    InvalidTokenType,
    MissingClaim,
    NotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
    WrongAudience,
)
from tessera.keys.verifier import AccessTokenVerifier, FixedKeySet
from tests.helpers import FakeClock, decode_segment
from tests.verifier_fixtures import (
    ALL_ALGORITHMS,
    AUDIENCE,
    DROP,
    LocalIssuer,
    b64url,
    issuer,  # noqa: F401  (the fixture)
    unsigned_token,
)


def core(issuer: LocalIssuer, **options: object) -> AccessTokenVerifier:
    keys = FixedKeySet(issuer.jwks_document())
    settings: dict[str, object] = {"issuer": issuer.url, "audience": AUDIENCE, "algorithms": keys.algorithms, **options}
    return AccessTokenVerifier(keys, **settings)  # type: ignore[arg-type]


async def test_a_fixed_key_set_verifies_every_algorithm_without_fetching(issuer: LocalIssuer) -> None:
    verifier = core(issuer)
    assert verifier.algorithms == set(ALL_ALGORITHMS)
    for alg in ALL_ALGORITHMS:
        assert (await verifier.verify(issuer.issue(alg))).sub == "user-42"
    assert issuer.jwks_requests == 0


async def test_without_an_audience_any_aud_passes_but_one_is_still_required(issuer: LocalIssuer) -> None:
    assert (await core(issuer, audience=None).verify(issuer.issue(aud="https://billing.example"))).aud == (
        "https://billing.example",
    )
    with pytest.raises(MissingClaim):
        await core(issuer, audience=None).verify(issuer.issue(aud=DROP))
    with pytest.raises(WrongAudience):
        await core(issuer).verify(issuer.issue(aud="https://billing.example"))


async def test_expiry_has_its_own_leeway(issuer: LocalIssuer) -> None:
    token = issuer.issue()
    claims = decode_segment(token.split(".")[1])
    at_expiry = FakeClock(claims["exp"])
    assert (await core(issuer, clock=at_expiry).verify(token)).exp == claims["exp"]  # within the 30 s
    with pytest.raises(Expired):
        await core(issuer, clock=at_expiry, expiry_leeway=0).verify(token)
    early = core(issuer, clock=FakeClock(claims["nbf"] - 30), expiry_leeway=0)
    assert (await early.verify(token)).jti == claims["jti"]  # nbf keeps its leeway
    with pytest.raises(NotYetValid):
        await core(issuer, clock=FakeClock(claims["nbf"] - 31), expiry_leeway=0).verify(token)


async def test_the_core_refuses_the_attacks(issuer: LocalIssuer) -> None:
    verifier = core(issuer)
    kid = issuer.active["RS256"]
    secret = json.dumps(issuer.keys[kid].public_jwk()).encode()
    head = b64url(json.dumps({"typ": "at+jwt", "alg": "HS256", "kid": kid}).encode())
    signing_input = f"{head}.{b64url(json.dumps(issuer.claims()).encode())}"
    hs256 = f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    good_head, _, good_signature = issuer.issue().split(".")
    tampered = ".".join([good_head, issuer.issue(scope="orders.read orders.write").split(".")[1], good_signature])
    attacks = [
        (unsigned_token({"typ": "at+jwt", "alg": "none", "kid": kid}, issuer.claims()), UnsupportedAlgorithm),
        (hs256, UnsupportedAlgorithm),
        (tampered, BadSignature),
        (issuer.issue(header={"kid": "not-published"}), UnknownKey),
        (issuer.issue(header={"typ": "JWT"}), InvalidTokenType),
        (issuer.issue(exp=issuer.claims()["iat"] - 31), Expired),
    ]
    for token, failure in attacks:
        with pytest.raises(failure):
            await verifier.verify(token)
