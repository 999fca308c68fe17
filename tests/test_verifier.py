"""keys.Verifier: what it accepts, what it refuses and why (RFC 9068 section 4, RFC 8725).

Every test runs against a real issuer on 127.0.0.1 (tests/verifier_fixtures.py); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from joserfc.jwk import ECKey, RSAKey

import tessera.keys as keys
from tessera.keys import (
    AccessTokenClaims,
    BadSignature,
    Expired,
    InsufficientScope,
    InvalidClaim,
    InvalidToken,
    InvalidTokenType,
    JWKSUnavailable,
    KeyAlgorithmMismatch,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
    UnsupportedHeader,
    Verifier,
    WrongAudience,
    WrongIssuer,
)
from tessera.keys.verifier import RFC9068_REQUIRED_CLAIMS

try:  # tests/ as a package, or as a plain directory on sys.path (pytest's rootdir-less layout)
    from tests.verifier_fixtures import (
        ALL_ALGORITHMS,
        AUDIENCE,
        DROP,
        LocalIssuer,
        b64url,
        running_issuer,
        sign,
        sign_unchecked,
        unsigned_token,
    )
    from tests.test_sign_in_interop import INTEROP, node  # noqa: F401  (node: the fixture that installs tests/interop)
except ModuleNotFoundError:
    from verifier_fixtures import (  # type: ignore[no-redef, import-not-found]
        ALL_ALGORITHMS,
        AUDIENCE,
        DROP,
        LocalIssuer,
        b64url,
        running_issuer,
        sign,
        sign_unchecked,
        unsigned_token,
    )
    from test_sign_in_interop import INTEROP, node  # type: ignore[no-redef, import-not-found]  # noqa: F401


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    async with running_issuer(*ALL_ALGORITHMS) as running:
        yield running


@pytest.fixture
async def verifier(issuer: LocalIssuer) -> AsyncIterator[Verifier]:
    async with Verifier(issuer=issuer.url, audience=AUDIENCE, algorithms=list(ALL_ALGORITHMS)) as v:
        yield v


def reencode(token: str, *, header: dict[str, Any] | None = None) -> str:
    """The token with its header replaced but its signature kept (so the signature is now wrong)."""
    _, payload, signature = token.split(".")
    return f"{b64url(json.dumps(header).encode())}.{payload}.{signature}"


# -- good tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
async def test_good_token_of_every_algorithm_verifies(issuer: LocalIssuer, verifier: Verifier, alg: str) -> None:
    claims = await verifier.verify(issuer.issue(alg))
    assert claims.sub == "user-42"
    assert claims.header["alg"] == alg


async def test_ed25519_algorithm_name_of_rfc_9864_verifies() -> None:
    async with running_issuer("Ed25519") as issuer:
        async with Verifier(issuer.url, AUDIENCE, algorithms=["Ed25519"]) as verifier:
            assert (await verifier.verify(issuer.issue("Ed25519"))).sub == "user-42"


async def test_claims_are_a_read_only_mapping_with_typed_accessors(issuer: LocalIssuer, verifier: Verifier) -> None:
    claims = await verifier.verify(issuer.issue(sid="session-1"))
    assert isinstance(claims, AccessTokenClaims)
    assert claims["client_id"] == claims.client_id == "orders-web"
    assert claims.iss == issuer.url
    assert claims.aud == (AUDIENCE,)
    assert claims.scope == "orders.read profile"
    assert claims.scopes == frozenset({"orders.read", "profile"})
    assert claims.has_scopes("orders.read") and not claims.has_scopes("orders.write")
    assert isinstance(claims.exp, float) and claims.iat is not None and claims.nbf is not None
    assert claims.auth_time is not None and claims.sid == "session-1" and claims.jti
    assert set(claims) >= set(RFC9068_REQUIRED_CLAIMS)
    with pytest.raises(TypeError):
        claims["sub"] = "someone-else"  # type: ignore[index]
    with pytest.raises(TypeError):
        claims.header["alg"] = "none"  # type: ignore[index]


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
async def test_typ_is_compared_case_insensitively_and_may_be_the_full_media_type(
    issuer: LocalIssuer, verifier: Verifier, typ: str
) -> None:
    assert (await verifier.verify(issuer.issue(header={"typ": typ}))).sub == "user-42"


async def test_jwks_is_discovered_through_rfc8414_metadata(issuer: LocalIssuer, verifier: Verifier) -> None:
    await verifier.verify(issuer.issue())
    assert issuer.metadata_requests == 1
    assert verifier.jwks.jwks_url == issuer.jwks_url


async def test_jwks_url_is_used_directly_without_metadata(issuer: LocalIssuer) -> None:
    async with Verifier(issuer.url, AUDIENCE, jwks_url=issuer.jwks_url) as verifier:
        await verifier.verify(issuer.issue())
    assert issuer.metadata_requests == 0
    assert issuer.jwks_requests == 1


async def test_metadata_naming_another_issuer_is_not_trusted(issuer: LocalIssuer) -> None:
    issuer.metadata_issuer = "https://evil.example"
    async with Verifier(issuer.url, AUDIENCE) as verifier:
        with pytest.raises(JWKSUnavailable):
            await verifier.verify(issuer.issue())
    assert issuer.jwks_requests == 0


async def test_verification_never_fetches_per_call(issuer: LocalIssuer, verifier: Verifier) -> None:
    token = issuer.issue()
    for _ in range(100):
        await verifier.verify(token)
    assert issuer.jwks_requests == 1


async def test_aud_as_a_list_naming_this_audience_is_accepted(issuer: LocalIssuer, verifier: Verifier) -> None:
    claims = await verifier.verify(issuer.issue(aud=["https://billing.example", AUDIENCE]))
    assert claims.aud == ("https://billing.example", AUDIENCE)


async def test_a_verifier_may_accept_several_audiences(issuer: LocalIssuer) -> None:
    audiences = ["https://orders.example", "https://orders.internal"]
    async with Verifier(issuer.url, audiences) as verifier:
        assert await verifier.verify(issuer.issue(aud="https://orders.internal"))


async def test_bytes_tokens_verify_like_strings(issuer: LocalIssuer, verifier: Verifier) -> None:
    assert (await verifier.verify(issuer.issue().encode())).sub == "user-42"


async def test_prefetch_loads_the_key_set_before_the_first_token(issuer: LocalIssuer, verifier: Verifier) -> None:
    await verifier.prefetch()
    assert issuer.jwks_requests == 1
    await verifier.verify(issuer.issue())
    assert issuer.jwks_requests == 1


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "none", "RSA-OAEP", "dir", "ES256K", ""])
def test_symmetric_none_and_unknown_algorithms_are_refused_at_construction(alg: str) -> None:
    with pytest.raises(ValueError):
        Verifier("https://issuer.example", AUDIENCE, algorithms=["ES256", alg])


@pytest.mark.parametrize(
    "options",
    [
        {"algorithms": "ES256"},
        {"algorithms": []},
        {"audience": ""},
        {"audience": []},
        {"issuer": ""},
        {"leeway": -1},
        {"leeway": float("nan")},
        {"jwks_url": "file:///etc/passwd"},
    ],
)
def test_bad_configuration_is_refused_at_construction(options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"issuer": "https://issuer.example", "audience": AUDIENCE, **options}
    with pytest.raises(ValueError):
        Verifier(**settings)


def test_every_failure_has_its_own_stable_code() -> None:
    classes = [getattr(keys, name) for name in keys.__all__]
    failures = [c for c in classes if isinstance(c, type) and issubclass(c, InvalidToken) and c is not InvalidToken]
    codes = [c.code for c in failures]
    assert len(failures) == 15
    assert len(set(codes)) == len(codes)
    assert all(code.replace("_", "").isalpha() and code.islower() for code in codes)


def test_importing_keys_does_not_import_the_servers_dependencies() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tessera.keys, tessera.keys.aiohttp_auth\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg', 'argon2', 'server', 'prometheus_client') or m.startswith('tessera.server')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- attacks --------------------------------------------------------------------------------------


async def test_alg_none_token_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    kid = issuer.active["ES256"]
    token = unsigned_token({"typ": "at+jwt", "alg": "none", "kid": kid}, issuer.claims())
    with pytest.raises(UnsupportedAlgorithm):
        await verifier.verify(token)


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
async def test_hs256_token_signed_with_the_public_key_is_rejected(secret_form: str) -> None:
    """The algorithm-confusion attack (RFC 8725 section 2.1): the attacker takes the issuer's public
    RSA key (published in the JWKS) and uses it as an HMAC secret. A verifier that lets the token's
    ``alg`` choose how the key is used would accept it."""
    async with running_issuer("RS256") as issuer:
        issuer_key = issuer.keys[issuer.active["RS256"]]
        public_key = RSAKey.import_key(issuer_key.public_jwk())
        if secret_form == "pem":
            secret = public_key.as_pem(private=False)
        else:
            secret = json.dumps(issuer_key.public_jwk()).encode()
        header = {"typ": "at+jwt", "alg": "HS256", "kid": issuer_key.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(issuer.claims()).encode())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        forged = f"{signing_input}.{b64url(mac)}"

        async with Verifier(issuer.url, AUDIENCE, algorithms=["RS256"]) as verifier:
            with pytest.raises(UnsupportedAlgorithm):
                await verifier.verify(forged)
        with pytest.raises(ValueError):
            Verifier(issuer.url, AUDIENCE, algorithms=["RS256", "HS256"])


async def test_algorithm_not_configured_is_rejected(issuer: LocalIssuer) -> None:
    async with Verifier(issuer.url, AUDIENCE, algorithms=["ES256"]) as verifier:
        with pytest.raises(UnsupportedAlgorithm):
            await verifier.verify(issuer.issue("ES384"))
        with pytest.raises(UnsupportedAlgorithm):
            await verifier.verify(issuer.issue("RS256"))
    assert issuer.jwks_requests == 0  # refused before any key was looked up


async def test_alg_that_does_not_fit_the_keys_curve_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    # An ES384 header naming the P-256 key: refused on the key's kty/crv, before any signature check.
    token = reencode(issuer.issue("ES256"), header={"typ": "at+jwt", "alg": "ES384", "kid": issuer.active["ES256"]})
    with pytest.raises(KeyAlgorithmMismatch):
        await verifier.verify(token)


async def test_alg_of_another_key_type_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    token = reencode(issuer.issue("EdDSA"), header={"typ": "at+jwt", "alg": "RS256", "kid": issuer.active["EdDSA"]})
    with pytest.raises(KeyAlgorithmMismatch):
        await verifier.verify(token)


async def test_alg_other_than_the_jwks_alg_member_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    # A real PS256 signature by the RSA key the JWKS publishes for RS256 only.
    rs256 = issuer.keys[issuer.active["RS256"]]
    header = {"typ": "at+jwt", "alg": "PS256", "kid": rs256.kid}
    token = sign(header, json.dumps(issuer.claims()).encode(), rs256.key)
    with pytest.raises(KeyAlgorithmMismatch):
        await verifier.verify(token)


@pytest.mark.parametrize("header_name", ["jku", "x5u", "jwk", "x5c"])
async def test_tokens_that_carry_their_own_key_are_rejected_and_nothing_is_fetched(
    issuer: LocalIssuer, verifier: Verifier, header_name: str
) -> None:
    async with running_issuer("ES256") as attacker:
        attacker_key = attacker.keys[attacker.active["ES256"]]
        values: dict[str, Any] = {
            "jku": attacker.jwks_url,
            "x5u": attacker.jwks_url,
            "jwk": attacker_key.public_jwk(),
            "x5c": ["MIIB"],
        }
        header = {"typ": "at+jwt", "alg": "ES256", "kid": attacker_key.kid, header_name: values[header_name]}
        token = sign(header, json.dumps(issuer.claims()).encode(), attacker_key.key)
        with pytest.raises(UnsupportedHeader):
            await verifier.verify(token)
        assert attacker.jwks_requests == 0


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": 1},
        {"crit": ["https://example.com/ext"], "https://example.com/ext": True},
        {"crit": []},
        {"b64": False, "crit": ["b64"]},
        {"b64": True},
    ],
)
async def test_crit_and_b64_headers_are_rejected(
    issuer: LocalIssuer, verifier: Verifier, extra: dict[str, Any]
) -> None:
    issuer_key = issuer.keys[issuer.active["ES256"]]
    header = {"typ": "at+jwt", "alg": "ES256", "kid": issuer_key.kid, **extra}
    token = sign_unchecked(header, json.dumps(issuer.claims()).encode(), issuer_key.key, "ES256")
    with pytest.raises(UnsupportedHeader):
        await verifier.verify(token)


async def test_unknown_non_critical_headers_are_ignored(issuer: LocalIssuer, verifier: Verifier) -> None:
    # RFC 7515 section 4: header parameters that are not understood MUST be ignored unless in crit.
    assert await verifier.verify(issuer.issue(header={"x-trace": "abc", "cty": "JWT"}))


async def test_token_without_kid_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    with pytest.raises(UnknownKey):
        await verifier.verify(issuer.issue(drop_header=("kid",)))


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt2", "application/jwt", 7])
async def test_token_that_is_not_an_access_token_is_rejected(issuer: LocalIssuer, verifier: Verifier, typ: Any) -> None:
    token = issuer.issue(drop_header=("typ",)) if typ is None else issuer.issue(header={"typ": typ})
    with pytest.raises(InvalidTokenType):
        await verifier.verify(token)


async def test_token_with_a_tampered_payload_has_a_bad_signature(issuer: LocalIssuer, verifier: Verifier) -> None:
    header, _, signature = issuer.issue().split(".")
    forged_claims = b64url(json.dumps(issuer.claims(scope="orders.read orders.write admin")).encode())
    with pytest.raises(BadSignature):
        await verifier.verify(f"{header}.{forged_claims}.{signature}")


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
async def test_signature_by_another_key_under_a_known_kid_is_bad(
    issuer: LocalIssuer, verifier: Verifier, alg: str
) -> None:
    async with running_issuer(alg) as attacker:
        attacker_key = attacker.keys[attacker.active[alg]]
        header = {"typ": "at+jwt", "alg": alg, "kid": issuer.active[alg]}
        token = sign(header, json.dumps(issuer.claims()).encode(), attacker_key.key)
        with pytest.raises(BadSignature):
            await verifier.verify(token)


async def test_truncated_signature_is_bad(issuer: LocalIssuer, verifier: Verifier) -> None:
    token = issuer.issue()
    with pytest.raises((BadSignature, MalformedToken)):
        await verifier.verify(token[:-4])
    with pytest.raises(BadSignature):
        await verifier.verify(token.rsplit(".", 1)[0] + "." + b64url(b"\0" * 64))


async def test_token_of_a_key_the_jwks_never_held_is_rejected_after_one_refetch(
    issuer: LocalIssuer, verifier: Verifier
) -> None:
    stranger = ECKey.generate_key("P-256")
    stranger.ensure_kid()
    token = sign({"typ": "at+jwt", "alg": "ES256", "kid": stranger.kid}, json.dumps(issuer.claims()).encode(), stranger)
    with pytest.raises(UnknownKey):
        await verifier.verify(token)
    assert issuer.jwks_requests == 1  # the first fetch; the refetch is inside the cooldown
    with pytest.raises(UnknownKey):
        await verifier.verify(token)
    assert issuer.jwks_requests == 1


async def test_token_signed_by_a_revoked_key_is_rejected(issuer: LocalIssuer) -> None:
    token = issuer.issue("ES256")
    issuer.remove_key(issuer.active["ES256"])
    async with Verifier(issuer.url, AUDIENCE) as verifier:
        with pytest.raises(UnknownKey):
            await verifier.verify(token)


async def test_oversized_token_is_rejected_before_parsing(issuer: LocalIssuer, verifier: Verifier) -> None:
    padding = "x" * 20_000
    with pytest.raises(MalformedToken, match="too large"):
        await verifier.verify(issuer.issue(padding=padding))
    with pytest.raises(MalformedToken, match="too large"):
        await verifier.verify(b"A" * 16_385)
    assert issuer.jwks_requests == 0


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "é.é.é",
        "eyJhbGciOiJFUzI1NiJ9=.e30.c2ln",  # "=" padding is not base64url
        b64url(b"not json") + ".e30.c2ln",
        b64url(b"[1, 2]") + ".e30.c2ln",
        b64url(b"[" * 5000 + b"]" * 5000) + ".e30.c2ln",
        b64url(b'{"alg": "ES256", "typ": "at+jwt", "kid": NaN}') + ".e30.c2ln",
    ],
)
async def test_malformed_tokens_are_rejected(verifier: Verifier, token: str) -> None:
    with pytest.raises(MalformedToken):
        await verifier.verify(token)


async def test_non_string_token_is_malformed(verifier: Verifier) -> None:
    with pytest.raises(MalformedToken):
        await verifier.verify(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'"text"', b'{"exp": NaN}'])
async def test_signed_payload_that_is_not_a_json_object_is_malformed(
    issuer: LocalIssuer, verifier: Verifier, payload: bytes
) -> None:
    with pytest.raises(MalformedToken):
        await verifier.verify(issuer.issue_payload(payload))


async def test_infinite_exp_is_an_invalid_claim(issuer: LocalIssuer, verifier: Verifier) -> None:
    claims = json.dumps(issuer.claims(exp=1)).replace('"exp": 1', '"exp": 1e999')
    with pytest.raises(InvalidClaim) as failure:
        await verifier.verify(issuer.issue_payload(claims.encode()))
    assert failure.value.claim == "exp"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "2999999999"),
        ("exp", True),
        ("nbf", None),
        ("iat", [1]),
        ("sub", 42),
        ("client_id", None),
        ("jti", {"id": 1}),
        ("scope", ["orders.read"]),
        ("aud", 5),
        ("auth_time", "yesterday"),
    ],
)
async def test_claims_of_the_wrong_type_are_invalid(
    issuer: LocalIssuer, verifier: Verifier, claim: str, value: Any
) -> None:
    with pytest.raises(InvalidClaim) as failure:
        await verifier.verify(issuer.issue(**{claim: value}))
    assert failure.value.claim == claim


# -- claims ---------------------------------------------------------------------------------------


async def test_expired_token_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    with pytest.raises(Expired):
        await verifier.verify(issuer.issue(exp=int(time.time()) - 31))


async def test_token_expired_within_the_leeway_is_accepted(issuer: LocalIssuer, verifier: Verifier) -> None:
    assert await verifier.verify(issuer.issue(exp=int(time.time()) - 10))


async def test_leeway_is_configurable(issuer: LocalIssuer) -> None:
    async with Verifier(issuer.url, AUDIENCE, leeway=0) as verifier:
        with pytest.raises(Expired):
            await verifier.verify(issuer.issue(exp=int(time.time()) - 2))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_token_from_the_future_is_not_yet_valid(issuer: LocalIssuer, verifier: Verifier, claim: str) -> None:
    too_early: dict[str, Any] = {claim: int(time.time()) + 60}
    with pytest.raises(NotYetValid):
        await verifier.verify(issuer.issue(**too_early))
    within_leeway: dict[str, Any] = {claim: int(time.time()) + 10}
    assert await verifier.verify(issuer.issue(**within_leeway))


async def test_injected_clock_decides_expiry(issuer: LocalIssuer) -> None:
    token = issuer.issue(exp=2_000_000_000, iat=1_000_000_000, nbf=1_000_000_000)
    now = [1_500_000_000.0]
    async with Verifier(issuer.url, AUDIENCE, clock=lambda: now[0]) as verifier:
        assert await verifier.verify(token)
        now[0] = 2_000_000_030.0
        with pytest.raises(Expired):
            await verifier.verify(token)
        now[0] = 999_999_900.0
        with pytest.raises(NotYetValid):
            await verifier.verify(token)


async def test_wrong_issuer_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    for iss in ("https://evil.example", issuer.url + "/", issuer.url.upper()):
        with pytest.raises(WrongIssuer):
            await verifier.verify(issuer.issue(iss=iss))


@pytest.mark.parametrize(
    "aud", ["https://billing.example", ["https://billing.example", "https://x.example"], [], [AUDIENCE + "/"]]
)
async def test_wrong_audience_is_rejected(issuer: LocalIssuer, verifier: Verifier, aud: Any) -> None:
    with pytest.raises(WrongAudience):
        await verifier.verify(issuer.issue(aud=aud))


@pytest.mark.parametrize("claim", RFC9068_REQUIRED_CLAIMS)
async def test_missing_required_claim_is_rejected(issuer: LocalIssuer, verifier: Verifier, claim: str) -> None:
    with pytest.raises(MissingClaim) as failure:
        await verifier.verify(issuer.issue(**{claim: DROP}))
    assert failure.value.claim == claim
    assert failure.value.code == "missing_claim"


async def test_more_claims_can_be_required(issuer: LocalIssuer) -> None:
    async with Verifier(issuer.url, AUDIENCE, required_claims=[*RFC9068_REQUIRED_CLAIMS, "auth_time"]) as verifier:
        with pytest.raises(MissingClaim):
            await verifier.verify(issuer.issue(auth_time=DROP))


async def test_insufficient_scope_is_rejected(issuer: LocalIssuer, verifier: Verifier) -> None:
    token = issuer.issue(scope="orders.read profile")
    with pytest.raises(InsufficientScope) as failure:
        await verifier.verify(token, required_scopes=["orders.read", "orders.write"])
    assert failure.value.required_scopes == {"orders.read", "orders.write"}
    assert failure.value.code == "insufficient_scope"
    assert await verifier.verify(token, required_scopes="orders.read profile")
    assert await verifier.verify(token, required_scopes=["profile"])


async def test_token_without_scope_claim_has_no_scopes(issuer: LocalIssuer, verifier: Verifier) -> None:
    claims = await verifier.verify(issuer.issue(scope=DROP))
    assert claims.scopes == frozenset() and claims.scope == ""
    with pytest.raises(InsufficientScope):
        await verifier.verify(issuer.issue(scope=DROP), required_scopes="orders.read")


async def test_failure_descriptions_never_contain_the_token(issuer: LocalIssuer, verifier: Verifier) -> None:
    token = issuer.issue(exp=1)
    with pytest.raises(Expired) as failure:
        await verifier.verify(token)
    assert token not in str(failure.value) and token.split(".")[1] not in failure.value.description


# -- interoperability: other JOSE libraries verify the same tokens with only the JWKS -------------


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
async def test_pyjwt_verifies_the_same_tokens_with_only_the_jwks(issuer: LocalIssuer, alg: str) -> None:
    token = issuer.issue(alg)

    def verify_with_pyjwt() -> dict[str, Any]:
        # The snippet of docs/verifying.md. PyJWKClient is synchronous (urllib), hence the thread.
        jwks_client = jwt.PyJWKClient(issuer.jwks_url, cache_jwk_set=True, lifespan=300)
        signing_key = jwks_client.get_signing_key_from_jwt(token)
        if jwt.get_unverified_header(token).get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
            raise jwt.InvalidTokenError("not an access token")
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key.key,
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=issuer.url,
            leeway=30,
            options={"require": ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]},
        )
        return claims

    claims = await asyncio.to_thread(verify_with_pyjwt)
    assert claims["sub"] == "user-42" and claims["scope"] == "orders.read profile"


async def _docs_node_snippet(node: str, issuer: LocalIssuer, alg: str, token: str, audience: str) -> tuple[int, str]:
    """docs/verifying.md's node `jose` snippet (tests/interop/verify_docs_snippet.mjs) on ``token``."""
    process = await asyncio.create_subprocess_exec(
        node, str(INTEROP / "verify_docs_snippet.mjs"), cwd=INTEROP,
        env={**os.environ, "ISSUER": issuer.url, "AUDIENCE": audience, "ALG": alg, "TOKEN": token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, (stdout if process.returncode == 0 else stderr).decode()


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
async def test_node_jose_verifies_the_same_tokens_with_only_the_jwks(node: str, issuer: LocalIssuer, alg: str) -> None:
    status, said = await _docs_node_snippet(node, issuer, alg, issuer.issue(alg), AUDIENCE)
    assert status == 0, said
    assert json.loads(said)["sub"] == "user-42"
    # As docs/verifying.md says: the same snippet refuses a token for another audience.
    status, said = await _docs_node_snippet(node, issuer, alg, issuer.issue(alg), "https://elsewhere.example")
    assert status != 0 and "aud" in said, said
