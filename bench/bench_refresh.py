#!/usr/bin/env python3
"""Refresh-token rotation: how many per second, with durable commits, and what PostgreSQL allows.

In one run, on its own scratch database (an embedded PostgreSQL unless --database-url is given):

1. rotations per second and p50/p99 through the HTTP endpoint (``tessera serve`` in a subprocess,
   driven by wrk when it is installed, else by an aiohttp closed loop), C connections each walking
   rotation chains;
2. the same rotation (the server's own, ``FamilyStore.rotate``)
   driven directly with asyncpg at the same concurrency: the PostgreSQL limit for this work;
3. one client refreshing serially (latency without queueing), over HTTP and directly;

first with 10 thousand families in the table, then again after COPYing it up to 1 million.
Everything listens on 127.0.0.1; every process started is stopped; the whole run is bounded
(about two minutes with the defaults).

    .venv/bin/python bench/bench_refresh.py [--duration 8] [--connections 16] [--json out.json]
    .venv/bin/python bench/bench_refresh.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scratch import (  # noqa: E402
    CLIENT, PASSWORD, SECRET, create_client_and_user, direct_families, direct_loop, fill_families,
    prepare_schema, scratch_database, summary, table_facts,
)

from tessera.server.oauth.families import RefreshChain, RefreshToken  # noqa: E402

CHEAP_ARGON2 = {"TESSERA_ARGON2_TIME_COST": "1", "TESSERA_ARGON2_MEMORY_KIB": "1024"}


async def update_counts(dsn: str) -> tuple[int, int]:
    """(updates, HOT updates) of refresh_families so far."""
    connection = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(0.6)  # statistics reach the views shortly after commit
        row = await connection.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'refresh_families'"
        )
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await connection.close()


# --- the server under test ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def tessera_server(dsn: str, workdir: Path) -> AsyncIterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(
        TESSERA_DATABASE_URL=dsn,
        TESSERA_KEY_ENCRYPTION_KEY=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
        TESSERA_DATA_DIR=str(workdir / "data"),
        TESSERA_HOST="127.0.0.1",
        TESSERA_PORT=str(port),
        **CHEAP_ARGON2,
    )
    with open(workdir / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tessera.server.cli", "serve"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"tessera serve exited ({process.returncode}); see {workdir / 'serve.log'}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError("tessera serve did not become ready")
                await asyncio.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


AUTH = "Basic " + base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()


async def login(session: aiohttp.ClientSession, url: str, count: int) -> list[str]:
    form = {"grant_type": "password", "username": "bench-user", "password": PASSWORD}

    async def one() -> str:
        async with session.post(url + "/token", data=form, headers={"Authorization": AUTH}) as response:
            body = await response.json()
            assert response.status == 200, body
            return str(body["refresh_token"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


# --- load -----------------------------------------------------------------------------------------


async def http_closed_loop(url: str, tokens: list[str], duration: float) -> dict[str, Any]:
    """Each worker walks its own chain: refresh, take the new token, refresh again."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=len(tokens))

    async def worker(token: str, session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            data = {"grant_type": "refresh_token", "refresh_token": token}
            async with session.post(url + "/token", data=data, headers={"Authorization": AUTH}) as response:
                body = await response.json()
            if response.status != 200:
                failures += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)
            token = body["refresh_token"]

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(t, session) for t in tokens))
        elapsed = time.perf_counter() - started
    result = summary(len(latencies), elapsed, latencies, failures)
    result["driver"] = "aiohttp"
    return result


def http_wrk(url: str, tokens: list[str], duration: float, workdir: Path) -> dict[str, Any]:
    """wrk asks its script for a connection's next request before it hands over the previous answer,
    so each connection needs a spare token in the queue: ``tokens`` holds two per connection."""
    tokens_file = workdir / "tokens.txt"
    tokens_file.write_text("\n".join(tokens) + "\n")
    command = ["wrk", "-t1", f"-c{len(tokens) // 2}", f"-d{max(1, int(duration))}s", "--latency",
               "-s", str(ROOT / "bench" / "wrk" / "refresh_chain.lua"), url]
    env = {**os.environ, "TOKENS_FILE": str(tokens_file), "WRK_THREADS": "1", "AUTH": AUTH}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    if done.stderr.strip():
        print(done.stderr.strip(), file=sys.stderr)
    line = next(line for line in done.stdout.splitlines() if line.startswith("WRKJSON "))
    report = json.loads(line[len("WRKJSON "):])
    failures = report["socket_errors"] + report["bad"]  # "bad" counts every answer that was not a 200
    return {
        "rotations_per_s": round((report["requests"] - failures) / report["duration_s"], 1),
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "rotations": report["requests"] - failures,
        "failures": failures,
        "driver": "wrk",
        "command": " ".join(command),
    }


