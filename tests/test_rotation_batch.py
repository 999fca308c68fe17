"""Group commit of refresh rotations: batched rows keep the single statement's guarantees."""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tessera.server.store import db
from tessera.server.store.families import FamilyStore
from tessera.server.store.rotation_batch import rotation_batcher
from tests.helpers import only_the_locked_row_waits
from tests.test_garbage_collection import LIVE, _families, owner  # noqa: F401  (the fixture)

NOW = datetime.now(UTC)
IDLE = NOW + timedelta(hours=2)


class CountingPool:
    """The real pool, counting the statements the batcher sends through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.statements = pool, 0

    async def fetch(self, *args):
        self.statements += 1
        return await self.pool.fetch(*args)

    async def fetchrow(self, *args):
        self.statements += 1
        return await self.pool.fetchrow(*args)

    def acquire(self):  # the batcher sends each statement on a connection it acquires (its clock)
        self.statements += 1
        return self.pool.acquire()


@pytest.fixture
async def pool(clean_database):
    pool = await db.create_pool(clean_database, size=4, statement_timeout=10)
    yield pool
    await pool.close()


async def _hashes(db_conn, ids):
    rows = await db_conn.fetch("SELECT family_id, generation, current_hash FROM refresh_families")
    return {row["family_id"]: (row["generation"], bytes(row["current_hash"])) for row in rows if row["family_id"] in ids}


async def _rotate(store: FamilyStore, family_id, generation, current_hash, successor, **ask):
    return await store.rotate(
        family_id=family_id, generation=generation, current_hash=current_hash, client_id=ask.get("client_id", "app"),
        successor_hash=successor, now=NOW, idle_expires_at=IDLE, scopes=ask.get("scopes"),
        audience=ask.get("audience"),
    )


async def test_concurrent_rotations_of_many_families_share_a_few_statements(owner, db_conn, pool):
    ids = await _families(db_conn, owner, [LIVE] * 50)
    before = await _hashes(db_conn, set(ids))
    store = FamilyStore(pool)
    counting = CountingPool(pool)
    store._rotations = rotation_batcher(counting)
    successors = {family_id: uuid.uuid4().bytes * 2 for family_id in ids}
    results = await asyncio.gather(*(
        _rotate(store, family_id, 0, before[family_id][1], successors[family_id]) for family_id in ids
    ))
    assert all(result is not None and result.generation == 1 for result in results)
    assert [result.family_id for result in results] == ids
    assert await _hashes(db_conn, set(ids)) == {family_id: (1, successors[family_id]) for family_id in ids}
    # Fifty rotations started in one turn of the loop: far fewer statements than rotations.
    assert counting.statements <= 2


async def test_each_row_of_a_batch_is_judged_on_its_own(owner, db_conn, pool):
    good, stale, other_client, revoked, wide, narrow = await _families(db_conn, owner, [LIVE] * 6)
    await db_conn.execute("UPDATE refresh_families SET revoked_at = now(), revoked_reason = 'test' WHERE family_id = $1", revoked)
    hashes = await _hashes(db_conn, {good, stale, other_client, revoked, wide, narrow})
    store = FamilyStore(pool)
    new = uuid.uuid4().bytes * 2
    results = await asyncio.gather(
        _rotate(store, good, 0, hashes[good][1], new),
        _rotate(store, stale, 0, b"\x00" * 32, new),  # not the current token
        _rotate(store, other_client, 0, hashes[other_client][1], new, client_id="someone-else"),
        _rotate(store, revoked, 0, hashes[revoked][1], new),
        _rotate(store, wide, 0, hashes[wide][1], new, scopes=["read", "admin"]),  # wider than granted
        _rotate(store, narrow, 0, hashes[narrow][1], new, scopes=["read"], audience="https://orders.example"),
    )
    assert [result is not None for result in results] == [True, False, False, False, False, True]
    after = await _hashes(db_conn, {good, stale, other_client, revoked, wide, narrow})
    assert {family_id for family_id, (generation, _) in after.items() if generation == 1} == {good, narrow}


async def test_the_same_token_presented_many_times_at_once_rotates_exactly_once(owner, db_conn, pool):
    (family_id,) = await _families(db_conn, owner, [LIVE])
    current = (await _hashes(db_conn, {family_id}))[family_id][1]
    stores = [FamilyStore(pool), FamilyStore(pool)]  # two batchers, as two instances would have
    successors = [uuid.uuid4().bytes * 2 for _ in range(20)]
    results = await asyncio.gather(*(
        _rotate(stores[i % 2], family_id, 0, current, successor) for i, successor in enumerate(successors)
    ))
    winners = [successor for successor, result in zip(successors, results) if result is not None]
    assert len(winners) == 1
    assert await _hashes(db_conn, {family_id}) == {family_id: (1, winners[0])}


async def test_a_family_locked_elsewhere_holds_up_only_its_own_rotation(owner, db_conn, pool):
    ids = await _families(db_conn, owner, [LIVE] * 10)
    hashes = await _hashes(db_conn, set(ids))
    locked = ids[3]
    store = FamilyStore(pool)
    # Another transaction is revoking (or rotating) one family and has not committed yet.
    await only_the_locked_row_waits(
        pool, "SELECT 1 FROM refresh_families WHERE family_id = $1 FOR UPDATE", locked,
        {family_id: functools.partial(_rotate, store, family_id, 0, hashes[family_id][1], family_id.bytes * 2)
         for family_id in ids},
    )
    assert await _hashes(db_conn, set(ids)) == {family_id: (1, family_id.bytes * 2) for family_id in ids}


async def test_a_lock_cycle_between_a_batch_and_another_transaction_is_broken_by_the_batch(owner, db_conn, pool):
    first, second = await _families(db_conn, owner, [LIVE, LIVE])
    hashes = await _hashes(db_conn, {first, second})
    store = FamilyStore(pool)
    async with pool.acquire() as blocker:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM refresh_families WHERE family_id = $1 FOR UPDATE", second)
        # The batch locks ``first``, then waits for ``second``...
        batch = asyncio.gather(
            _rotate(store, first, 0, hashes[first][1], b"1" * 32), _rotate(store, second, 0, hashes[second][1], b"2" * 32)
        )
        await asyncio.sleep(0.02)
        # ...while the other transaction wants ``first``: a deadlock. The batch's lock timeout
        # (100 ms, well before PostgreSQL's 1 s deadlock check) ends it: the batch lets go and the
        # other transaction gets its lock, with no error on its side.
        await asyncio.wait_for(
            blocker.execute("SELECT 1 FROM refresh_families WHERE family_id = $1 FOR UPDATE", first), 0.9
        )
        await transaction.rollback()
        results = await asyncio.wait_for(batch, 10)
    assert all(result is not None for result in results)
    assert await _hashes(db_conn, {first, second}) == {first: (1, b"1" * 32), second: (1, b"2" * 32)}


async def test_a_cancelled_request_that_has_not_been_sent_rotates_nothing(owner, db_conn, pool):
    (family_id,) = await _families(db_conn, owner, [LIVE])
    current = (await _hashes(db_conn, {family_id}))[family_id][1]
    store = FamilyStore(pool)
    waiting = asyncio.ensure_future(_rotate(store, family_id, 0, current, b"x" * 32))
    await asyncio.sleep(0)  # queued, not yet sent
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.2)
    assert await _hashes(db_conn, {family_id}) == {family_id: (0, current)}


async def test_a_refused_rotation_is_explained_by_the_same_rule_that_refused_it(owner, db_conn, pool):
    """One rule (migration 0009) rotates and explains: for every kind of family and request, ``get``
    says live and fitting exactly when the rotation, alone or in a batch, matches."""
    states = [
        LIVE,
        dict(LIVE, revoked_at=NOW - timedelta(minutes=1)),
        dict(LIVE, idle_expires_at=NOW - timedelta(seconds=1)),
        dict(LIVE, expires_at=NOW),  # the absolute lifetime ends at this very instant
    ]
    asks = [{}, {"scopes": ["read"]}, {"scopes": ["read", "admin"]}, {"audience": "https://orders.example"},
            {"audience": "https://billing.example"}]
    cases = [(state, ask) for state in states for ask in asks]
    ids = await _families(db_conn, owner, [state for state, _ in cases])
    hashes = await _hashes(db_conn, set(ids))
    store = FamilyStore(pool)
    verdicts = []
    for family_id, (_, ask) in zip(ids, cases):
        family = await store.get(family_id, NOW, scopes=ask.get("scopes"), audience=ask.get("audience"))
        assert family is not None
        verdicts.append(family.live and family.scope_fits and family.audience_fits)
    alone = FamilyStore(db_conn)  # on one connection: each rotation by itself, not batched
    half = len(ids) // 2
    rotated = [
        *[await _rotate(alone, family_id, 0, hashes[family_id][1], uuid.uuid4().bytes * 2, **ask)
          for family_id, (_, ask) in zip(ids[:half], cases[:half])],
        *await asyncio.gather(*(
            _rotate(store, family_id, 0, hashes[family_id][1], uuid.uuid4().bytes * 2, **ask)
            for family_id, (_, ask) in zip(ids[half:], cases[half:])
        )),
    ]
    assert [result is not None for result in rotated] == verdicts
    assert verdicts.count(True) == 3  # the live family, asked nothing, a narrower scope, its own audience
