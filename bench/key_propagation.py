"""How fast a key change reaches every instance, and what the in-memory JWKS serves.

Starts two `tessera serve` processes on a scratch database (reload interval 300 s, so only
LISTEN/NOTIFY can explain a fast switch), then per round runs `tessera keys rotate --force` and
measures the time from the command's exit until both instances serve the new active key. Ends with
a short wrk run against one instance's JWKS when wrk is installed.

    .venv/bin/python bench/key_propagation.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import with_database  # noqa: E402
from tests.key_helpers import jwks_of, server_processes  # noqa: E402
from tests.processes import clean_env  # noqa: E402

SCRATCH = "tessera_key_propagation"


async def rounds(env: dict[str, str], count: int) -> tuple[list[float], list[float]]:
    commands, switches = [], []
    with tempfile.TemporaryDirectory() as logs:
        quiet = {"TESSERA_KEY_RELOAD_INTERVAL": "300", "TESSERA_JWKS_MAX_AGE": "0"}
        async with server_processes(env, Path(logs), 2, **quiet) as urls, aiohttp.ClientSession() as session:
            for _ in range(count):
                expected = (await jwks_of(session, urls[0]))[1][1]  # the next key, about to sign
                started = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "tessera.server.cli", "keys", "rotate", "--force"],
                    env=clean_env({**env, **quiet}), check=True, capture_output=True,
                )
                exited = time.perf_counter()
                while True:
                    actives = [(await jwks_of(session, url))[1][0] for url in urls]
                    if all(kid == expected for kid in actives) or time.perf_counter() - exited > 10:
                        break
                    await asyncio.sleep(0.002)
                commands.append(exited - started)
                switches.append(time.perf_counter() - exited)
            if shutil.which("wrk"):
                result = subprocess.run(
                    ["wrk", "-t2", "-c32", "-d5s", f"{urls[0]}/.well-known/jwks.json"],
                    capture_output=True, text=True, check=True,
                )
                print(result.stdout)
    return commands, switches


def describe(name: str, values: list[float]) -> None:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(f"{name}: median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("TESSERA_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{SCRATCH}"')
    try:
        with tempfile.TemporaryDirectory() as data:
            env = {
                "TESSERA_DATABASE_URL": with_database(args.database_url, SCRATCH),
                "TESSERA_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                "TESSERA_DATA_DIR": data,
            }
            commands, switches = await rounds(env, args.rounds)
        describe("tessera keys rotate --force (whole command)", commands)
        describe("command exit -> both instances serve the new active key", switches)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