async def measure(
    url: str, dsn: str, chain: RefreshChain, direct: list[RefreshToken], args: argparse.Namespace, workdir: Path,
    families: int,
) -> list[dict[str, Any]]:
    rows = []
    use_wrk = args.driver == "wrk" or (args.driver == "auto" and shutil.which("wrk"))
    async with aiohttp.ClientSession() as session:
        tokens = await login(session, url, 2 * args.connections + 1)
    serial_token, tokens = tokens[0], tokens[1:]
    if use_wrk:
        http = await asyncio.get_running_loop().run_in_executor(None, http_wrk, url, tokens, args.duration, workdir)
    else:
        http = await http_closed_loop(url, tokens[: args.connections], args.duration)
    rows.append({"families": families, "path": "HTTP POST /token", "concurrency": args.connections, **http})
    pg = await direct_loop(dsn, chain, direct, args.duration)
    rows.append({"families": families, "path": "PostgreSQL UPDATE (asyncpg)", "concurrency": args.connections, **pg})
    serial = await http_closed_loop(url, [serial_token], args.serial_duration)
    rows.append({"families": families, "path": "HTTP POST /token", "concurrency": 1, **serial})
    one = direct[:1]
    pg = await direct_loop(dsn, chain, one, args.serial_duration)
    direct[0] = one[0]
    rows.append({"families": families, "path": "PostgreSQL UPDATE (asyncpg)", "concurrency": 1, **pg})
    return rows


# --- main -----------------------------------------------------------------------------------------


async def run(dsn: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    await prepare_schema(dsn, args.unique_hash_index)
    await create_client_and_user(dsn)
    chain = RefreshChain(secrets.token_bytes(32))
    direct = await direct_families(dsn, chain, args.connections)
    await fill_families(dsn, args.small)
    facts = {"small": await table_facts(dsn)}
    rows: list[dict[str, Any]] = []
    updates_before = await update_counts(dsn)
    async with tessera_server(dsn, workdir) as url:
        async with aiohttp.ClientSession() as session:  # warm up: connections, code paths, caches
            await http_closed_loop(url, await login(session, url, args.connections), 2.0)
        rows += await measure(url, dsn, chain, direct, args, workdir, args.small)
        started = time.perf_counter()
        await fill_families(dsn, args.large)
        fill_seconds = time.perf_counter() - started
        facts["large"] = await table_facts(dsn)
        rows += await measure(url, dsn, chain, direct, args, workdir, args.large)
    updates, hot = (a - b for a, b in zip(await update_counts(dsn), updates_before))
    return {
        "rows": rows,
        "database": facts,
        "fill_seconds": round(fill_seconds, 1),
        "updates": updates,
        "hot_updates": hot,
        "unique_hash_index": args.unique_hash_index,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def print_table(result: dict[str, Any]) -> None:
    small, large = result["database"]["small"], result["database"]["large"]
    print(f"Refresh-token rotation on PostgreSQL {small['version']} (fsync={small['fsync']}, "
          f"synchronous_commit={small['synchronous_commit']}), {result['cpus']} CPUs, Python {result['python']}"
          + (", with a UNIQUE index on current_hash" if result["unique_hash_index"] else ""))
    print(f"{'families':>10}  {'path':<28} {'conc':>4} {'rotations/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}"
          f" {'WAL B/rot':>9}")
    for row in result["rows"]:
        wal = row.get("wal_bytes_per_rotation")
        print(f"{row['families']:>10,}  {row['path']:<28} {row['concurrency']:>4} {row['rotations_per_s']:>12,.0f}"
              f" {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['failures']:>6} {wal if wal is not None else '':>9}")
    by_key = {(r["families"], r["path"], r["concurrency"]): r for r in result["rows"]}
    for concurrency in sorted({r["concurrency"] for r in result["rows"]}, reverse=True):
        for families in (small["families"], large["families"]):
            http = by_key.get((families, "HTTP POST /token", concurrency))
            direct = by_key.get((families, "PostgreSQL UPDATE (asyncpg)", concurrency))
            if http and direct and direct["rotations_per_s"]:
                print(f"HTTP / PostgreSQL limit at {families:,} families, {concurrency} connections: "
                      f"{http['rotations_per_s'] / direct['rotations_per_s']:.2f}")
    print(f"table: {small['families']:,} families {small['bytes'] / 2**20:.1f} MiB -> {large['families']:,} families "
          f"{large['bytes'] / 2**20:.1f} MiB (COPY took {result['fill_seconds']} s)")
    if result["updates"]:
        print(f"HOT updates: {result['hot_updates']:,} of {result['updates']:,} rotations "
              f"({100 * result['hot_updates'] / result['updates']:.0f}%)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="a PostgreSQL server to make a scratch database on (default: embedded)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per concurrent run")
    parser.add_argument("--serial-duration", type=float, default=4.0, help="seconds per serial run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--small", type=int, default=10_000, help="families in the table for the first pass")
    parser.add_argument("--large", type=int, default=1_000_000, help="families in the table for the second pass")
    parser.add_argument("--driver", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--unique-hash-index", action="store_true",
                        help="add a UNIQUE index on current_hash (to measure what it costs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        with scratch_database(args.database_url, workdir) as dsn:
            result = asyncio.run(run(dsn, args, workdir))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
