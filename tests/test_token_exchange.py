"""Token exchange (RFC 8693; CONTRACT.md, "Service to service"), over real HTTP against a real
PostgreSQL: a service that received a user's access token gets one for its own downstream
audience, acting on the user's behalf, and never more than the token it was sent allowed.

The cast: alice signs in to the app ``web`` (password grant) and sends her token (aud
https://orders.example) to the orders service. The client ``orders`` may exchange tokens sent to
https://orders.example for tokens to https://billing.example; the client ``billing`` may exchange
billing tokens for https://inventory.example ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey

from tessera.keys import Verifier, WrongAudience
from tessera.server.oauth.grants.token_exchange import MAX_DELEGATION_DEPTH
from tests.conftest import Admin
from tests.helpers import PASSWORD, SECRET, basic, decode_segment, fetch_jwks, post_token, verify_with_joserfc
from tests.processes import cli, parse_metrics, sample
from tests.test_sign_in_interop import node, run_node  # noqa: F401  (node: the session's npm-installed fixture)

ISSUER = "https://tessera.test"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"
ORDERS, BILLING, INVENTORY = "https://orders.example", "https://billing.example", "https://inventory.example"


async def cast(admin: Admin) -> str:
    """The clients and alice; her user id."""
    await admin.client("web", grant_types=("password", "refresh_token"), scopes=("read", "write", "profile"),
                       audiences=(ORDERS, BILLING))
    await admin.client("orders", grant_types=(TOKEN_EXCHANGE,), scopes=("read", "write"),
                       audiences=(BILLING,), exchange_from=(ORDERS,))
    await admin.client("billing", grant_types=(TOKEN_EXCHANGE,), scopes=("read",),
                       audiences=(INVENTORY,), exchange_from=(BILLING,))
    return str((await admin.user("alice")).user_id)


async def sign_in(http: TestClient[Any, Any], **extra: str) -> dict[str, Any]:
    """alice's tokens from the app: an access token for the orders service and a refresh token."""
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD, **extra}
    status, body, _ = await post_token(http, form, headers=basic("web", SECRET))
    assert status == 200, body
    return body


async def exchange(
    http: TestClient[Any, Any], client_id: str, subject_token: str, **extra: str
) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": ACCESS_TOKEN, **extra}
    status, body, response = await post_token(http, form, headers=basic(client_id, SECRET))
    assert response.headers["Cache-Control"] == "no-store"
    return status, body


async def claims_of(http: TestClient[Any, Any], token: str) -> dict[str, Any]:
    return dict(verify_with_joserfc(token, await fetch_jwks(http)).claims)


