#!/usr/bin/env python3
"""Garbage collection of refresh-token families: how fast dead families go, how long each of the
collector's statements runs, what happens to the table's size, and what a pass does to rotations.

In one run, on its own scratch database (an embedded PostgreSQL unless --database-url is given):

1. COPY N families (not through the API), a fraction of them dead for two days (revoked, past
   their absolute end, or idle; in turn), spread evenly over the heap; VACUUM ANALYZE; clone the
   database at file level for step 3;
2. one pass of the collector alone: ``tessera.server.tasks.janitor.collect_garbage``, the function the janitor
   and ``tessera gc`` run, unchanged, with the pause of ``tessera gc`` (none). Every statement it
   sends is timed. Then VACUUM (what autovacuum would do next; autovacuum is off on the table so
   that it does not run in the middle of a measurement), and as many new families INSERTed as were
   deleted, to see whether the table grows or reuses the space;
3. on the clone: the server's rotation (``FamilyStore.rotate``) in a small closed loop, first alone,
   then while one pass runs with the janitor's pause (10 ms between statements).

Each pass starts right after a CHECKPOINT, so the first change to every page writes the whole page
to the WAL, as it does for a janitor that runs once per checkpoint interval (5 min each).
Nothing listens on TCP (the embedded server uses a Unix socket); every process and database started
is stopped and dropped at the end; about 1-2 minutes with the defaults (10 million families with
--no-refill: about 8 minutes, 7 of them the COPY). Figures: docs/performance.md.

    .venv/bin/python bench/bench_gc.py [--families 1000000] [--dead-fraction 0.5] [--json out.json]
    .venv/bin/python bench/bench_gc.py --families 10000000 --no-refill
    .venv/bin/python bench/bench_gc.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from scratch import (
    FamilyState, ScratchServer, create_client_and_user, direct_families, fill_families, live, prepare_schema,
    rotate_chains, scratch_server, server_settings, summary,
)

from tessera.server.tasks.janitor import FAMILY_RETENTION, JANITOR_PAUSE, collect_garbage
from tessera.server.oauth.families import RefreshChain, RefreshToken
from tessera.server.store.families import GC_PAGES_PER_STATEMENT

MIB = 2**20
DEAD_FOR = FAMILY_RETENTION + timedelta(days=1)  # dead for longer than the retention: collectable


def dead_spread(fraction: float) -> FamilyState:
    """Family n is dead when it takes the running count of dead ones, n * fraction, past a whole
    number: dead ones evenly spread, exactly ``fraction`` of them. The dead ones take turns at being
    revoked, past their absolute end and idle past their idle end."""

    def state(index: int, now: datetime) -> tuple[datetime, datetime, datetime | None, str | None]:
        expires, idle, revoked, reason = live(index, now)
        dead_so_far = int(index * fraction)
        if int((index + 1) * fraction) == dead_so_far:
            return expires, idle, revoked, reason
        ago = now - DEAD_FOR
        kind = dead_so_far % 3
        if kind == 0:
            return expires, idle, ago, "revoked_by_client"
        if kind == 1:
            return ago, idle, None, None
        return expires, ago, None, None

    return state


class TimedPool:
    """An asyncpg pool that times each ``fetchval`` (every statement of the family and security-event
    sweeps goes through it); everything else goes straight to the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.statements: list[tuple[str, float, float, Any]] = []  # (query, started, seconds, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        value = await self._pool.fetchval(query, *args, **kwargs)
        self.statements.append((query, started, time.perf_counter() - started, value))
        return value


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def sizes(connection: asyncpg.Connection, count: bool = False) -> dict[str, Any]:
    """The table's heap and index sizes (and its row count: it reads the whole heap, and sets the hint
    bits of rows just deleted, so not between a pass and its VACUUM)."""
    row = await connection.fetchrow(
        "SELECT pg_relation_size('refresh_families') AS heap_bytes,"
        " pg_relation_size('refresh_families') / current_setting('block_size')::bigint AS heap_pages,"
        " pg_indexes_size('refresh_families') AS index_bytes"
    )
    assert row is not None
    facts = dict(row)
    if count:
        facts["families"] = await connection.fetchval("SELECT count(*) FROM refresh_families")
    return facts


