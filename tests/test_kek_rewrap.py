"""Changing the key-encryption key without downtime: `tessera keys rewrap` and the instances around it."""

from __future__ import annotations

import base64
import functools
import secrets
from datetime import UTC, datetime

import pytest

from tessera.keys import kek as kek_box
from tessera.keys.lifecycle import key_roles
from tessera.server.store import PgKeyStore
from tessera.server.store.keys import RewrapError
from tessera.server.store.secrets import server_secret
from tests.helpers import SECRET, basic, eventually, post_token, tessera_server, verify_with_joserfc
from tests.key_helpers import FAST_KEYS, jwks_of, kek_bytes, lifecycle_on, new_key


def _kek_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


async def _blobs(db_conn) -> dict[str, bytes]:
    rows = await db_conn.fetch(
        "SELECT kid AS name, private_sealed AS blob FROM signing_keys UNION ALL SELECT name, sealed FROM server_secrets"
    )
    return {r["name"]: bytes(r["blob"]) for r in rows}


def _opens(kek: bytes, blobs: dict[str, bytes]) -> set[str]:
    opened = set()
    for name, blob in blobs.items():
        try:
            kek_box.unseal(kek, blob, name.encode())
        except kek_box.UnsealError:
            continue
        opened.add(name)
    return opened


async def _signs(http) -> str:
    status, body, _ = await post_token(http, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200, body
    return verify_with_joserfc(body["access_token"], (await jwks_of(http))[0]).header["kid"]


async def test_the_documented_kek_change_keeps_every_instance_signing(env, clock, admin, db_conn):
    old, new_text = kek_bytes(env["TESSERA_KEY_ENCRYPTION_KEY"]), _kek_text()
    new = kek_bytes(new_text)
    await admin.client("svc")
    chain = await server_secret(admin.pool, old, "chain")
    # Step 1: every instance also gets the new KEK. A key made now still follows the active key's
    # KEK (the old one), so an instance that has not been restarted yet can open it.
    transition = {**FAST_KEYS, "TESSERA_NEW_KEY_ENCRYPTION_KEY": new_text}
    async with tessera_server(env, clock, **transition) as during:
        await _signs(during)
        async with lifecycle_on(env, clock, **transition) as lifecycle:
            made_before = (await lifecycle.rotate(force=True)).next_key.kid
        assert made_before in _opens(old, await _blobs(db_conn))
        # Step 2: rewrap.
        rewrap = functools.partial(kek_box.reseal, old, new)
        # Three keys, and four secrets: the test's own, and the refresh-token chain key, the login
        # throttle's key and the sign-in pages' key that the server made.
        assert await PgKeyStore(admin.pool).rewrap(rewrap) == (3, 4)
        blobs = await _blobs(db_conn)
        assert _opens(new, blobs) == set(blobs) and not _opens(old, blobs)
        await _signs(during)
        # A rotation after the rewrap makes its key under the new KEK (it follows the active key).
        # 120 s: past the next key's publication (61 s), and well short of the rotation interval
        # (3,600 s), so that the scheduler inside `during` does not rotate in the same moment and
        # leave this rotation to lose the race (KeySetChanged).
        clock.advance(120)
        async with lifecycle_on(env, clock, **transition) as lifecycle:
            made_after = (await lifecycle.rotate()).next_key.kid
        assert made_after in _opens(new, await _blobs(db_conn))
        # Step 3: instances restart with only the new KEK; the transition one keeps going meanwhile.
        async with tessera_server({**env, "TESSERA_KEY_ENCRYPTION_KEY": new_text}, clock, **FAST_KEYS) as after:
            assert await _signs(after) == await _signs(during)
        assert await server_secret(admin.pool, new, "chain") == chain
    assert await PgKeyStore(admin.pool).rewrap(rewrap) == (0, 0)  # a second run changes nothing


async def test_an_instance_with_only_the_old_kek_reports_not_ready_once_it_cannot_open_the_active_key(
    env, clock, admin
):
    old, new = kek_bytes(env["TESSERA_KEY_ENCRYPTION_KEY"]), kek_bytes(_kek_text())
    async with tessera_server(env, clock, **FAST_KEYS) as stale:
        await PgKeyStore(admin.pool).rewrap(functools.partial(kek_box.reseal, old, new))
        assert (await stale.get("/readyz")).status == 200  # it still holds the active key, unsealed
        async with lifecycle_on({**env, "TESSERA_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(new).decode()},
                                clock, **FAST_KEYS) as lifecycle:
            await lifecycle.rotate(force=True)

        async def not_ready() -> bool:
            return (await stale.get("/readyz")).status == 503

        await eventually(not_ready, what="not ready")


async def test_a_rewrap_that_meets_a_blob_neither_kek_opens_changes_nothing(env, clock, admin, db_conn):
    old, new = kek_bytes(env["TESSERA_KEY_ENCRYPTION_KEY"]), kek_bytes(_kek_text())
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
    await server_secret(admin.pool, secrets.token_bytes(32), "foreign")
    before = await _blobs(db_conn)
    with pytest.raises(RewrapError, match="foreign"):
        await PgKeyStore(admin.pool).rewrap(functools.partial(kek_box.reseal, old, new))
    assert await _blobs(db_conn) == before


async def test_a_rotation_prepared_before_a_rewrap_is_refused_after_it(env, clock, admin):
    old, new = kek_bytes(env["TESSERA_KEY_ENCRYPTION_KEY"]), kek_bytes(_kek_text())
    async with lifecycle_on(env, clock, **FAST_KEYS) as lifecycle:
        await lifecycle.prepare()
    store = PgKeyStore(admin.pool)
    now = datetime.fromtimestamp(clock(), UTC)
    active, upcoming = key_roles(await store.published_keys(now))
    under_old = new_key(old)  # made to follow the active key as it was: under the old KEK
    await store.rewrap(functools.partial(kek_box.reseal, old, new))
    assert not await store.rotate(
        active=active, next_key=upcoming, new_next=under_old, now=now, publish_seconds=0, retired_expires_at=now
    )