async def metrics(http: TestClient[Any, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics")
    assert response.status == 200
    return parse_metrics(await response.text())


# --- what an exchange gives ----------------------------------------------------------------------


async def test_authlib_exchange_gives_a_token_the_verifier_accepts_acting_for_the_user(client, admin, clock):
    alice = await cast(admin)
    user = await sign_in(client)
    subject = await claims_of(client, user["access_token"])
    token_endpoint = str(client.make_url("/token"))

    def authlib_exchange() -> dict[str, Any]:
        # Authlib's generic grant request: any grant_type, its parameters as keywords.
        with OAuth2Session("orders", SECRET) as session:
            return dict(session.fetch_token(
                token_endpoint, grant_type=TOKEN_EXCHANGE, subject_token=user["access_token"],
                subject_token_type=ACCESS_TOKEN, audience=BILLING, timeout=10,
            ))

    body = await asyncio.to_thread(authlib_exchange)
    assert body["issued_token_type"] == ACCESS_TOKEN and body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    assert body["scope"] == "read write" and body["expires_in"] == 900

    jwks_url = str(client.make_url("/.well-known/jwks.json"))
    async with Verifier(issuer=ISSUER, audience=BILLING, algorithms=["ES256"], jwks_url=jwks_url) as verifier:
        claims = await verifier.verify(body["access_token"], required_scopes=["read"])
    assert claims.header["typ"] == "at+jwt"
    assert claims["sub"] == alice and claims["aud"] == BILLING
    assert claims["act"] == {"sub": "orders"}  # section 4.1: the actor, the calling client
    assert claims["client_id"] == "orders"
    assert claims["sid"] == subject["sid"] and claims["auth_time"] == subject["auth_time"]
    assert claims["exp"] == subject["exp"] == int(clock()) + 900
    # The resource server the user's token was for cannot take the exchanged one for its own.
    async with Verifier(issuer=ISSUER, audience=ORDERS, algorithms=["ES256"], jwks_url=jwks_url) as orders:
        with pytest.raises(WrongAudience):
            await orders.verify(body["access_token"])


async def test_node_jose_accepts_the_exchanged_token_with_the_jwks_alone(client, admin, node):  # noqa: F811
    alice = await cast(admin)
    user = await sign_in(client)
    status, body = await exchange(client, "orders", user["access_token"], resource=BILLING)
    assert status == 200, body
    verified = await run_node(node, "verify_access_token.mjs", given={
        "jwks_uri": str(client.make_url("/.well-known/jwks.json")), "issuer": ISSUER, "audience": BILLING,
        "access_token": body["access_token"],
    })
    assert verified["header"]["typ"] == "at+jwt" and verified["header"]["alg"] == "ES256"
    payload = verified["payload"]
    assert payload["sub"] == alice and payload["act"] == {"sub": "orders"} and payload["client_id"] == "orders"


async def test_exchanging_an_exchanged_token_nests_the_earlier_actor(client, admin):
    alice = await cast(admin)
    user = await sign_in(client)
    _, for_billing = await exchange(client, "orders", user["access_token"], audience=BILLING)
    status, for_inventory = await exchange(client, "billing", for_billing["access_token"], audience=INVENTORY)
    assert status == 200, for_inventory
    claims = await claims_of(client, for_inventory["access_token"])
    # Section 4.1: the current actor outermost, the one before it nested inside.
    assert claims["act"] == {"sub": "billing", "act": {"sub": "orders"}}
    assert claims["sub"] == alice and claims["aud"] == INVENTORY and claims["client_id"] == "billing"
    assert claims["scope"] == "read"


async def test_the_exchanged_token_never_outlives_the_subject_token(client, admin, clock):
    await cast(admin)
    user = await sign_in(client)
    subject = await claims_of(client, user["access_token"])
    clock.advance(600)
    status, body = await exchange(client, "orders", user["access_token"], audience=BILLING)
    assert status == 200, body
    claims = await claims_of(client, body["access_token"])
    assert claims["exp"] == subject["exp"] and claims["iat"] == int(clock())
    assert body["expires_in"] == 300


@pytest.mark.parametrize(
    ("signed_in_with", "asked", "granted"),
    [
        (None, None, "read write"),  # default: what both the user's token and the client have
        (None, "read", "read"),
        ("read profile", None, "read"),
        ("write", "write", "write"),
    ],
)
async def test_scope_is_narrowed_to_what_the_subject_token_and_the_client_share(
    client, admin, signed_in_with, asked, granted
):
    await cast(admin)
    user = await sign_in(client, **({"scope": signed_in_with} if signed_in_with else {}))
    status, body = await exchange(client, "orders", user["access_token"], audience=BILLING,
                                  **({"scope": asked} if asked else {}))
    assert status == 200, body
    assert body["scope"] == granted
    assert (await claims_of(client, body["access_token"]))["scope"] == granted


async def test_revoking_the_users_session_ends_the_exchanged_token_too(client, admin):
    await cast(admin)
    user = await sign_in(client)
    _, exchanged = await exchange(client, "orders", user["access_token"], audience=BILLING)
    response = await client.post("/revoke", data={"token": user["refresh_token"]}, headers=basic("web", SECRET))
    assert response.status == 200
    # The exchanged token keeps the session's sid, so introspection sees the revocation...
    response = await client.post("/introspect", data={"token": exchanged["access_token"]},
                                 headers=basic("orders", SECRET))
    assert await response.json() == {"active": False}
    # ...and it cannot be exchanged further down the line.
    status, body = await exchange(client, "billing", exchanged["access_token"], audience=INVENTORY)
    assert (status, body["error"]) == (400, "invalid_grant") and "access_token" not in body


async def test_metadata_lists_the_grant_type(client):
    response = await client.get("/.well-known/oauth-authorization-server")
    assert TOKEN_EXCHANGE in (await response.json())["grant_types_supported"]


# --- what is refused, and that nothing is issued ---------------------------------------------------


def forged(kid: str, **claims: Any) -> str:
    """An access token shaped exactly like Tessera's, signed by a key Tessera never published."""
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "alice", "aud": ORDERS, "exp": now + 900, "iat": now, "nbf": now,
               "jti": "forged-jti-0123456789", "client_id": "web", "scope": "read write", **claims}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": kid}, payload, ECKey.generate_key("P-256"))


async def refused(
    http: TestClient[Any, Any], client_id: str, subject_token: str, error: str, reason: str | None, **extra: str
) -> None:
    """Refused with ``error``, no token in the answer, none counted as issued, the refusal counted."""
    status, body = await exchange(http, client_id, subject_token, **extra)
    assert (status, body.get("error")) == (400, error), body
    assert set(body) == {"error", "error_description"}
    m = await metrics(http)
    assert sample(m, "tessera_tokens_issued_total", grant_type=TOKEN_EXCHANGE, client_id=client_id) == 0
    if reason is not None:
        assert sample(m, "tessera_token_exchanges_refused_total", client_id=client_id, reason=reason) == 1


async def test_an_expired_subject_token_is_invalid_grant(client, admin, clock):
    await cast(admin)
    user = await sign_in(client)
    clock.advance(900)  # RFC 7519 section 4.1.4: valid only before exp
    await refused(client, "orders", user["access_token"], "invalid_grant", "subject_token", audience=BILLING)


@pytest.mark.parametrize("variant", ["tesseras_kid", "its_own_kid", "another_issuer"])
async def test_another_issuers_token_is_invalid_grant_and_a_security_event(client, admin, caplog, variant):
    await cast(admin)
    active_kid = (await fetch_jwks(client)).keys[0].kid
    assert active_kid is not None
    token = {
        "tesseras_kid": lambda: forged(active_kid),
        "its_own_kid": lambda: forged("attacker-key-1"),
        "another_issuer": lambda: forged("other-1", iss="https://other.example"),
    }[variant]()
    with caplog.at_level(logging.WARNING, logger="tessera.security"):
        await refused(client, "orders", token, "invalid_grant", "subject_token", audience=BILLING)
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "token_exchange_refused"]
    assert record.client_id == "orders" and record.reason == "subject_token"  # type: ignore[attr-defined]
    assert token not in caplog.text


