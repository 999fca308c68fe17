"""Several real `tessera serve` processes and CLIs on one database agree on the keys."""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest
from joserfc.errors import InvalidKeyIdError

from tessera.server.store.keys import KEYS_LOCK_ID
from tests.helpers import SECRET, basic, eventually, verify_with_joserfc
from tests.key_helpers import jwks_of, lifecycle_on, server_processes
from tests.processes import clean_env
from tests.test_cli import tessera

# A next key may sign 2 s after it is published (max-age 1 s + reload 0.5 s, rounded up).
QUICK = {"TESSERA_JWKS_MAX_AGE": "1", "TESSERA_KEY_RELOAD_INTERVAL": "0.5"}
ACTIVATABLE = (
    "SELECT published_at + make_interval(secs => publish_seconds) <= now() FROM signing_keys WHERE state = 'next'"
)


async def _token(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(f"{url}/token", data={"grant_type": "client_credentials"},
                            headers=basic("svc", SECRET)) as response:
        body = await response.json()
        assert response.status == 200, body
        return body["access_token"]


async def test_two_server_processes_agree_on_keys_and_follow_a_rotation_and_a_revocation(env, admin, db_conn, tmp_path):
    await admin.client("svc")
    async with server_processes(env, tmp_path, 2, **QUICK) as urls, aiohttp.ClientSession() as session:
        bodies = []
        for url in urls:
            async with session.get(f"{url}/.well-known/jwks.json") as response:
                bodies.append((await response.read(), response.headers["ETag"]))
        assert bodies[0] == bodies[1]  # byte for byte, same strong ETag

        cached, kids = await jwks_of(session, urls[0])  # what a resource server holds before the rotation
        before = [await _token(session, url) for url in urls]
        await eventually(lambda: db_conn.fetchval(ACTIVATABLE), timeout=10, what="next key published long enough")
        rotated = tessera({**env, **QUICK}, "keys", "rotate")
        assert rotated.returncode == 0, rotated.stderr

        async def everywhere(check) -> bool:
            return all([await check(url) for url in urls])

        async def rotated_at(url: str) -> bool:
            return (await jwks_of(session, url))[1][0] == kids[1]

        await eventually(lambda: everywhere(rotated_at), timeout=5, what="both instances signing with the next key")
        for url in urls:
            for _ in range(3):
                token = await _token(session, url)
                assert verify_with_joserfc(token, cached).header["kid"] == kids[1]  # the old cache verifies it
            fresh, _ = await jwks_of(session, url)
            for token in before:
                assert verify_with_joserfc(token, fresh).header["kid"] == kids[0]  # retired, still published

        revoked = tessera(env, "keys", "revoke", kids[0])
        assert revoked.returncode == 0, revoked.stderr

        async def gone_at(url: str) -> bool:
            return kids[0] not in (await jwks_of(session, url))[1]

        await eventually(lambda: everywhere(gone_at), timeout=5, what="revoked key gone from both instances")
        for url in urls:
            fresh, _ = await jwks_of(session, url)
            for token in before:
                with pytest.raises(InvalidKeyIdError):
                    verify_with_joserfc(token, fresh)


async def test_concurrent_rotate_commands_from_several_processes_make_exactly_one_rotation(env, clock, db_conn):
    settings = {"TESSERA_JWKS_MAX_AGE": "0", "TESSERA_KEY_RELOAD_INTERVAL": "0.05", "TESSERA_DB_STATEMENT_TIMEOUT": "60"}
    async with lifecycle_on(env, clock, **settings) as lifecycle:
        await lifecycle.prepare()
    await eventually(lambda: db_conn.fetchval(ACTIVATABLE), timeout=5, what="next key published long enough")
    # Hold the key lock so that every command is waiting at the same point, then let them race.
    await db_conn.execute("SELECT pg_advisory_lock($1)", KEYS_LOCK_ID)
    processes = [
        subprocess.Popen([sys.executable, "-m", "tessera.server.cli", "keys", "rotate"], env=clean_env({**env, **settings}),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    try:
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        await eventually(lambda: _at_least(db_conn, waiting, 6), timeout=30, what="six commands waiting")
        await db_conn.execute("SELECT pg_advisory_unlock($1)", KEYS_LOCK_ID)
        results = [(p.wait(timeout=30), *p.communicate()) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert sorted(code for code, _, _ in results) == [0, 1, 1, 1, 1, 1], results
    for code, _, stderr in results:
        assert code == 0 or "changed while this ran" in stderr, stderr
    states = [r["state"] for r in await db_conn.fetch("SELECT state FROM signing_keys")]
    assert sorted(states) == ["active", "next", "retired"]


async def _at_least(db_conn, query: str, count: int) -> bool:
    return await db_conn.fetchval(query) >= count
