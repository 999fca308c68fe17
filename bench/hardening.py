"""Hardening figures: what throttling costs the hot path, and client_credentials under a password flood.

    .venv/bin/python bench/hardening.py                    # embedded PostgreSQL in a temporary directory
    TESSERA_DATABASE_URL=postgresql://... .venv/bin/python bench/hardening.py

Starts `tessera serve` as an operator would (default argon2 parameters), registers two clients
and a user through the CLI, then measures from this process over 127.0.0.1:

1. the client lookup alone and with its throttle counter joined in (the query a cached client
   authentication makes), straight against PostgreSQL (with TESSERA_DATABASE_URL only);
2. client_credentials throughput and latency with a cached secret;
3. the same while an open-loop flood of wrong passwords runs, and, during the flood, a
   first-time client (whose secret goes through argon2) and a user logging in.

The load generator shares the machine with the server, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's packages importable

from tests.processes import tessera_serve  # noqa: E402
SECRET = "bench-secret-bench-secret"


def _tessera(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "tessera.server.cli", *args], env=env, input=stdin,
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"tessera {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _basic(client_id: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{SECRET}".encode()).decode()}


def _percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms"


async def _query_cost(dsn: str, rounds: int) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        plain = "SELECT client_id, secret_hash FROM clients WHERE client_id = $1"
        joined = (
            "SELECT c.client_id, c.secret_hash, f.failures FROM (SELECT 1) AS one"
            " LEFT JOIN clients c ON c.client_id = $1 LEFT JOIN login_failures f ON f.counter = $2"
        )
        key = secrets.token_bytes(32)
        for label, sql, args in (("client lookup", plain, ("svc",)), ("client lookup + throttle counter", joined, ("svc", key))):
            for _ in range(200):
                await connection.fetchrow(sql, *args)
            started = time.perf_counter()
            for _ in range(rounds):
                await connection.fetchrow(sql, *args)
            print(f"  {label:36s} {(time.perf_counter() - started) / rounds * 1e6:7.1f} µs per query")
    finally:
        await connection.close()


async def _client_credentials(session: aiohttp.ClientSession, client_id: str) -> tuple[int, float]:
    started = time.perf_counter()
    async with session.post("/token", data={"grant_type": "client_credentials"}, headers=_basic(client_id)) as response:
        await response.read()
        return response.status, (time.perf_counter() - started) * 1000


async def _throughput(base: str, seconds: float, concurrency: int) -> None:
    latencies: list[float] = []
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await _client_credentials(session, "svc")
        stop = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop:
                status, elapsed = await _client_credentials(session, "svc")
                assert status == 200, status
                latencies.append(elapsed)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    print(f"  {len(latencies) / elapsed:7.0f} client_credentials/s with {concurrency} connections; {_percentiles(latencies)}")


async def _flood(base: str, seconds: float, rate: int) -> None:
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=0)) as flood_session, \
            aiohttp.ClientSession(base) as session:
        await _client_credentials(session, "svc")
        alone = [(await _client_credentials(session, "svc"))[1] for _ in range(300)]
        answers: list[int] = []

        async def wrong_password(n: int) -> None:
            form = {"grant_type": "password", "username": f"nobody{n}", "password": "wrong"}
            async with flood_session.post("/token", data=form, headers=_basic("web")) as response:
                await response.read()
                answers.append(response.status)

        tasks = []

        async def send() -> None:
            for n in range(int(seconds * rate)):
                tasks.append(asyncio.create_task(wrong_password(n)))
                await asyncio.sleep(1 / rate)

        async def login() -> tuple[int, float]:
            started = time.perf_counter()
            form = {"grant_type": "password", "username": "alice", "password": SECRET}
            async with session.post("/token", data=form, headers=_basic("web")) as response:
                await response.read()
                return response.status, (time.perf_counter() - started) * 1000

        sender = asyncio.create_task(send())
        await asyncio.sleep(1.0)
        probes = asyncio.gather(_client_credentials(session, "newcomer"), login())
        during = []
        while not sender.done():
            status, elapsed = await _client_credentials(session, "svc")
            assert status == 200, status
            during.append(elapsed)
        newcomer, legitimate = await probes
        await asyncio.gather(*tasks)
    print(f"  open-loop flood: {len(answers)} wrong passwords at {rate}/s for {seconds:.0f} s:"
          f" {answers.count(400)} checked (400), {answers.count(503)} refused at once (503),"
          f" {answers.count(429)} throttled (429)")
    print(f"  cached client_credentials alone:        {_percentiles(alone)}")
    print(f"  cached client_credentials during flood: {_percentiles(during)}")
    print(f"  first-time client during flood (argon2 on its secret): {newcomer[0]} in {newcomer[1]:.1f} ms")
    print(f"  a user's own login during flood: {legitimate[0]} in {legitimate[1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--flood-rate", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as data_dir:
        # The database and argon2 settings pass through; the rest is the bench's own.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TESSERA_") or k == "TESSERA_DATABASE_URL" or k.startswith("TESSERA_ARGON2_")}
        env.update({
            "TESSERA_DATA_DIR": data_dir,
            "TESSERA_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
            # Many wrong passwords from one address: the flood is about argon2, not the throttle.
            "TESSERA_LOGIN_MAX_FAILURES": "1000000",
            "TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS": "0",
        })
        if "TESSERA_DATABASE_URL" not in env:
            env.pop("TESSERA_KEY_ENCRYPTION_KEY")
        for client_id, grants in (("svc", "client_credentials"), ("newcomer", "client_credentials"), ("web", "password")):
            _tessera(env, "clients", "create", client_id, "--grant-types", grants, "--audiences",
                     "https://bench.example", "--secret-stdin", stdin=SECRET)
        _tessera(env, "users", "create", "alice", "--password-stdin", stdin=SECRET)
        with tessera_serve(env, Path(data_dir), ready_within=60) as (base, _):
            if "TESSERA_DATABASE_URL" in env:
                print("query cost (one connection, sequential):")
                asyncio.run(_query_cost(env["TESSERA_DATABASE_URL"], 5000))
            print("throughput:")
            asyncio.run(_throughput(base, args.seconds, args.concurrency))
            print("password flood:")
            asyncio.run(_flood(base, args.seconds, args.flood_rate))


if __name__ == "__main__":
    main()