async def checkpoint(connection: asyncpg.Connection) -> bool:
    try:
        await connection.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


async def gc_pass(dsn: str, pause: float, heap_pages: int) -> dict[str, Any]:
    """One ``collect_garbage`` pass, as of now, every statement timed."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        timed = TimedPool(pool)
        wal_before = await pool.fetchval("SELECT pg_current_wal_lsn()")
        started, wall_clock = time.perf_counter(), time.time()
        collected = await collect_garbage(timed, datetime.now(UTC), pause=pause)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        wal = float(await pool.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before))
    finally:
        await pool.close()
    sweeps = [(at - started, 1000 * s) for query, at, s, _ in timed.statements if "DELETE FROM refresh_families" in query]
    slowest = sorted(sweeps, key=lambda sweep: sweep[1])[-3:]
    latencies = sorted(ms for _, ms in sweeps)
    deleted = collected.families
    return {
        "wall_clock": [round(wall_clock, 1), round(wall_clock + seconds, 1)],  # to match with other load
        "pause_s": pause,
        "families_deleted": deleted,
        "security_events_deleted": collected.security_events,
        "seconds": round(seconds, 3),
        "statement_seconds": round(sum(latencies) / 1000, 3),
        "families_per_s": round(deleted / seconds),
        "heap_pages": heap_pages,
        "pages_per_s": round(heap_pages / seconds),
        "heap_mib_per_s": round(heap_pages * 8192 / MIB / seconds, 1),
        "statements": len(latencies),
        "pages_per_statement": GC_PAGES_PER_STATEMENT,
        "statement_p50_ms": round(percentile(latencies, 0.50), 2),
        "statement_p99_ms": round(percentile(latencies, 0.99), 2),
        "statement_max_ms": round(latencies[-1], 2),
        "slowest_statements": [{"at_s": round(at, 2), "ms": round(ms, 1)} for at, ms in reversed(slowest)],
        "wal_bytes": round(wal),
        "wal_bytes_per_family": round(wal / max(1, deleted)),
    }


async def populate(dsn: str, args: argparse.Namespace, chain: RefreshChain) -> tuple[list[RefreshToken], float]:
    await prepare_schema(dsn)
    await create_client_and_user(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("ALTER TABLE refresh_families SET (autovacuum_enabled = false)")
    finally:
        await connection.close()
    # The rotating families first: live, at the start of the heap, swept by the first statement.
    tokens = await direct_families(dsn, chain, max(1, args.rotation_connections))
    started = time.perf_counter()
    await fill_families(dsn, args.families, dead_spread(args.dead_fraction))
    return tokens, time.perf_counter() - started


async def alone(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    """Step 2: a pass on its own, VACUUM, and new families into the space freed."""
    connection = await asyncpg.connect(dsn)
    try:
        before = await sizes(connection, count=True)
        checkpointed = await checkpoint(connection)
        result = await gc_pass(dsn, 0.0, before["heap_pages"])
        after_gc = await sizes(connection)
        started = time.perf_counter()
        await connection.execute("VACUUM refresh_families")
        vacuum_seconds = time.perf_counter() - started
        after_vacuum = await sizes(connection)
        deleted = result["families_deleted"]
        refill = deleted if args.refill else 0
        started = time.perf_counter()
        # New logins, as the server INSERTs them (one row each; the free space map picks the page).
        await connection.execute(
            "INSERT INTO refresh_families (family_id, client_id, user_id, scopes, audience, auth_time, created_at,"
            " expires_at, generation, current_hash, last_rotated_at, idle_expires_at)"
            " SELECT gen_random_uuid(), client_id, user_id, scopes, audience, now(), now(), now() + interval '30 days',"
            " 0, sha256(int8send(g)), now(), now() + interval '14 days'"
            " FROM generate_series(1, $1) AS g,"
            " (SELECT client_id, user_id, scopes, audience FROM refresh_families LIMIT 1) AS model",
            refill,
        )
        refill_seconds = time.perf_counter() - started
        after_refill = await sizes(connection, count=True)
    finally:
        await connection.close()
    filler = args.families - max(1, args.rotation_connections)
    if deleted != int(filler * args.dead_fraction) or after_refill["families"] != before["families"] - deleted + refill:
        raise RuntimeError(f"deleted {deleted} of {before['families']} families ({after_refill['families']} after"
                           f" the refill); {int(filler * args.dead_fraction)} were dead")
    return {
        **result,
        "checkpoint_before": checkpointed,
        "before": before,
        "after_gc": after_gc,
        "vacuum_seconds": round(vacuum_seconds, 2),
        "after_vacuum": after_vacuum,
        "refill_families": refill,
        "refill_seconds": round(refill_seconds, 2),
        "after_refill": after_refill,
    }


async def with_rotations(dsn: str, args: argparse.Namespace, chain: RefreshChain,
                         tokens: list[RefreshToken]) -> dict[str, Any]:
    """Step 3: rotations alone, then rotations while a pass runs with the janitor's pause."""
    connection = await asyncpg.connect(dsn)
    try:
        before = await sizes(connection)
        checkpointed = await checkpoint(connection)
    finally:
        await connection.close()
    tokens = tokens[: args.rotation_connections]
    pool = await asyncpg.create_pool(dsn, min_size=len(tokens), max_size=len(tokens))
    try:
        deadline = time.perf_counter() + args.rotation_seconds
        started, wall_clock = time.perf_counter(), time.time()
        latencies, failures = await rotate_chains(pool, chain, tokens, lambda: time.perf_counter() >= deadline)
        baseline = summary(len(latencies), time.perf_counter() - started, latencies, failures)
        baseline["wall_clock"] = [round(wall_clock, 1), round(wall_clock + args.rotation_seconds, 1)]
        baseline["max_ms"] = round(latencies[-1], 3) if latencies else None

        # The chains start at the pass's first wait (for its pool) and stop at its end.
        finished = False
        started = time.perf_counter()
        rotating = asyncio.create_task(rotate_chains(pool, chain, tokens, lambda: finished))
        try:
            gc = await gc_pass(dsn, args.janitor_pause, before["heap_pages"])
        finally:
            finished = True
            latencies, failures = await rotating
        during = summary(len(latencies), time.perf_counter() - started, latencies, failures)
        during["max_ms"] = round(latencies[-1], 3) if latencies else None
    finally:
        await pool.close()
    return {**gc, "checkpoint_before": checkpointed, "connections": len(tokens),
            "rotations_alone": baseline, "rotations_during_gc": during}


