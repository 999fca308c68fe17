"""private_key_jwt (CONTRACT.md, "Service to service"; RFC 7523 sections 2.2 and 3, OpenID Connect
Core section 9): a client authenticates at /token, /revoke and /introspect with a JWT signed by
one of its registered public keys, each assertion accepted once, by every instance, until it expires.

Real clients (Authlib's PrivateKeyJWT, openid-client 6's PrivateKeyJwt) get tokens; each attack
is refused with invalid_client and nothing issued; the replay register holds across two
`tessera serve` processes on one database (Hydra's GHSA-v3q9-2p3m-7g43); keys rotate through the
CLI or the client's jwks_uri.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tessera.server.app import create_app
from tessera.server.settings import load_settings
from tessera.server.store import db
from tessera.server.store.assertions import AssertionJtiStore
from tessera.server.store.db import REQUEST_GIVES_UP
from tessera.server.tasks.janitor import collect_garbage
from tests.conftest import Admin
from tests.helpers import SECRET, FakeClock, basic, decode_segment, eventually, post_token, served
from tests.processes import Processes, cli, free_port, parse_metrics, sample, wait_until_ready
from tests.test_sign_in_interop import node, run_node  # noqa: F401  (node: the fixture that installs tests/interop)

ISSUER = "https://tessera.test"  # conftest's env
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ["ES256", "ES384", "EdDSA", "RS256", "PS256"]
DROP = object()  # a claim or header left out


# --- keys and assertions --------------------------------------------------------------------------


@dataclass
class ClientKey:
    """A client's key pair: the private half signs assertions, the public half is registered."""

    key: Any
    kid: str
    alg: str

    @property
    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "use": "sig"}

    @property
    def private_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=True), "kid": self.kid, "alg": self.alg}


def new_key(alg: str = "ES256", kid: str | None = None) -> ClientKey:
    if alg in ("ES256", "ES384"):
        key: Any = ECKey.generate_key("P-256" if alg == "ES256" else "P-384", private=True)
    elif alg in ("EdDSA", "Ed25519"):
        key = OKPKey.generate_key("Ed25519", private=True)
    else:
        key = RSAKey.generate_key(2048, private=True)
    return ClientKey(key, kid or f"{alg.lower()}-{secrets.token_hex(4)}", alg)


def key_set(*keys: ClientKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk for k in keys]}


def sign(key: ClientKey, claims: dict[str, Any], **header: Any) -> str:
    fields = {"alg": key.alg, "kid": key.kid, **header}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc on "EdDSA" (RFC 9864)
        return jwt.encode({k: v for k, v in fields.items() if v is not DROP}, claims, key.key, algorithms=[fields["alg"]])


def claims_for(client_id: str = "svc", *, now: float, aud: Any = ISSUER, lifetime: float = 60, **changes: Any) -> dict[str, Any]:
    claims = {
        "iss": client_id, "sub": client_id, "aud": aud, "iat": int(now), "exp": int(now + lifetime),
        "jti": secrets.token_urlsafe(24), **changes,
    }
    return {name: value for name, value in claims.items() if value is not DROP}