async def test_a_subject_token_of_a_revoked_family_is_invalid_grant(client, admin):
    await cast(admin)
    user = await sign_in(client)
    response = await client.post("/revoke", data={"token": user["refresh_token"]}, headers=basic("web", SECRET))
    assert response.status == 200
    await refused(client, "orders", user["access_token"], "invalid_grant", "session_revoked", audience=BILLING)


@pytest.mark.parametrize("parameter", ["audience", "resource"])
async def test_an_audience_the_client_may_not_target_is_invalid_target(client, admin, parameter):
    await cast(admin)
    user = await sign_in(client)
    # The subject token's own audience, and one nobody registered: neither is one of orders' audiences.
    for target in (ORDERS, "https://evil.example"):
        await refused(client, "orders", user["access_token"], "invalid_target", None, **{parameter: target})
    assert sample(await metrics(client), "tessera_token_exchanges_refused_total", client_id="orders",
                  reason="target") == 2


async def test_a_subject_token_for_an_audience_outside_exchange_from_is_invalid_grant(client, admin):
    await cast(admin)
    user = await sign_in(client, audience=BILLING)  # a token meant for billing, not for orders
    await refused(client, "orders", user["access_token"], "invalid_grant", "subject_audience", audience=BILLING)


@pytest.mark.parametrize(
    ("signed_in_with", "asked"),
    [
        (None, "read write profile"),  # profile: the user's token has it, the client does not
        ("read", "read write"),  # write: the client has it, the user's token does not
        ("profile", None),  # nothing in common: an exchange with no scope is refused, not emptied
    ],
)
async def test_widening_the_scope_is_invalid_scope(client, admin, signed_in_with, asked):
    await cast(admin)
    user = await sign_in(client, **({"scope": signed_in_with} if signed_in_with else {}))
    await refused(client, "orders", user["access_token"], "invalid_scope", "scope", audience=BILLING,
                  **({"scope": asked} if asked else {}))