async def settings(dsn: str) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        return await server_settings(connection)
    finally:
        await connection.close()


async def run(server: ScratchServer, args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    chain = RefreshChain(secrets.token_bytes(32))
    first = await server.database()
    tokens, fill_seconds = await populate(first, args, chain)
    clone_seconds = None
    clone = None
    if args.rotation_connections > 0:
        started = time.perf_counter()
        clone = await server.database(template=first)
        clone_seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "families": args.families,
        "dead_fraction": args.dead_fraction,
        "fill_seconds": round(fill_seconds, 1),
        "clone_seconds": round(clone_seconds, 1) if clone_seconds is not None else None,
        "database": await settings(first),
        "alone": await alone(first, args),
    }
    if clone is not None:
        result["with_rotations"] = await with_rotations(clone, args, chain, tokens)
    result.update(
        cpus=os.cpu_count(), python=platform.python_version(),
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
    )
    return result


def print_table(result: dict[str, Any]) -> None:
    db = result["database"]
    a = result["alone"]
    before = a["before"]
    print(f"Garbage collection on PostgreSQL {db['version']} (fsync={db['fsync']}, synchronous_commit="
          f"{db['synchronous_commit']}, shared_buffers={db['shared_buffers']}), {result['cpus']} CPUs, "
          f"Python {result['python']}; load average {result['load_average_before'][0]} before, "
          f"{result['load_average_after'][0]} after")
    print(f"table: {before['families']:,} families, {100 * result['dead_fraction']:g}% dead (spread evenly), "
          f"heap {before['heap_bytes'] / MIB:,.0f} MiB ({before['heap_pages']:,} pages), indexes "
          f"{before['index_bytes'] / MIB:,.0f} MiB; COPY took {result['fill_seconds']} s")
    print(f"{'pass':<34} {'deleted':>10} {'seconds':>8} {'rows/s':>9} {'pages/s':>8} {'MiB/s':>6} {'stmts':>5}"
          f" {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'WAL B/row':>9}")
    passes = [("alone, no pause (tessera gc)", a)]
    if "with_rotations" in result:
        w = result["with_rotations"]
        passes.append((f"{w['connections']} rotating, {1000 * w['pause_s']:.0f} ms pause (janitor)", w))
    for name, p in passes:
        print(f"{name:<34} {p['families_deleted']:>10,} {p['seconds']:>8.2f} {p['families_per_s']:>9,}"
              f" {p['pages_per_s']:>8,} {p['heap_mib_per_s']:>6,.0f} {p['statements']:>5} {p['statement_p50_ms']:>7.1f}"
              f" {p['statement_p99_ms']:>7.1f} {p['statement_max_ms']:>7.1f} {p['wal_bytes_per_family']:>9,}")
    print(f"(each statement sweeps {a['pages_per_statement']:,} heap pages; each pass started after a CHECKPOINT: "
          f"{a['checkpoint_before']})")
    slowest = (", ".join(f"{s['ms']:,.0f} ms at {s['at_s']} s" for s in p["slowest_statements"]) for _, p in passes)
    print("slowest statements: " + "; ".join(f"{name.split(',')[0]}: {s}" for (name, _), s in zip(passes, slowest)))
    after_gc, after_vacuum, after_refill = a["after_gc"], a["after_vacuum"], a["after_refill"]
    print(f"after the pass: heap {after_gc['heap_bytes'] / MIB:,.0f} MiB, indexes {after_gc['index_bytes'] / MIB:,.0f} MiB;"
          f" VACUUM {a['vacuum_seconds']} s: heap {after_vacuum['heap_bytes'] / MIB:,.0f} MiB, indexes "
          f"{after_vacuum['index_bytes'] / MIB:,.0f} MiB")
    if a["refill_families"]:
        print(f"then {a['refill_families']:,} new families INSERTed in {a['refill_seconds']} s: heap "
              f"{after_refill['heap_bytes'] / MIB:,.0f} MiB, indexes {after_refill['index_bytes'] / MIB:,.0f} MiB, "
              f"{after_refill['families']:,} families")
    if "with_rotations" in result:
        w = result["with_rotations"]
        for name, r in (("alone", w["rotations_alone"]), ("during the GC pass", w["rotations_during_gc"])):
            print(f"rotations ({w['connections']} connections, FamilyStore.rotate) {name:<18}: {r['rotations_per_s']:>7,.0f}/s"
                  f"  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.1f} ms  failed {r['failures']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="a PostgreSQL server to make scratch databases on (default: embedded)")
    parser.add_argument("--families", type=int, default=1_000_000, help="families in the table")
    parser.add_argument("--dead-fraction", type=float, default=0.5, help="of them dead past the retention")
    parser.add_argument("--rotation-connections", type=int, default=4,
                        help="rotating connections beside the janitor's pass (0: no such pass)")
    parser.add_argument("--rotation-seconds", type=float, default=4.0, help="rotations alone, for comparison")
    parser.add_argument("--janitor-pause", type=float, default=JANITOR_PAUSE,
                        help="seconds between the janitor's statements in step 3 (default: the janitor's)")
    parser.add_argument("--no-refill", dest="refill", action="store_false",
                        help="do not INSERT new families after the VACUUM (minutes at 10 million)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not 0 <= args.dead_fraction <= 1:
        parser.error("--dead-fraction: from 0 to 1")
    with tempfile.TemporaryDirectory(prefix="tessera-bench-gc-", ignore_cleanup_errors=True) as tmp:
        with scratch_server(args.database_url, Path(tmp)) as server:
            result = asyncio.run(run(server, args))
    result["command"] = " ".join([".venv/bin/python", "bench/bench_gc.py", *sys.argv[1:]])
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