def assertion(key: ClientKey, client_id: str = "svc", *, now: float, header: dict[str, Any] | None = None,
              **changes: Any) -> str:
    return sign(key, claims_for(client_id, now=now, **changes), **(header or {}))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_as_is(key: ClientKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWS with exactly this header, which a JOSE library would refuse to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
    return signing_input.decode() + "." + b64(JWSRegistry.algorithms[header["alg"]].sign(signing_input, key.key))


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def cc_form(client_assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion, **extra,
    }


async def refused(http: TestClient[Any, Any], form: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    status, body, response = await post_token(http, form, **kwargs)
    assert status == 401 and body["error"] == "invalid_client", (status, body)
    assert "access_token" not in body and response.headers["Cache-Control"] == "no-store"
    return body


async def spent_jtis(admin: Admin) -> int:
    return int(await admin.pool.fetchval("SELECT count(*) FROM client_assertion_jtis"))


@pytest.fixture
def es256() -> ClientKey:
    return new_key("ES256")


@pytest.fixture
async def svc(admin: Admin, es256: ClientKey) -> ClientKey:
    """The client "svc", registered with private_key_jwt and one ES256 key; that key."""
    await admin.client("svc", jwks=key_set(es256))
    return es256


# --- it works -------------------------------------------------------------------------------------


@pytest.mark.parametrize("aud", [ISSUER, f"{ISSUER}/token", [ISSUER]], ids=["issuer", "token-endpoint", "list"])
async def test_a_private_key_jwt_client_gets_a_client_credentials_token(client, svc, clock, aud):
    status, body, _ = await post_token(client, cc_form(assertion(svc, now=clock(), aud=aud), scope="read"))
    assert status == 200, body
    token = decode_segment(body["access_token"].split(".")[1])
    assert token["sub"] == "svc" and token["client_id"] == "svc" and token["scope"] == "read"
    assert "refresh_token" not in body


@pytest.mark.parametrize("alg", [*ALGORITHMS, "Ed25519"])
async def test_every_allowed_algorithm_authenticates(client, admin, clock, alg):
    # "Ed25519" is RFC 9864's name for EdDSA over Ed25519, which openid-client 6 uses; the key is
    # registered without an alg member, and with one of the other name below.
    key = new_key(alg)
    await admin.client("svc", jwks=key_set(key))
    status, body, _ = await post_token(client, cc_form(assertion(key, now=clock())))
    assert status == 200, body


async def test_eddsa_and_ed25519_are_one_algorithm_whichever_name_the_key_and_the_assertion_use(client, admin, clock):
    key = new_key("Ed25519")
    await admin.client("svc", jwks={"keys": [{**key.public_jwk, "alg": "EdDSA"}]})
    status, body, _ = await post_token(client, cc_form(assertion(key, now=clock())))
    assert status == 200, body


async def test_an_assertion_without_kid_is_checked_against_each_registered_key(client, admin, clock):
    # Authlib's PrivateKeyJWT names no kid unless told to.
    old, new = new_key("ES256"), new_key("RS256")
    await admin.client("svc", jwks=key_set(old, new))
    for key in (old, new):
        status, body, _ = await post_token(client, cc_form(assertion(key, now=clock(), header={"kid": DROP})))
        assert status == 200, body


async def test_the_client_id_parameter_may_come_with_the_assertion_if_it_names_the_same_client(client, svc, clock):
    status, body, _ = await post_token(client, cc_form(assertion(svc, now=clock()), client_id="svc"))
    assert status == 200, body
    body = await refused(client, cc_form(assertion(svc, now=clock()), client_id="other"))
    assert "client_id" in body["error_description"]


async def test_introspect_and_revoke_take_an_assertion_for_their_own_url_or_the_issuer(client, svc, clock):
    _, issued, _ = await post_token(client, cc_form(assertion(svc, now=clock())))
    token = issued["access_token"]
    for aud in (ISSUER, f"{ISSUER}/introspect", f"{ISSUER}/token"):
        form = {"token": token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion(svc, now=clock(), aud=aud)}
        response = await client.post("/introspect", data=form)
        body = await response.json()
        assert response.status == 200 and body["active"] is True and body["client_id"] == "svc", body
    form = {"token": token, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(svc, now=clock(), aud=f"{ISSUER}/revoke")}
    response = await client.post("/introspect", data=form)
    assert response.status == 401 and (await response.json())["error"] == "invalid_client"
    form["client_assertion"] = assertion(svc, now=clock(), aud=f"{ISSUER}/revoke")
    response = await client.post("/revoke", data=form)
    # Authenticated: a client_credentials token is not revocable (RFC 7009 section 2.2.1), which
    # only its own client is told.
    assert response.status == 400 and (await response.json())["error"] == "unsupported_token_type"


async def test_the_metadata_lists_private_key_jwt_and_the_signing_algorithms(client):
    response = await client.get("/.well-known/openid-configuration")
    document = await response.json()
    for endpoint in ("token", "revocation", "introspection"):
        assert "private_key_jwt" in document[f"{endpoint}_endpoint_auth_methods_supported"]
        assert document[f"{endpoint}_endpoint_auth_signing_alg_values_supported"] == ALGORITHMS
    assert "none" not in document["introspection_endpoint_auth_methods_supported"]


# --- attacks, each refused with invalid_client and nothing issued ---------------------------------


def _hs256_with_the_public_key(key: ClientKey, now: float) -> str:
    """The classic key-confusion forgery: HMAC over the assertion with the client's public key
    (as a PEM, as its JWK) as the secret, for a server that would hand the registered key to
    whatever algorithm the header names."""
    header = {"alg": "HS256", "kid": key.kid, "typ": "JWT"}
    body = claims_for(now=now)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}".encode()
    pem = key.key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return signing_input.decode() + "." + b64(hmac.new(pem, signing_input, hashlib.sha256).digest())


def _with_both_alphabets(key: ClientKey, now: float) -> list[str]:
    """An assertion whose signature's base64url holds a '-' or a '_' (so its plain-base64 spelling differs)."""
    while True:
        parts = assertion(key, now=now).split(".")
        if "-" in parts[2] or "_" in parts[2]:
            return parts


def _spare_bits_set(segment: str) -> str:
    """The same bytes' second spelling: the last character's unused low bits set (when it has any)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = {2: 0b1111, 3: 0b11}.get(len(segment) % 4)
    if spare is None:
        return segment + "A"  # a length no base64url has
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) | spare]


ATTACKS = {
    "alg-none": lambda key, now: unsigned({"alg": "none", "kid": key.kid}, claims_for(now=now)),
    "hs256-with-the-public-key": _hs256_with_the_public_key,
    "hs256-with-the-jwk": lambda key, now: jwt.encode(
        {"alg": "HS256", "kid": key.kid}, claims_for(now=now), OctKey.import_key(json.dumps(key.public_jwk).encode()),
        algorithms=["HS256"],
    ),
    "a-key-not-in-the-jwks": lambda key, now: assertion(new_key("ES256"), now=now),
    "another-key-under-the-registered-kid": lambda key, now: assertion(new_key("ES256", kid=key.kid), now=now),
    "wrong-aud": lambda key, now: assertion(key, now=now, aud="https://other.example/token"),
    "aud-list-with-another-server": lambda key, now: assertion(key, now=now, aud=[ISSUER, "https://other.example"]),
    "exp-an-hour-ahead": lambda key, now: assertion(key, now=now, lifetime=3600),
    "no-exp": lambda key, now: assertion(key, now=now, exp=DROP),
    "expired": lambda key, now: assertion(key, now=now, iat=int(now - 300), lifetime=-120),
    "nbf-in-the-future": lambda key, now: assertion(key, now=now, nbf=int(now + 120), lifetime=240),
    "iat-long-ago": lambda key, now: assertion(key, now=now, iat=int(now - 3600)),
    "no-jti": lambda key, now: assertion(key, now=now, jti=DROP),
    "jti-too-long": lambda key, now: assertion(key, now=now, jti="j" * 257),
    "iss-not-sub": lambda key, now: assertion(key, now=now, sub="someone-else"),
    "no-sub": lambda key, now: assertion(key, now=now, sub=DROP),
    "an-access-token-type": lambda key, now: assertion(key, now=now, header={"typ": "at+jwt"}),
    "crit-header": lambda key, now: signed_as_is(
        key, {"alg": key.alg, "kid": key.kid, "crit": ["urn:example:ext"], "urn:example:ext": 1}, claims_for(now=now)
    ),
    "tampered-claims": lambda key, now: (lambda parts: ".".join(
        [parts[0], b64(json.dumps(claims_for("svc", now=now, scope="admin")).encode()), parts[2]]
    ))(assertion(key, now=now).split(".")),
    # Numbers too large for a float (a NumericDate must be one): refused as malformed, not a 500.
    "exp-a-400-digit-integer": lambda key, now: signed_as_is(
        key, {"alg": key.alg, "kid": key.kid}, claims_for(now=now, exp=10**400)
    ),
    "iat-a-400-digit-integer": lambda key, now: signed_as_is(
        key, {"alg": key.alg, "kid": key.kid}, claims_for(now=now, iat=10**400)
    ),
    # RFC 7515 section 2: base64url without padding, one spelling per byte string.
    "padded-segments": lambda key, now: ".".join(
        part + "=" * (-len(part) % 4) if part else part for part in assertion(key, now=now).split(".")
    ),
    "signature-in-plain-base64": lambda key, now: (lambda parts: ".".join(
        [parts[0], parts[1], parts[2].replace("-", "+").replace("_", "/")]
    ))(_with_both_alphabets(key, now)),
    "signature-last-character-with-spare-bits-set": lambda key, now: (lambda parts: ".".join(
        [parts[0], parts[1], _spare_bits_set(parts[2])]
    ))(assertion(key, now=now).split(".")),
    "not-a-jws": lambda key, now: "not.a.jws",
    "a-jwe": lambda key, now: "a.b.c.d.e",
}


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
async def test_attack_is_refused_with_invalid_client_and_nothing_issued(client, admin, svc, clock, attack):
    await refused(client, cc_form(ATTACKS[attack](svc, clock())))
    assert await spent_jtis(admin) == 0  # a refused assertion spends nothing either


async def test_an_assertion_is_accepted_once(client, admin, svc, clock):
    once = assertion(svc, now=clock())
    status, _, _ = await post_token(client, cc_form(once))
    assert status == 200
    body = await refused(client, cc_form(once))
    assert "used before" in body["error_description"]
    assert await spent_jtis(admin) == 1


async def test_of_many_concurrent_copies_of_one_assertion_exactly_one_gets_a_token(client, svc, clock):
    once = assertion(svc, now=clock())
    answers = await asyncio.gather(*(post_token(client, cc_form(once)) for _ in range(20)))
    statuses = [status for status, _, _ in answers]
    # The copies count as failed attempts: past TESSERA_LOGIN_MAX_FAILURES they are throttled.
    assert statuses.count(200) == 1 and set(statuses) - {200} <= {401, 429}, statuses


async def test_a_jti_is_the_client_s_own(client, admin, svc, clock):
    # Another client may pick the same jti: the register is per client.
    other = new_key("ES256")
    await admin.client("other", jwks=key_set(other))
    for key, client_id in ((svc, "svc"), (other, "other")):
        status, body, _ = await post_token(client, cc_form(assertion(key, client_id, now=clock(), jti="shared-jti")))
        assert status == 200, body


async def test_a_jti_may_come_back_once_its_assertion_has_expired(client, svc, clock):
    first = assertion(svc, now=clock(), jti="again", lifetime=30)
    assert (await post_token(client, cc_form(first)))[0] == 200
    clock.advance(120)  # past exp and the leeway: the first one can no longer be accepted anyway
    status, body, _ = await post_token(client, cc_form(assertion(svc, now=clock(), jti="again")))
    assert status == 200, body


async def test_two_methods_at_once_is_invalid_request(client, admin, svc, clock):
    await admin.client("secretive")
    for form, headers in (
        (cc_form(assertion(svc, now=clock())), basic("secretive", SECRET)),
        (cc_form(assertion(svc, now=clock()), client_secret=SECRET), {}),
        ({"grant_type": "client_credentials", "client_assertion": assertion(svc, now=clock())}, {}),
    ):
        status, body, _ = await post_token(client, form, headers=headers)
        assert status == 400 and body["error"] == "invalid_request", body


async def test_an_unsupported_assertion_type_is_invalid_client(client, svc, clock):
    form = cc_form(assertion(svc, now=clock()))
    form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    await refused(client, form)


async def test_a_private_key_jwt_client_cannot_authenticate_with_a_secret_or_its_id_alone(client, svc):
    await refused(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    await refused(client, {"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRET})
    await refused(client, {"grant_type": "client_credentials", "client_id": "svc"})


async def test_a_client_with_a_secret_cannot_use_an_assertion(client, admin, clock):
    key = new_key("ES256")
    await admin.client("svc")  # client_secret_basic
    await refused(client, cc_form(assertion(key, now=clock())))
    status, _, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
async def test_an_unknown_client_is_refused_like_a_wrong_key(client, svc, clock, alg):
    unknown = await refused(client, cc_form(assertion(new_key(alg), "ghost", now=clock())))
    wrong_key = await refused(client, cc_form(assertion(new_key(alg), "svc", now=clock())))
    assert unknown == wrong_key == {"error": "invalid_client", "error_description": "client authentication failed"}


async def test_failed_assertions_are_throttled_like_failed_secrets(client, admin, svc, clock):
    bystander = new_key("ES256")
    await admin.client("bystander", jwks=key_set(bystander))
    for _ in range(10):  # TESSERA_LOGIN_MAX_FAILURES
        await refused(client, cc_form(assertion(svc, now=clock(), aud="https://elsewhere.example")))
    for form in (cc_form(assertion(svc, now=clock(), aud="https://elsewhere.example")), cc_form(assertion(svc, now=clock()))):
        status, body, response = await post_token(client, form)
        assert status == 429 and int(response.headers["Retry-After"]) > 0, body
    # Nobody locks anybody else out: another client from the same address is untouched.
    assert (await post_token(client, cc_form(assertion(bystander, "bystander", now=clock()))))[0] == 200
    clock.advance(15 * 60 + 1)
    assert (await post_token(client, cc_form(assertion(svc, now=clock()))))[0] == 200


async def test_replays_and_refusals_are_security_events_and_metrics(client, svc, clock, caplog):
    once = assertion(svc, now=clock())
    with caplog.at_level(logging.WARNING, logger="tessera.security"):
        assert (await post_token(client, cc_form(once)))[0] == 200
        await refused(client, cc_form(once))
        await refused(client, cc_form(assertion(svc, now=clock(), lifetime=3600)))
    events = {getattr(r, "event", None): r for r in caplog.records}
    assert events["client_assertion_replay"].client_id == "svc"
    assert events["client_assertion_refused"].reason == "lifetime"
    assert once not in caplog.text
    metrics = parse_metrics(await (await client.get("/metrics")).text())
    assert sample(metrics, "tessera_client_assertion_replays_total", client_id="svc") == 1
    assert sample(metrics, "tessera_client_assertions_refused_total", reason="replayed") == 1
    assert sample(metrics, "tessera_client_assertions_refused_total", reason="lifetime") == 1


async def test_the_janitor_deletes_the_jtis_of_expired_assertions_only(client, admin, svc, clock):
    for lifetime in (30, 30, 240):
        assert (await post_token(client, cc_form(assertion(svc, now=clock(), lifetime=lifetime))))[0] == 200
    later = datetime.fromtimestamp(clock() + 120, UTC)  # past the first two (exp + leeway), not the third
    collected = await collect_garbage(admin.pool, later)
    assert collected.client_assertions == 2 and await spent_jtis(admin) == 1


async def test_concurrent_spends_share_commits_and_a_late_request_spends_nothing(clean_database):
    # The register's group commit (tessera.server.store.assertions) on a server's own pool: every
    # jti of a burst is recorded once, the second copy of one is a replay, and a request whose
    # answer has already gone (503) records nothing and holds up no other.
    pool = await db.create_pool(clean_database, size=4, statement_timeout=5.0)
    store = AssertionJtiStore(pool)
    now = datetime.now(UTC)
    expires_at = now + timedelta(minutes=5)

    async def spend(jti: str, *, late: bool = False) -> bool:
        if late:
            REQUEST_GIVES_UP.set(SimpleNamespace(when=asyncio.get_running_loop().time() - 5))
        return await store.spend("svc", jti, expires_at=expires_at, now=now)

    try:
        answers = await asyncio.gather(
            *(spend(f"jti-{n}") for n in range(50)), spend("jti-7"), spend("late", late=True), return_exceptions=True
        )
        copies = [answers[7], answers[50]]  # which of the two copies wins is the database's to say
        assert answers[:7] + answers[8:50] == [True] * 49 and sorted(copies) == [False, True]
        assert isinstance(answers[51], asyncpg.QueryCanceledError)
        jtis = {row["jti"] for row in await pool.fetch("SELECT jti FROM client_assertion_jtis")}
        assert jtis == {f"jti-{n}" for n in range(50)}
    finally:
        await pool.close()


# --- the replay register is shared by every instance ----------------------------------------------


async def _two_instances(processes: Processes, env: dict[str, str]) -> list[str]:
    bases = []
    for name in ("a", "b"):
        port = free_port()
        server = processes.serve(name, {**env, "TESSERA_PORT": str(port)})
        bases.append(f"http://127.0.0.1:{port}")
        await wait_until_ready(f"{bases[-1]}/readyz", server)
    return bases


def _register_with_the_cli(env: dict[str, str], tmp_path: Path, key: ClientKey, client_id: str = "svc") -> None:
    path = tmp_path / f"{client_id}.jwks.json"
    path.write_text(json.dumps(key_set(key)))
    created = cli(
        env, "clients", "create", client_id, "--grant-types", "client_credentials", "--scopes", "read",
        "--audiences", "https://orders.example", "--token-endpoint-auth-method", "private_key_jwt",
        "--jwks-file", str(path), "--json",
    )
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)
    assert shown["token_endpoint_auth_method"] == "private_key_jwt" and "client_secret" not in shown


async def test_an_assertion_replayed_to_a_second_instance_is_refused(processes, env, tmp_path, clock):
    key = new_key("ES256")
    _register_with_the_cli(env, tmp_path, key)
    first, second = await _two_instances(processes, env)
    async with aiohttp.ClientSession() as http:

        async def post(base: str, client_assertion: str) -> tuple[int, dict[str, Any]]:
            async with http.post(f"{base}/token", data=cc_form(client_assertion)) as response:
                return response.status, await response.json()

        once = assertion(key, now=clock())
        assert (await post(first, once))[0] == 200
        status, body = await post(second, once)
        assert status == 401 and body["error"] == "invalid_client" and "access_token" not in body
        # Sent to both at the same moment, several times over: each assertion gets one token.
        for _ in range(5):
            twice = assertion(key, now=clock())
            answers = await asyncio.gather(post(first, twice), post(second, twice))
            assert sorted(status for status, _ in answers) == [200, 401], answers


# --- keys: registered with the CLI, rotated, or fetched from the client's jwks_uri ----------------


async def test_a_key_added_with_the_cli_works_at_once_and_a_key_removed_stops_working(client, env, tmp_path, clock):
    old, new = new_key("ES256"), new_key("EdDSA")
    _register_with_the_cli(env, tmp_path, old)
    assert (await post_token(client, cc_form(assertion(old, now=clock()))))[0] == 200

    keys_file = tmp_path / "rotated.json"
    keys_file.write_text(json.dumps(key_set(old, new)))
    applied = cli(env, "clients", "set-jwks", "svc", "--jwks-file", str(keys_file))
    assert applied.returncode == 0, applied.stderr
    status, body, _ = await post_token(client, cc_form(assertion(new, now=clock())))
    assert status == 200, body  # the very next request: no wait for any cache
    assert (await post_token(client, cc_form(assertion(old, now=clock()))))[0] == 200

    keys_file.write_text(json.dumps(key_set(new)))
    assert cli(env, "clients", "set-jwks", "svc", "--jwks-file", str(keys_file)).returncode == 0

    async def old_key_refused() -> bool:
        return (await post_token(client, cc_form(assertion(old, now=clock()))))[0] == 401

    # Every instance learns of the change from PostgreSQL's notification, milliseconds after the commit.
    await eventually(old_key_refused, timeout=5, what="the removed key refused")
    assert (await post_token(client, cc_form(assertion(new, now=clock()))))[0] == 200


@pytest.mark.parametrize(
    "keys, says",
    [
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}, "symmetric"),
        ("private", "private key"),
        ({"keys": []}, "no keys"),
        ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "bad"}]}, "not a valid EC public key"),
        ("x25519", "cannot verify"),
        ({"nope": 1}, "not a JWK Set"),
        ("rsa-1024", "shorter than 2048 bits"),
    ],
    ids=["symmetric", "private", "empty", "not-on-the-curve", "key-agreement", "not-a-set", "short-rsa"],
)
def test_the_cli_refuses_key_sets_that_are_not_public_signing_keys(env, tmp_path, keys, says):
    if keys == "private":
        keys = {"keys": [new_key("ES256").private_jwk]}
    elif keys == "x25519":  # an OKP key for key agreement, not signatures
        keys = {"keys": [{**OKPKey.generate_key("X25519", private=True).as_dict(private=False), "kid": "x"}]}
    elif keys == "rsa-1024":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            keys = {"keys": [{**RSAKey.generate_key(1024, private=True).as_dict(private=False), "kid": "short"}]}
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(keys))
    result = cli(env, "clients", "create", "svc", "--grant-types", "client_credentials", "--audiences", "https://a.example",
                 "--jwks-file", str(path))
    assert result.returncode != 0 and says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "c2VjcmV0" not in result.stderr and '"d"' not in result.stderr


def test_the_cli_takes_an_https_jwks_uri_and_http_only_for_loopback(env):
    common = ["--grant-types", "client_credentials", "--audiences", "https://a.example"]
    refused_uri = cli(env, "clients", "create", "a", *common, "--jwks-uri", "http://keys.example/jwks.json")
    assert refused_uri.returncode != 0 and "loopback" in refused_uri.stderr
    mixed = cli(env, "clients", "create", "b", *common, "--token-endpoint-auth-method", "client_secret_post",
                "--jwks-uri", "https://keys.example/jwks.json")
    assert mixed.returncode != 0 and "private_key_jwt" in mixed.stderr
    for client_id, uri in (("c", "https://keys.example/jwks.json"), ("d", "http://127.0.0.1:9/jwks.json")):
        created = cli(env, "clients", "create", client_id, *common, "--jwks-uri", uri, "--json")
        assert created.returncode == 0, created.stderr
        shown = json.loads(created.stdout)
        assert shown["token_endpoint_auth_method"] == "private_key_jwt" and shown["jwks_uri"] == uri
        assert "client_secret" not in shown


class KeyHost:
    """A client's own JWKS endpoint: its keys, its Cache-Control, and whether it answers at all."""

    def __init__(self, *keys: ClientKey) -> None:
        self.keys = list(keys)
        self.failing = False
        self.fetches = 0

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            return web.Response(status=503)
        return web.json_response(key_set(*self.keys), headers={"Cache-Control": "max-age=60"})

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/jwks.json", self.jwks)
        async with served(app) as http:
            yield str(http.make_url("/jwks.json"))


async def test_a_jwks_uri_client_s_new_key_works_and_a_failing_uri_keeps_serving_from_cache(client, admin, clock):
    first, added = new_key("ES256"), new_key("PS256")
    host = KeyHost(first)
    async with host.serving() as url:
        await admin.client("svc", jwks_uri=url)
        assert (await post_token(client, cc_form(assertion(first, now=clock()))))[0] == 200
        assert host.fetches == 1

        # Made-up kids fetch the set again at most once per cooldown (30 s), however many arrive.
        for _ in range(5):
            await refused(client, cc_form(assertion(new_key("ES256"), now=clock())))
        assert host.fetches == 1

        clock.advance(31)
        host.keys.append(added)
        status, body, _ = await post_token(client, cc_form(assertion(added, now=clock())))
        assert status == 200, body  # the unknown kid fetched the set again
        assert host.fetches == 2

        host.failing = True
        clock.advance(120)  # past max-age: a refresh is due, and fails
        for key in (first, added, first):
            status, body, _ = await post_token(client, cc_form(assertion(key, now=clock())))
            assert status == 200, body
        assert host.fetches >= 3
        clock.advance(31)
        await refused(client, cc_form(assertion(new_key("ES256"), now=clock())))  # unknown kid while failing


async def test_a_jwks_uri_that_never_answered_is_invalid_client_never_a_server_error(client, admin, clock):
    key = new_key("ES256")
    host = KeyHost(key)
    host.failing = True
    async with host.serving() as url:
        await admin.client("svc", jwks_uri=url)
        await refused(client, cc_form(assertion(key, now=clock())))
    await admin.client("gone", jwks_uri=f"http://127.0.0.1:{free_port()}/jwks.json")
    await refused(client, cc_form(assertion(key, "gone", now=clock())))


async def test_a_failing_jwks_uri_does_not_lock_its_client_out_afterwards(client, admin, clock):
    key = new_key("ES256")
    host = KeyHost(key)
    host.failing = True
    async with host.serving() as url:
        await admin.client("svc", jwks_uri=url)
        for _ in range(12):  # past TESSERA_LOGIN_MAX_FAILURES, were they charged
            clock.advance(6)  # past the retry interval after a failed fetch
            await refused(client, cc_form(assertion(key, now=clock())))
        host.failing = False
        clock.advance(6)
        status, body, _ = await post_token(client, cc_form(assertion(key, now=clock())))
        assert status == 200, body


# --- real clients ---------------------------------------------------------------------------------


@pytest.fixture
async def live(env: dict[str, str], clock: FakeClock) -> AsyncIterator[str]:
    """Tessera in this process on a free port whose issuer is its own URL, as a client library
    that discovers it (or takes its token endpoint as the assertion's aud) needs."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    settings = load_settings({**env, "TESSERA_ISSUER": issuer})
    async with TestClient(TestServer(create_app(settings, clock=clock), host="127.0.0.1", port=port)):
        yield issuer


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """Authlib's PrivateKeyJWT makes assertions that live an hour, which Tessera refuses (at most
    five minutes), and has no option for it (authlib#857): this passes ``expires_in``."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return str(private_key_jwt_sign(
            auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint, alg=self.alg,
            header=self.headers, expires_in=60,
        ))


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
async def test_authlib_private_key_jwt_gets_introspects_and_revokes_tokens(live, admin, alg):
    key = new_key(alg)
    await admin.client("svc", jwks=key_set(key))
    oauth = OAuth2Session("svc", key.key, scope="read", token_endpoint_auth_method="private_key_jwt",
                          revocation_endpoint_auth_method="private_key_jwt")
    oauth.trust_env = False  # straight to 127.0.0.1, whatever proxy the machine names
    # No token_endpoint: each assertion's aud is the URL it is sent to. With a kid for ES256, without for RS256.
    oauth.register_client_auth_method(ShortLivedPrivateKeyJWT(alg=alg, headers={"kid": key.kid} if alg == "ES256" else None))
    with oauth:
        token = await asyncio.to_thread(oauth.fetch_token, f"{live}/token", grant_type="client_credentials")
        assert token["token_type"].lower() == "bearer" and token["scope"] == "read"
        introspected = await asyncio.to_thread(oauth.introspect_token, f"{live}/introspect", token=token["access_token"])
        assert introspected.status_code == 200 and introspected.json()["client_id"] == "svc"
        revoked = await asyncio.to_thread(oauth.revoke_token, f"{live}/revoke", token=token["access_token"])
        assert revoked.json()["error"] == "unsupported_token_type"  # authenticated: see test above


