"""Client assertions' signatures checked in a run at the end of a turn of the event loop
(tessera.server.oauth.client_assertions.VerificationBatch): each assertion is judged on its own
keys, a forged one fails only itself, and a request that went away is not checked. Real ES256 and
Ed25519 keys and signatures (joserfc), no server."""

from __future__ import annotations

import asyncio

from joserfc import jws
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry

from tessera.server.oauth.client_assertions import VerificationBatch, parse_client_assertion


def _assertion(key: ECKey | OKPKey, alg: str, jti: str) -> str:
    claims = b'{"iss":"svc","sub":"svc","aud":"https://tessera.test","exp":2000000000,"jti":"%s"}' % jti.encode()
    return jws.serialize_compact({"alg": alg, "typ": "JWT"}, claims, key, algorithms=[alg])


async def test_each_signature_of_a_run_is_judged_on_its_own_keys() -> None:
    ec, other_ec, ed = ECKey.generate_key("P-256"), ECKey.generate_key("P-256"), OKPKey.generate_key("Ed25519")
    good = [parse_client_assertion(_assertion(ec, "ES256", f"a{n}")) for n in range(10)]
    forged = parse_client_assertion(_assertion(other_ec, "ES256", "forged"))
    eddsa = parse_client_assertion(_assertion(ed, "Ed25519", "ed"))
    header, _, signature = _assertion(ec, "ES256", "t").split(".")
    other_payload = _assertion(ec, "ES256", "u").split(".")[1]
    tampered = parse_client_assertion(f"{header}.{other_payload}.{signature}")  # claims changed after signing
    batch = VerificationBatch()
    es256, eddsa_model = JWSRegistry.algorithms["ES256"], JWSRegistry.algorithms["Ed25519"]
    answers = await asyncio.gather(
        *(batch.verify(es256, assertion, [ec]) for assertion in good),
        batch.verify(es256, forged, [ec]),  # signed by a key the client does not have
        batch.verify(es256, forged, [ec, other_ec]),  # ... which a second registered key verifies
        batch.verify(eddsa_model, eddsa, [ed]),
        batch.verify(es256, tampered, [ec]),
    )
    assert answers == [True] * 10 + [False, True, True, False]


async def test_a_request_gone_before_the_end_of_the_turn_is_not_checked() -> None:
    ec = ECKey.generate_key("P-256")
    batch = VerificationBatch()
    checked = 0
    real = ec.get_op_key

    def counting(operation):  # type: ignore[no-untyped-def]
        nonlocal checked
        checked += 1
        return real(operation)

    ec.get_op_key = counting  # type: ignore[method-assign]
    es256 = JWSRegistry.algorithms["ES256"]
    kept = batch.verify(es256, parse_client_assertion(_assertion(ec, "ES256", "kept")), [ec])
    gone = batch.verify(es256, parse_client_assertion(_assertion(ec, "ES256", "gone")), [ec])
    gone.cancel()
    checked = 0  # signing the two assertions used the key too
    assert await kept is True
    assert gone.cancelled() and checked == 1
