"""Malformed and hostile requests: a clear 4xx RFC 6749 error, never a 500, and nothing changes."""

from __future__ import annotations

import io
import re

import pytest

from tests.helpers import SECRET, basic, post_token


@pytest.fixture
async def snapshot(admin, db_conn):
    await admin.client("svc", grant_types=("client_credentials", "password"))
    await admin.user("alice", "pw-alice-pw-alice")

    async def take():
        return (
            await db_conn.fetch("SELECT * FROM clients ORDER BY client_id"),
            await db_conn.fetch("SELECT * FROM users ORDER BY username"),
            await db_conn.fetch("SELECT kid, state FROM signing_keys ORDER BY kid"),
        )

    return take


BAD_BODIES = [
    ("wrong content type", b"grant_type=client_credentials", {"Content-Type": "text/plain"}, 400),
    ("json body", b'{"grant_type": "client_credentials"}', {"Content-Type": "application/json"}, 400),
    ("empty body", b"", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    ("repeated parameter", b"grant_type=client_credentials&grant_type=password", None, 400),
    ("repeated scope", b"grant_type=client_credentials&scope=read&scope=write", None, 400),
    ("unknown grant", b"grant_type=urn:evil", None, 400),
    ("missing grant", b"scope=read", None, 400),
    ("nul byte", b"grant_type=client_credentials&scope=re%00ad", None, 400),
    ("raw nul byte", b"grant_type=client_credentials\x00", None, 400),
    ("invalid utf-8 escaped", b"grant_type=client_credentials&scope=%ff%fe", None, 400),
    ("raw non-ascii", "grant_type=client_credentials&scope=caf\u00e9".encode(), None, 400),
    ("sql metacharacters", b"grant_type=client_credentials&scope=read%27%3B+DROP+TABLE+clients%3B--", None, 400),
    ("sql in username", b"grant_type=password&username=%27+OR+1%3D1--&password=x", None, 400),
    ("charset latin1", b"grant_type=client_credentials", {"Content-Type": "application/x-www-form-urlencoded; charset=latin1"}, 400),
    ("too many parameters", b"&".join(b"p%d=1" % i for i in range(200)), None, 400),
    ("overlong value", b"grant_type=client_credentials&scope=" + b"a" * 5000, None, 400),
    # The parameter's name goes into the description, which RFC 6749 section 5.2 limits to
    # printable ASCII without '"' and '\\'.
    ("repeated non-ascii name", b"grant_type=client_credentials&sc%C3%B6pe=1&sc%C3%B6pe=2", None, 400),
    ("repeated name with quotes", b"grant_type=client_credentials&a%27%22%5Cb=1&a%27%22%5Cb=2", None, 400),
]

# RFC 6749 section 5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
DESCRIPTION_CHARACTERS = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")


@pytest.mark.parametrize("name,body,headers,expected", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_request_gets_an_rfc6749_error_and_changes_nothing(client, snapshot, name, body, headers, expected):
    before = await snapshot()
    all_headers = {"Content-Type": "application/x-www-form-urlencoded", **basic("svc", SECRET), **(headers or {})}
    response = await client.post("/token", data=body, headers=all_headers)
    assert response.status == expected
    payload = await response.json(content_type=None)
    assert set(payload) == {"error", "error_description"}
    assert payload["error"] in {"invalid_request", "invalid_scope", "unsupported_grant_type", "invalid_grant"}
    assert DESCRIPTION_CHARACTERS.match(payload["error_description"]), payload["error_description"]
    assert response.headers["Cache-Control"] == "no-store"
    assert await snapshot() == before


async def test_unknown_grant_is_unsupported_grant_type(client, admin):
    await admin.client("svc")
    for grant_type in ("urn:example:unknown", "implicit", "authorization_code2"):
        status, body, _ = await post_token(client, {"grant_type": grant_type}, headers=basic("svc", SECRET))
        assert status == 400 and body["error"] == "unsupported_grant_type"


async def test_oversized_body_is_refused_with_413(client, snapshot):
    before = await snapshot()
    body = io.BytesIO(b"grant_type=client_credentials&pad=" + b"x" * (2 * 1024 * 1024))
    response = await client.post("/token", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 413
    assert (await response.json(content_type=None))["error"] == "invalid_request"
    assert await snapshot() == before


async def test_parameters_in_the_query_string_are_refused(client, admin):
    await admin.client("svc")
    response = await client.post(
        "/token?client_secret=leak", data={"grant_type": "client_credentials"}, headers=basic("svc", SECRET)
    )
    assert response.status == 400


async def test_get_on_the_token_endpoint_is_405_json(client):
    response = await client.get("/token")
    assert response.status == 405
    assert (await response.json(content_type=None))["error"] == "invalid_request"


async def test_unknown_path_is_404_json(client):
    response = await client.get("/nope")
    assert response.status == 404
    assert "error" in await response.json(content_type=None)


async def test_two_authorization_headers_are_invalid_request(client, admin):
    await admin.client("svc")
    headers = [("Authorization", basic("svc", SECRET)["Authorization"])] * 2 + [
        ("Content-Type", "application/x-www-form-urlencoded")
    ]
    response = await client.post("/token", data=b"grant_type=client_credentials", headers=headers)
    assert response.status == 400


async def test_responses_do_not_announce_a_server_version(client):
    response = await client.get("/healthz")
    assert "aiohttp" not in response.headers.get("Server", "").lower()
    assert response.headers["X-Content-Type-Options"] == "nosniff"
