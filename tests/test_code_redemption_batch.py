"""Group commit of authorization-code redemptions (server/store/batching.py, migration 0015): codes
redeemed at the same moment share one statement and one commit, and every row keeps the single
statement's guarantees: each code is judged on its own, spent at most once across instances, its
family made with it or not at all, and a late request spends nothing.

The store is driven directly on real PostgreSQL (a server's own pool, with its clocks and deadlines);
the last test redeems one code at two real server processes at once."""

from __future__ import annotations

import asyncio
import functools
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import pytest

from tessera.server.store import db
from tessera.server.store.batching import StatementBatcher
from tessera.server.store.db import REQUEST_GIVES_UP
from tessera.server.store.sign_in import NewFamily, SignInStore, _Redemptions
from tests.helpers import PASSWORD, SECRET, basic, only_the_locked_row_waits
from tests.processes import Processes
from tests.sign_in_helpers import REDIRECT_URI, Browser, authorization_parameters, pkce_pair
from tests.test_private_key_jwt import _two_instances
from tests.test_rotation_batch import CountingPool

NOW = datetime.now(UTC)
LATER = NOW + timedelta(minutes=1)
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
CLIENT = "webapp"


@pytest.fixture
async def pool(clean_database):
    pool = await db.create_pool(clean_database, size=4, statement_timeout=10)
    yield pool
    await pool.close()


@pytest.fixture
async def signed_in(admin, db_conn):
    """A user signed in at the login page (a live sign-in session) and a client that gets codes."""
    await admin.client(CLIENT, grant_types=("authorization_code", "refresh_token"), scopes=("openid", "read"),
                       redirect_uris=(REDIRECT_URI,), first_party=True)
    await admin.client("other", grant_types=("authorization_code",), scopes=("openid", "read"),
                       redirect_uris=(REDIRECT_URI,), first_party=True)
    user = await admin.user("alice", PASSWORD)
    session_id = uuid.uuid4()
    await db_conn.execute(
        "INSERT INTO login_sessions (session_id, cookie_hash, user_id, auth_time, expires_at) VALUES ($1, $2, $3, $4, $5)",
        session_id, secrets.token_bytes(32), user.user_id, NOW, NOW + timedelta(hours=1),
    )
    return SimpleNamespace(user_id=user.user_id, session_id=session_id)


async def _codes(store: SignInStore, signed_in: Any, count: int, *, client_id: str = CLIENT,
                 expires_at: datetime = LATER) -> list[bytes]:
    hashes = [secrets.token_bytes(32) for _ in range(count)]
    for code_hash in hashes:
        await store.create_code(
            code_hash=code_hash, client_id=client_id, user_id=signed_in.user_id, session_id=signed_in.session_id,
            redirect_uri=REDIRECT_URI, code_challenge=CHALLENGE, scopes=("openid", "read"),
            audience="https://orders.example", nonce="n-1", auth_time=NOW, expires_at=expires_at,
        )
    return hashes


def _family() -> NewFamily:
    return NewFamily(uuid.uuid4(), secrets.token_bytes(32), NOW + timedelta(days=1), NOW + timedelta(hours=2))


async def _redeem(store: SignInStore, code_hash: bytes, family: NewFamily | None, *, client_id: str = CLIENT,
                  challenge: str = CHALLENGE, redirect_uri: str | None = REDIRECT_URI, late: bool = False) -> Any:
    if late:  # the server answered this request 503 already
        REQUEST_GIVES_UP.set(SimpleNamespace(when=asyncio.get_running_loop().time() - 5))
    return await store.redeem_code(code_hash=code_hash, client_id=client_id, redirect_uri=redirect_uri,
                                   code_challenge=challenge, now=NOW, family=family)


async def _state(db_conn: asyncpg.Connection) -> tuple[dict[bytes, Any], set[uuid.UUID]]:
    codes = {bytes(r["code_hash"]): r["family_id"] for r in await db_conn.fetch(
        "SELECT code_hash, family_id FROM authorization_codes WHERE redeemed_at IS NOT NULL")}
    families = {r["family_id"] for r in await db_conn.fetch("SELECT family_id FROM refresh_families")}
    return codes, families


async def test_codes_redeemed_together_share_a_few_statements_and_each_starts_its_family(signed_in, db_conn, pool):
    store = SignInStore(pool)
    hashes = await _codes(store, signed_in, 40)
    counting = CountingPool(pool)
    store._redemptions = StatementBatcher(counting, _Redemptions())
    families = [_family() for _ in hashes]
    results = await asyncio.gather(*(_redeem(store, h, f) for h, f in zip(hashes, families)))
    assert all(r is not None and r.user_id == signed_in.user_id and r.nonce == "n-1" for r in results)
    codes, made = await _state(db_conn)
    assert codes == {h: f.family_id for h, f in zip(hashes, families)}
    assert made == {f.family_id for f in families}
    rows = await db_conn.fetch("SELECT family_id, login_session_id, generation, current_hash FROM refresh_families")
    assert {(r["family_id"], r["login_session_id"], r["generation"], bytes(r["current_hash"])) for r in rows} == {
        (f.family_id, signed_in.session_id, 0, f.current_hash) for f in families}
    # Forty redemptions started in one turn of the loop: far fewer statements than redemptions.
    assert counting.statements <= 2


