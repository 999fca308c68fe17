"""Signatures asked for in one turn of the event loop are made together, at its end (tessera.server.oauth.tokens).

Real keys, real signatures, checked with joserfc. What a caller relies on: every token is its own
and valid, a cancelled request costs no signature, one failing signature fails only its request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from tessera.keys import material
from tessera.keys.signer import Signer
from tessera.server.oauth.tokens import SignatureBatch


class RecordingSigner(Signer):
    """A real ES256 signer that notes when it signs, and can be told to fail for one subject."""

    def __init__(self, events: list[str], fail_for: str | None = None) -> None:
        made = material.generate("ES256")
        super().__init__("ES256", made.kid, ECKey.import_key(json.loads(made.private_jwk_json)).private_key)
        self.public = KeySet.import_key_set({"keys": [made.public_jwk]})
        self.events = events
        self.fail_for = fail_for

    def sign(self, claims: dict[str, Any]) -> str:
        if claims["sub"] == self.fail_for:
            raise ValueError("this one fails")
        self.events.append(f"signed {claims['sub']}")
        return super().sign(claims)


async def test_tokens_asked_for_together_are_signed_after_every_caller_has_asked():
    events: list[str] = []
    signer = RecordingSigner(events)
    batch = SignatureBatch()

    async def issue(n: int) -> str:
        events.append(f"asked {n}")
        return await batch.sign(signer.sign, {"sub": str(n), "jti": f"jti-{n}"})

    tokens = await asyncio.gather(*(issue(n) for n in range(20)))

    # Every request reached the batch before the first signature was made: they went as one run.
    assert [e.split()[0] for e in events] == ["asked"] * 20 + ["signed"] * 20
    assert len(set(tokens)) == 20
    for n, token in enumerate(tokens):
        decoded = jwt.decode(token, signer.public, algorithms=["ES256"])
        assert decoded.header["kid"] == signer.kid and decoded.header["typ"] == "at+jwt"
        assert decoded.claims == {"sub": str(n), "jti": f"jti-{n}"}


async def test_a_request_cancelled_while_it_waits_is_not_signed():
    events: list[str] = []
    signer = RecordingSigner(events)
    batch = SignatureBatch()
    kept = asyncio.ensure_future(batch.sign(signer.sign, {"sub": "kept"}))
    gone = batch.sign(signer.sign, {"sub": "gone"})
    gone.cancel()

    token = await kept

    assert events == ["signed kept"]
    assert jwt.decode(token, signer.public, algorithms=["ES256"]).claims == {"sub": "kept"}


async def test_a_failing_signature_fails_only_its_own_request():
    signer = RecordingSigner([], fail_for="bad")
    batch = SignatureBatch()

    results = await asyncio.gather(
        batch.sign(signer.sign, {"sub": "a"}), batch.sign(signer.sign, {"sub": "bad"}), batch.sign(signer.sign, {"sub": "b"}),
        return_exceptions=True,
    )

    assert isinstance(results[1], ValueError)
    for token, sub in ((results[0], "a"), (results[2], "b")):
        assert isinstance(token, str)
        assert jwt.decode(token, signer.public, algorithms=["ES256"]).claims == {"sub": sub}


async def test_requests_in_later_turns_get_batches_of_their_own():
    events: list[str] = []
    signer = RecordingSigner(events)
    batch = SignatureBatch()
    first = await batch.sign(signer.sign, {"sub": "one"})
    second = await batch.sign(signer.sign, {"sub": "two"})
    assert events == ["signed one", "signed two"]
    assert jwt.decode(first, signer.public, algorithms=["ES256"]).claims == {"sub": "one"}
    assert jwt.decode(second, signer.public, algorithms=["ES256"]).claims == {"sub": "two"}


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
async def test_tokens_from_a_batch_verify_for_each_algorithm_signed_on_the_loop(alg):
    made = material.generate(alg)
    signer = material.signer_from_private_jwk(alg, made.kid, made.private_jwk_json)
    public = KeySet.import_key_set({"keys": [made.public_jwk]})
    batch = SignatureBatch()
    tokens = await asyncio.gather(*(batch.sign(signer.sign, {"sub": f"user-{n}"}) for n in range(5)))
    assert [jwt.decode(t, public, algorithms=[alg]).claims["sub"] for t in tokens] == [f"user-{n}" for n in range(5)]