async def test_authlib_s_default_hour_long_assertion_is_refused_saying_why(live, admin):
    key = new_key("ES256")
    await admin.client("svc", jwks=key_set(key))
    oauth = OAuth2Session("svc", key.key, token_endpoint_auth_method="private_key_jwt")
    oauth.trust_env = False
    oauth.register_client_auth_method(PrivateKeyJWT(f"{live}/token", alg="ES256"))
    with oauth:
        with pytest.raises(Exception) as refusal:
            await asyncio.to_thread(oauth.fetch_token, f"{live}/token", grant_type="client_credentials")
    assert getattr(refusal.value, "error", None) == "invalid_client"
    assert "300 seconds" in getattr(refusal.value, "description", "")


async def test_authlib_with_a_claims_dict_sends_one_jti_twice_and_the_second_request_is_refused(live, admin, clock):
    # PrivateKeyJWT(claims=...) writes the jti it makes into that dict and sends it again: a
    # client bug that the replay register turns into a refusal instead of an accepted copy.
    key = new_key("ES256")
    await admin.client("svc", jwks=key_set(key))
    oauth = OAuth2Session("svc", key.key, token_endpoint_auth_method="private_key_jwt")
    oauth.trust_env = False
    oauth.register_client_auth_method(PrivateKeyJWT(claims={"exp": int(clock()) + 60}, alg="ES256"))
    with oauth:
        await asyncio.to_thread(oauth.fetch_token, f"{live}/token", grant_type="client_credentials")
        with pytest.raises(Exception) as refusal:
            await asyncio.to_thread(oauth.fetch_token, f"{live}/token", grant_type="client_credentials")
    assert getattr(refusal.value, "error", None) == "invalid_client"
    assert "used before" in getattr(refusal.value, "description", "")


@pytest.mark.parametrize("alg", ["ES256", "Ed25519", "PS256"])
async def test_openid_client_private_key_jwt_gets_introspects_and_revokes_tokens(node, live, admin, alg):
    key = new_key(alg)
    await admin.client("svc", jwks=key_set(key), audiences=("https://orders.example", "https://billing.example"))
    answer = await run_node(node, "pkjwt_client.mjs", given={
        "issuer": live, "client_id": "svc", "private_jwk": key.private_jwk, "scope": "read",
        "resource": "https://billing.example",
    })
    assert "private_key_jwt" in answer["server_metadata"]["token_endpoint_auth_methods_supported"]
    assert answer["tokens"]["token_type"].lower() == "bearer" and answer["tokens"]["scope"] == "read"
    assert answer["introspection"]["active"] is True and answer["introspection"]["client_id"] == "svc"
    assert answer["revoked"] is True