async def test_each_code_of_a_batch_is_judged_on_its_own(signed_in, db_conn, pool):
    store = SignInStore(pool)
    good, no_refresh, wrong_verifier, other_client, wrong_uri = await _codes(store, signed_in, 5)
    unknown = secrets.token_bytes(32)  # no such code
    (expired,) = await _codes(store, signed_in, 1, expires_at=NOW - timedelta(seconds=1))
    families = {name: _family() for name in ("good", "wrong_verifier", "other_client", "wrong_uri", "unknown", "expired")}
    results = await asyncio.gather(
        _redeem(store, good, families["good"]),
        _redeem(store, no_refresh, None),  # a client without refresh tokens: no family
        _redeem(store, wrong_verifier, families["wrong_verifier"], challenge="x" * 43),
        _redeem(store, other_client, families["other_client"], client_id="other"),
        _redeem(store, wrong_uri, families["wrong_uri"], redirect_uri=REDIRECT_URI + "/"),
        _redeem(store, unknown, families["unknown"]),
        _redeem(store, expired, families["expired"]),
    )
    assert [r is not None for r in results] == [True, True, False, False, False, False, False]
    codes, made = await _state(db_conn)
    assert codes == {good: families["good"].family_id, no_refresh: None}
    assert made == {families["good"].family_id}


async def test_one_code_redeemed_many_times_at_once_at_two_instances_is_spent_exactly_once(signed_in, db_conn, clean_database):
    pools = [await db.create_pool(clean_database, size=4, statement_timeout=10) for _ in range(2)]
    try:
        stores = [SignInStore(p) for p in pools]  # two batchers on two pools, as two instances have
        (code_hash,) = await _codes(stores[0], signed_in, 1)
        families = [_family() for _ in range(20)]
        results = await asyncio.gather(*(_redeem(stores[i % 2], code_hash, f) for i, f in enumerate(families)))
        winners = [f for f, r in zip(families, results) if r is not None]
        assert len(winners) == 1
        codes, made = await _state(db_conn)
        assert codes == {code_hash: winners[0].family_id} and made == {winners[0].family_id}
    finally:
        for p in pools:
            await p.close()


async def test_a_code_locked_elsewhere_holds_up_only_its_own_redemption(signed_in, db_conn, pool):
    store = SignInStore(pool)
    hashes = await _codes(store, signed_in, 8)
    locked = hashes[3]
    families = {h: _family() for h in hashes}
    await only_the_locked_row_waits(
        pool, "SELECT 1 FROM authorization_codes WHERE code_hash = $1 FOR UPDATE", locked,
        {h: functools.partial(_redeem, store, h, families[h]) for h in hashes},
    )
    codes, made = await _state(db_conn)
    assert codes == {h: f.family_id for h, f in families.items()} and made == {f.family_id for f in families.values()}


async def test_a_late_redemption_spends_nothing_and_holds_up_no_other(signed_in, db_conn, pool):
    store = SignInStore(pool)
    hashes = await _codes(store, signed_in, 5)
    families = [_family() for _ in hashes]
    results = await asyncio.gather(
        *(_redeem(store, h, f, late=(n == 2)) for n, (h, f) in enumerate(zip(hashes, families))),
        return_exceptions=True,
    )
    assert isinstance(results[2], asyncpg.QueryCanceledError)
    assert all(r is not None and not isinstance(r, BaseException) for n, r in enumerate(results) if n != 2)
    codes, made = await _state(db_conn)
    assert hashes[2] not in codes and families[2].family_id not in made
    assert set(codes) == set(hashes) - {hashes[2]} and len(made) == 4


async def test_a_single_connection_redeems_without_batching(signed_in, db_conn):
    store = SignInStore(db_conn)
    (code_hash,) = await _codes(store, signed_in, 1)
    family = _family()
    assert await _redeem(store, code_hash, family) is not None
    assert await _redeem(store, code_hash, _family()) is None  # spent
    assert await _state(db_conn) == ({code_hash: family.family_id}, {family.family_id})


# --- two real instances ---------------------------------------------------------------------------


async def test_one_code_sent_to_two_instances_at_once_gets_exactly_one_token_response(env, admin, processes: Processes):
    await admin.client(CLIENT, grant_types=("authorization_code", "refresh_token"), scopes=("openid", "read"),
                       redirect_uris=(REDIRECT_URI,), first_party=True)
    await admin.user("alice")
    bases = await _two_instances(processes, env)
    async with aiohttp.ClientSession() as session:
        browser = Browser(bases[0], session)
        verifier, challenge = pkce_pair()
        answer = await browser.authorize(**authorization_parameters(CLIENT, challenge))
        answer = await browser.submit(answer, username="alice", password=PASSWORD)
        assert answer.status == 303, answer.text[:300]
        code = answer.query()["code"]

        async def redeem(base: str) -> tuple[int, dict[str, Any]]:
            form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                    "redirect_uri": REDIRECT_URI}
            async with session.post(f"{base}/token", data=form, headers=basic(CLIENT, SECRET)) as response:
                return response.status, await response.json(content_type=None)

        answers = await asyncio.gather(*(redeem(bases[n % 2]) for n in range(12)))
        assert sorted(status for status, _ in answers) == [200] + [400] * 11, answers
        assert all(body["error"] == "invalid_grant" for status, body in answers if status == 400)
        (tokens,) = [body for status, body in answers if status == 200]
        # The copies presented besides the one that won are replays: the family it started is revoked.
        async with session.post(f"{bases[1]}/token", data={"grant_type": "refresh_token",
                                                           "refresh_token": tokens["refresh_token"]},
                                headers=basic(CLIENT, SECRET)) as response:
            assert response.status == 400 and (await response.json())["error"] == "invalid_grant"
