"""tessera.keys.jwks_cache: how often the issuer is asked for its keys, and what happens when it cannot answer.

Time is a FakeClock handed to the cache, so freshness, cooldown and stale-if-error are tested
without sleeping. The issuer is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.util import int_to_base64
from multidict import CIMultiDict, CIMultiDictProxy

from tessera.keys import CachePolicy, JWKSCache, JWKSUnavailable, UnknownKey, Verifier
from tessera.keys.jwks_cache import freshness_lifetime, metadata_urls, parse_jwks

try:  # tests/ as a package, or as a plain directory on sys.path
    from tests.helpers import FakeClock, eventually
    from tests.verifier_fixtures import AUDIENCE, LocalIssuer, running_issuer, sign
except ModuleNotFoundError:
    from helpers import FakeClock, eventually  # type: ignore[no-redef, import-not-found]
    from verifier_fixtures import AUDIENCE, LocalIssuer, running_issuer, sign  # type: ignore[no-redef, import-not-found]

START = 1_000_000.0  # the clock's start: a fixed Unix time, so that tests can name instants


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    async with running_issuer("ES256") as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def cache(issuer: LocalIssuer, clock: FakeClock) -> AsyncIterator[JWKSCache]:
    async with JWKSCache(issuer.jwks_url, clock=clock) as jwks:
        yield jwks


@pytest.fixture
async def verifier(issuer: LocalIssuer, cache: JWKSCache) -> AsyncIterator[Verifier]:
    async with Verifier(issuer.url, AUDIENCE, jwks_cache=cache) as v:
        yield v


async def settle() -> None:
    """Let a background refresh started by the last call run to its end."""
    for _ in range(200):
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "tessera-jwks-fetch"]
        if not tasks:
            return
        await asyncio.wait(tasks, timeout=1)
    raise AssertionError("the background fetch did not finish")


# -- rotation -------------------------------------------------------------------------------------


async def test_new_key_is_picked_up_on_unknown_kid_with_one_fetch_for_50_concurrent_verifications(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    await verifier.verify(issuer.issue())
    assert issuer.jwks_requests == 1
    clock.advance(31)  # past the cooldown, still inside max-age: no reason to fetch but the new kid

    issuer.add_key("ES256")  # the issuer rotates: a new active key
    token = issuer.issue()
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(50)))

    assert all(claims.sub == "user-42" for claims in results)
    assert issuer.jwks_requests == 2


async def test_cold_cache_makes_one_fetch_for_50_concurrent_verifications(
    issuer: LocalIssuer, verifier: Verifier
) -> None:
    token = issuer.issue()
    await asyncio.gather(*(verifier.verify(token) for _ in range(50)))
    assert issuer.jwks_requests == 1
    assert issuer.metadata_requests == 0


async def test_unknown_kid_inside_the_cooldown_causes_no_fetch(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    await verifier.verify(issuer.issue())
    clock.advance(31)
    issuer.add_key("ES256")
    await verifier.verify(issuer.issue())  # unknown kid: one refetch
    assert issuer.jwks_requests == 2

    clock.advance(10)  # inside the 30 s cooldown
    issuer.add_key("ES256")
    with pytest.raises(UnknownKey):
        await verifier.verify(issuer.issue())
    assert issuer.jwks_requests == 2

    clock.advance(21)  # the cooldown has passed
    assert await verifier.verify(issuer.issue())
    assert issuer.jwks_requests == 3


async def test_next_key_published_ahead_verifies_without_a_fetch(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    next_key = issuer.add_key("ES256", activate=False)  # Tessera pre-publishes its next key
    await verifier.verify(issuer.issue())
    clock.advance(5)
    issuer.active["ES256"] = next_key.kid  # rotation: the next key becomes active
    assert await verifier.verify(issuer.issue())
    assert issuer.jwks_requests == 1


async def test_revoked_key_stops_verifying_once_the_set_is_refreshed(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    survivor = issuer.add_key("ES256", activate=False)
    revoked_token = issuer.issue()
    await verifier.verify(revoked_token)

    issuer.remove_key(issuer.active["ES256"])  # `tessera keys revoke`: it leaves the JWKS at once
    clock.advance(301)  # max-age has passed
    await verifier.verify(issuer.issue(kid=survivor.kid))  # serves from the stale set, refreshes behind
    await settle()
    assert issuer.jwks_requests == 2
    with pytest.raises(UnknownKey):
        await verifier.verify(revoked_token)
    assert issuer.jwks_requests == 2  # inside the cooldown: no refetch for it


async def test_made_up_kids_cannot_make_the_verifier_hammer_the_issuer(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    await verifier.verify(issuer.issue())
    for n in range(100):
        clock.advance(1)
        stranger = ECKey.generate_key("P-256", parameters={"kid": f"made-up-{n}"})
        header = {"typ": "at+jwt", "alg": "ES256", "kid": f"made-up-{n}"}
        with pytest.raises(UnknownKey):
            await verifier.verify(sign(header, json.dumps(issuer.claims()).encode(), stranger))
    assert issuer.jwks_requests == 1 + 3  # 100 s of made-up kids: one refetch per 30 s cooldown


# -- freshness ------------------------------------------------------------------------------------


async def test_max_age_is_honoured(issuer: LocalIssuer, verifier: Verifier, clock: FakeClock) -> None:
    issuer.max_age = 120
    token = issuer.issue()
    await verifier.verify(token)
    clock.advance(119)
    await verifier.verify(token)
    assert issuer.jwks_requests == 1  # still fresh

    clock.advance(2)  # stale: this call is served from the set, and a refresh starts behind it
    await verifier.verify(token)
    await settle()
    assert issuer.jwks_requests == 2
    await verifier.verify(token)
    assert issuer.jwks_requests == 2  # fresh again


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [
        ("public, max-age=300", 300),
        ("max-age=1", 30),  # floor: never a fetch per request
        ("no-cache", 30),
        ("no-store", 30),
        ("public, max-age=999999999", 86400),  # ceiling: a key revocation is seen within a day
        (None, 300),  # the default
        ("max-age=oops", 300),
        ("max-age=\u00b2", 300),  # a digit to str.isdigit, not to RFC 9111 (and int() would raise)
    ],
)
async def test_max_age_is_clamped_to_the_policy_bounds(cache_control: str | None, lifetime: float) -> None:
    headers = CIMultiDict[str]()
    if cache_control is not None:
        headers["Cache-Control"] = cache_control
    assert freshness_lifetime(CIMultiDictProxy(headers), CachePolicy()) == lifetime


async def test_age_header_shortens_the_lifetime() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Cache-Control": "max-age=300", "Age": "100"}))
    assert freshness_lifetime(headers, CachePolicy()) == 200
    odd = CIMultiDictProxy(CIMultiDict({"Cache-Control": "max-age=300", "Age": "\u00b9\u00b2"}))
    assert freshness_lifetime(odd, CachePolicy()) == 300


async def test_no_store_answer_is_still_cached_for_the_minimum(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    issuer.cache_control = "no-store"
    token = issuer.issue()
    for _ in range(10):
        await verifier.verify(token)
        clock.advance(2)
    assert issuer.jwks_requests == 1


async def test_not_modified_keeps_the_set(issuer: LocalIssuer, verifier: Verifier, clock: FakeClock) -> None:
    token = issuer.issue()
    await verifier.verify(token)
    clock.advance(301)
    await verifier.verify(token)
    await settle()
    assert issuer.jwks_requests == 2
    assert issuer.jwks_not_modified == 1  # revalidated with If-None-Match, answered 304
    clock.advance(100)
    await verifier.verify(token)
    assert issuer.jwks_requests == 2  # the 304 renewed the freshness too


async def test_changed_set_replaces_the_etag(issuer: LocalIssuer, verifier: Verifier, clock: FakeClock) -> None:
    await verifier.verify(issuer.issue())
    issuer.add_key("ES256")
    clock.advance(301)
    await verifier.verify(issuer.issue())  # unknown kid on a stale set: waits for the refresh
    assert issuer.jwks_not_modified == 0
    clock.advance(301)
    await verifier.verify(issuer.issue())
    await settle()
    assert issuer.jwks_not_modified == 1


# -- the issuer is unreachable --------------------------------------------------------------------


async def test_cached_keys_keep_verifying_while_the_issuer_is_down(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    token = issuer.issue(exp=2_000_000_000)
    await verifier.verify(token)
    await issuer.stop()

    for hours in range(1, 24):
        clock.now = START + hours * 3600  # max-age long gone, inside 300 s + 24 h stale-if-error
        assert await verifier.verify(token)
        await settle()


async def test_after_stale_if_error_expiry_jwks_unavailable_is_raised(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    token = issuer.issue(exp=2_000_000_000)
    await verifier.verify(token)
    await issuer.stop()
    clock.advance(300 + 86400 - 1)
    assert await verifier.verify(token)
    await settle()
    clock.advance(2)
    with pytest.raises(JWKSUnavailable) as failure:
        await verifier.verify(token)
    assert failure.value.code == "jwks_unavailable"


async def test_service_resumes_when_the_issuer_returns(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    token = issuer.issue(exp=2_000_000_000)
    await verifier.verify(token)
    await issuer.stop()
    clock.advance(300 + 86400 + 1)
    with pytest.raises(JWKSUnavailable):
        await verifier.verify(token)

    await issuer.start()  # same port
    clock.advance(6)  # past the retry interval
    assert await verifier.verify(token)
    assert issuer.jwks_not_modified == 1  # the set we still held was confirmed by its ETag


async def test_jwks_unavailable_when_no_set_could_ever_be_fetched(issuer: LocalIssuer, clock: FakeClock) -> None:
    issuer.jwks_status = 503
    async with JWKSCache(issuer.jwks_url, clock=clock) as cache:
        async with Verifier(issuer.url, AUDIENCE, jwks_cache=cache) as verifier:
            with pytest.raises(JWKSUnavailable):
                await verifier.verify(issuer.issue())
            assert issuer.jwks_requests == 1
            with pytest.raises(JWKSUnavailable):
                await verifier.verify(issuer.issue())
            assert issuer.jwks_requests == 1  # failures are retried no more than every retry_interval

            issuer.jwks_status = None
            clock.advance(5)
            assert await verifier.verify(issuer.issue())
            assert issuer.jwks_requests == 2


async def test_jwks_unavailable_when_the_issuer_is_down_from_the_start(issuer: LocalIssuer) -> None:
    await issuer.stop()
    async with Verifier(issuer.url, AUDIENCE) as verifier:
        with pytest.raises(JWKSUnavailable):
            await verifier.verify(issuer.issue())
        with pytest.raises(JWKSUnavailable):
            await verifier.prefetch()


async def test_failing_refresh_keeps_the_stale_set_serving(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    token = issuer.issue(exp=2_000_000_000)
    await verifier.verify(token)
    issuer.jwks_status = 500
    clock.advance(301)
    for _ in range(10):
        assert await verifier.verify(token)
        await settle()
        clock.advance(1)
    assert issuer.jwks_requests == 3  # t=301 and t=306 (retry interval 5 s); not once per call


async def test_a_slow_issuer_times_out_and_the_stale_set_serves(clock: FakeClock) -> None:
    async with running_issuer("ES256") as issuer:
        async with JWKSCache(issuer.jwks_url, clock=clock, policy=CachePolicy(timeout=0.2)) as cache:
            async with Verifier(issuer.url, AUDIENCE, jwks_cache=cache) as verifier:
                token = issuer.issue(exp=2_000_000_000)
                assert await verifier.verify(token)
                await issuer.stop()

                # In its place, a server that accepts connections and never answers.
                release = asyncio.Event()
                writers: list[asyncio.StreamWriter] = []

                async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                    writers.append(writer)
                    await release.wait()

                server = await asyncio.start_server(never_answer, "127.0.0.1", issuer.port)
                try:
                    clock.advance(301)
                    started = asyncio.get_running_loop().time()
                    assert await verifier.verify(token)  # not held up by the hanging refresh
                    assert asyncio.get_running_loop().time() - started < 0.1
                    await settle()  # the refresh gave up after its 0.2 s timeout
                    assert writers
                    assert await verifier.verify(token)
                finally:
                    release.set()
                    for writer in writers:
                        writer.close()
                    server.close()
                    await server.wait_closed()


async def test_closing_during_a_fetch_fails_the_waiting_verifications_cleanly() -> None:
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await release.wait()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        verifier = Verifier(f"http://127.0.0.1:{port}", AUDIENCE)
        waiting = asyncio.create_task(verifier.verify("eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsifQ.e30.AA"))
        await eventually(lambda: writers, interval=0.01, what="a connection to the silent issuer")
        await verifier.close()
        with pytest.raises(JWKSUnavailable):
            await waiting
    finally:
        release.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(issuer: LocalIssuer, verifier: Verifier) -> None:
    token = issuer.issue()
    first = asyncio.create_task(verifier.verify(token))
    second = asyncio.create_task(verifier.verify(token))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).sub == "user-42"
    assert issuer.jwks_requests == 1


# -- what the set may hold ------------------------------------------------------------------------


def test_keys_that_cannot_verify_signatures_are_skipped() -> None:
    good = ECKey.generate_key("P-256")
    good.ensure_kid()
    private = ECKey.generate_key("P-256", parameters={"kid": "private"})
    encryption = ECKey.generate_key("P-256", parameters={"kid": "enc", "use": "enc"})
    x25519 = OKPKey.generate_key("X25519", parameters={"kid": "x25519"})
    secret = OctKey.generate_key(256, parameters={"kid": "oct"})
    weak_numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    weak_rsa = {"kty": "RSA", "kid": "rsa-1024", "n": int_to_base64(weak_numbers.n), "e": int_to_base64(weak_numbers.e)}
    sign_only = ECKey.generate_key("P-256", parameters={"kid": "sign-only", "key_ops": ["sign"]})
    document: dict[str, Any] = {
        "keys": [
            good.as_dict(private=False),
            private.as_dict(private=True),
            encryption.as_dict(private=False),
            x25519.as_dict(private=False),
            secret.as_dict(),
            weak_rsa,
            sign_only.as_dict(private=False),
            {"kty": "EC", "crv": "P-256", "x": "garbage", "y": "garbage", "kid": "broken"},
            {"kty": "EC", "crv": "P-256"},  # no kid
            "not a key",
        ]
    }
    assert set(parse_jwks(document)) == {good.kid}


def test_a_kid_published_twice_is_trusted_for_neither_key() -> None:
    one = ECKey.generate_key("P-256", parameters={"kid": "same"})
    two = ECKey.generate_key("P-256", parameters={"kid": "same"})
    other = ECKey.generate_key("P-256", parameters={"kid": "other"})
    keys = parse_jwks({"keys": [one.as_dict(private=False), two.as_dict(private=False), other.as_dict(private=False)]})
    assert set(keys) == {"other"}


def test_jwk_alg_member_narrows_what_a_key_may_verify() -> None:
    rsa_key = RSAKey.generate_key(2048, parameters={"kid": "r"})
    ec_key = ECKey.generate_key("P-384", parameters={"kid": "e"})
    ed_key = OKPKey.generate_key("Ed25519", parameters={"kid": "d"})
    keys = parse_jwks(
        {
            "keys": [
                {**rsa_key.as_dict(private=False), "alg": "PS256"},
                ec_key.as_dict(private=False),
                ed_key.as_dict(private=False),
            ]
        }
    )
    assert keys["r"].algorithms == {"PS256"}
    assert keys["e"].algorithms == {"ES384"}
    assert keys["d"].algorithms == {"EdDSA", "Ed25519"}


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"no": "keys"}, "text"])
def test_a_document_that_is_not_a_jwk_set_is_refused(document: Any) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document)


async def test_a_jwks_that_is_not_json_leaves_the_old_set_serving(
    issuer: LocalIssuer, verifier: Verifier, clock: FakeClock
) -> None:
    token = issuer.issue(exp=2_000_000_000)
    await verifier.verify(token)
    issuer.jwks_body = b'{"keys": [{"kty": "EC", '
    clock.advance(301)
    assert await verifier.verify(token)
    await settle()
    assert issuer.jwks_requests == 2
    assert await verifier.verify(token)


async def test_an_oversized_jwks_is_refused(issuer: LocalIssuer, clock: FakeClock) -> None:
    issuer.extra_jwks.append({"kty": "oct", "kid": "filler", "k": "A" * 600_000})
    async with JWKSCache(issuer.jwks_url, clock=clock) as cache:
        async with Verifier(issuer.url, AUDIENCE, jwks_cache=cache) as verifier:
            with pytest.raises(JWKSUnavailable):
                await verifier.verify(issuer.issue())


# -- discovery, sessions --------------------------------------------------------------------------


def test_metadata_url_follows_rfc_8414_for_issuers_with_a_path() -> None:
    assert metadata_urls("https://auth.example") == ["https://auth.example/.well-known/oauth-authorization-server"]
    assert metadata_urls("https://auth.example/tenant/a") == [
        "https://auth.example/.well-known/oauth-authorization-server/tenant/a",
        "https://auth.example/tenant/a/.well-known/oauth-authorization-server",
    ]


async def test_discovery_happens_once(issuer: LocalIssuer, clock: FakeClock) -> None:
    async with JWKSCache(issuer=issuer.url, clock=clock) as cache:
        async with Verifier(issuer.url, AUDIENCE, jwks_cache=cache) as verifier:
            await verifier.verify(issuer.issue())
            clock.advance(301)
            await verifier.verify(issuer.issue())
            await settle()
    assert issuer.metadata_requests == 1
    assert issuer.jwks_requests == 2


async def test_a_given_session_is_used_and_left_open(issuer: LocalIssuer) -> None:
    async with aiohttp.ClientSession() as session:
        async with Verifier(issuer.url, AUDIENCE, session=session) as verifier:
            await verifier.verify(issuer.issue())
        assert not session.closed
        async with session.get(issuer.jwks_url) as response:
            assert response.status == 200


async def test_a_closed_cache_fetches_nothing(issuer: LocalIssuer) -> None:
    verifier = Verifier(issuer.url, AUDIENCE)
    await verifier.close()
    with pytest.raises(JWKSUnavailable):
        await verifier.verify(issuer.issue())
    assert issuer.metadata_requests == 0


def test_cache_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        CachePolicy(cooldown=-1)
    with pytest.raises(ValueError):
        CachePolicy(min_max_age=100, max_max_age=10)
    with pytest.raises(ValueError):
        CachePolicy(timeout=0)
    with pytest.raises(ValueError):
        JWKSCache()


def test_verifier_refuses_a_cache_and_cache_options_together(issuer: LocalIssuer) -> None:
    cache = JWKSCache("https://issuer.example/jwks.json")
    with pytest.raises(ValueError):
        Verifier("https://issuer.example", AUDIENCE, jwks_cache=cache, jwks_url="https://issuer.example/jwks")
