"""RFC 6749 section 2.3: client authentication methods and their failures."""

from __future__ import annotations

import base64

from tests.helpers import SECRET, basic, eventually, post_token


async def test_client_secret_basic(client, admin):
    await admin.client("svc")
    status, _, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200


async def test_client_secret_basic_form_urlencodes_id_and_secret(client, admin):
    # Section 2.3.1: the id and secret are form-urlencoded before base64.
    await admin.client("svc:1", secret="p@ss word+plus/slash%")
    raw = "svc%3A1:p%40ss+word%2Bplus%2Fslash%25".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    status, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=headers)
    assert status == 200, body


async def test_client_secret_post(client, admin):
    await admin.client("svc")
    status, _, _ = await post_token(
        client, {"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRET}
    )
    assert status == 200


async def test_public_client_sends_only_its_id(client, admin):
    await admin.client("spa", secret=None, grant_types=("password",))
    await admin.user("alice", "pw-alice-pw-alice")
    status, body, _ = await post_token(
        client, {"grant_type": "password", "client_id": "spa", "username": "alice", "password": "pw-alice-pw-alice"}
    )
    assert status == 200, body


async def test_confidential_client_without_secret_is_invalid_client(client, admin):
    await admin.client("svc")
    status, body, _ = await post_token(client, {"grant_type": "client_credentials", "client_id": "svc"})
    assert status == 401 and body["error"] == "invalid_client"


async def test_wrong_secret_is_invalid_client_with_www_authenticate(client, admin):
    await admin.client("svc")
    status, body, response = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", "nope"))
    assert status == 401 and body["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.headers["Cache-Control"] == "no-store"


async def test_unknown_client_gets_the_same_answer_as_a_wrong_secret(client, admin):
    await admin.client("svc")
    _, wrong_secret, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", "nope"))
    _, unknown, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("ghost", "nope"))
    assert wrong_secret == unknown


async def test_two_authentication_methods_at_once_is_invalid_request(client, admin):
    await admin.client("svc")
    status, body, _ = await post_token(
        client,
        {"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRET},
        headers=basic("svc", SECRET),
    )
    assert status == 400 and body["error"] == "invalid_request"


async def test_no_client_authentication_is_invalid_client(client, admin):
    status, body, _ = await post_token(client, {"grant_type": "client_credentials"})
    assert status == 401 and body["error"] == "invalid_client"


async def test_malformed_basic_headers_are_invalid_client(client, admin):
    await admin.client("svc")
    for header in ("Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
                   "Bearer abc", "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode()):
        status, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers={"Authorization": header})
        assert status == 401 and body["error"] == "invalid_client", header


async def test_a_rotated_secret_stops_working_at_once_even_after_a_cached_success(client, admin):
    """"At once": as soon as the change notification arrives (milliseconds), on every instance."""
    from tessera.server.store import ClientStore

    await admin.client("svc")
    status, _, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200
    await ClientStore(admin.pool).set_secret_hash("svc", await admin.hasher.hash("a-brand-new-secret-value"))

    async def old_secret_refused() -> bool:
        status, _, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
        return status == 401

    await eventually(old_secret_refused, timeout=2.0, interval=0.005, what="the old secret refused")
    status, _, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", "a-brand-new-secret-value"))
    assert status == 200


async def test_a_deleted_client_is_refused_at_once(client, admin):
    from tessera.server.store import ClientStore

    await admin.client("svc")
    assert (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET)))[0] == 200
    await ClientStore(admin.pool).delete("svc")

    async def refused() -> bool:
        return (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET)))[0] == 401

    await eventually(refused, timeout=2.0, interval=0.005, what="the deleted client refused")  # as soon as the change notification arrives


async def test_client_secrets_are_stored_only_as_argon2id_hashes(admin, db_conn):
    await admin.client("svc")
    stored = await db_conn.fetchval("SELECT secret_hash FROM clients WHERE client_id = 'svc'")
    assert stored.startswith("$argon2id$") and SECRET not in stored