async def test_a_refresh_token_as_subject_token_is_refused_and_stays_unspent(client, admin):
    await cast(admin)
    user = await sign_in(client)
    # Declared as what it is: a token type this server does not exchange (section 2.2.2).
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": user["refresh_token"],
            "subject_token_type": REFRESH_TOKEN, "audience": BILLING}
    status, body, _ = await post_token(client, form, headers=basic("orders", SECRET))
    assert (status, body["error"]) == (400, "invalid_request") and "access_token" not in body
    # Passed off as an access token: it is not one this server signed.
    await refused(client, "orders", user["refresh_token"], "invalid_grant", "subject_token", audience=BILLING)
    # Neither spent nor revoked it: the app still refreshes with it.
    status, body, _ = await post_token(client, {"grant_type": "refresh_token", "refresh_token": user["refresh_token"]},
                                       headers=basic("web", SECRET))
    assert status == 200, body


async def test_a_client_without_the_grant_type_is_unauthorized_client(client, admin):
    await cast(admin)
    user = await sign_in(client)
    # web holds the token itself, and may target billing, but is not registered for token exchange.
    await refused(client, "web", user["access_token"], "unauthorized_client", None, audience=BILLING)


@pytest.mark.parametrize(
    "extra",
    [
        {"actor_token": "x", "actor_token_type": ACCESS_TOKEN},  # not supported: the client is the actor
        {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"requested_token_type": REFRESH_TOKEN},  # no refresh token is ever issued by an exchange
    ],
)
async def test_unsupported_parameters_are_invalid_request(client, admin, extra):
    await cast(admin)
    user = await sign_in(client)
    await refused(client, "orders", user["access_token"], "invalid_request", "request", audience=BILLING, **extra)


async def test_a_missing_subject_token_is_invalid_request(client, admin):
    await cast(admin)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": ACCESS_TOKEN, "audience": BILLING}
    status, body, _ = await post_token(client, form, headers=basic("orders", SECRET))
    assert (status, body["error"]) == (400, "invalid_request")


async def test_a_delegation_chain_between_services_stops_at_its_limit(client, admin):
    # Two services that exchange each other's tokens back and forth: a loop, refused once it is long.
    await admin.client("ping", grant_types=(TOKEN_EXCHANGE,), scopes=("read",), audiences=("https://ping.example",),
                       exchange_from=("https://pong.example",))
    await admin.client("pong", grant_types=(TOKEN_EXCHANGE, "client_credentials"), scopes=("read",),
                       audiences=("https://pong.example", "https://ping.example"),
                       exchange_from=("https://ping.example",))
    _, body, _ = await post_token(client, {"grant_type": "client_credentials", "audience": "https://pong.example"},
                                  headers=basic("pong", SECRET))
    token = body["access_token"]
    for depth in range(MAX_DELEGATION_DEPTH):
        actor, target = ("ping", "https://ping.example") if depth % 2 == 0 else ("pong", "https://pong.example")
        status, body = await exchange(client, actor, token, audience=target)
        assert status == 200, (depth, body)
        token = body["access_token"]
    assert decode_segment(token.split(".")[1])["sub"] == "pong"  # the subject never changes
    actor = "ping" if MAX_DELEGATION_DEPTH % 2 == 0 else "pong"
    status, body = await exchange(client, actor, token)
    assert (status, body["error"]) == (400, "invalid_grant")


# --- the command line ----------------------------------------------------------------------------


def test_clients_create_registers_a_client_that_exchanges_tokens(env):
    created = cli(env, "clients", "create", "orders", "--grant-types", TOKEN_EXCHANGE, "--scopes", "read",
                  "--audiences", BILLING, "--exchange-from", f"{ORDERS} https://shop.example", "--json")
    assert created.returncode == 0, created.stderr
    shown = cli(env, "clients", "show", "orders", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["grant_types"] == [TOKEN_EXCHANGE] and data["exchange_from"] == [ORDERS, "https://shop.example"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--grant-types", TOKEN_EXCHANGE], "--exchange-from"),  # a grant that could exchange nothing
        (["--grant-types", "client_credentials", "--exchange-from", ORDERS], TOKEN_EXCHANGE),
        (["--grant-types", TOKEN_EXCHANGE, "--exchange-from", ORDERS, "--public"], "public"),
    ],
)
def test_clients_create_refuses_token_exchange_settings_that_make_no_sense(env, args, says):
    result = cli(env, "clients", "create", "orders", "--audiences", BILLING, *args)
    assert result.returncode != 0 and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
