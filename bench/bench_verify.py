"""How much does verifying a Tessera access token cost, compared with joserfc's bare signature check?

    python bench/bench_verify.py                    # ES256, about 10 s
    python bench/bench_verify.py --alg all          # ES256 ES384 EdDSA RS256 PS256, about 45 s
    python bench/bench_verify.py --json results.json

For each algorithm it measures, single process, on the default asyncio loop:

  (a) raw        joserfc.jws.deserialize_compact(token, public_key, algorithms=[alg])
  (b) verifier   await keys.Verifier.verify(token): the full RFC 9068 check with a warm JWKS cache
                 ((a) and (b) alternate in 4 rounds; the best round of each counts)
  (c) http       the same tiny aiohttp app over real HTTP on 127.0.0.1 (keep-alive, concurrent
                 client tasks in the same process): first without, then with bearer_auth_middleware;
                 the client's own cost is included, so these are end-to-end requests per second

and prints operations per second with each one's ratio to (a). The JWKS comes from an in-process
issuer on 127.0.0.1, fetched once, like in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import aiohttp
from aiohttp import web
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, KeyParameters, OKPKey, RSAKey, import_key

from tessera.keys import Verifier
from tessera.keys.aiohttp_auth import bearer_auth_middleware, get_claims

ALGORITHMS = ("ES256", "ES384", "EdDSA", "RS256", "PS256")
AUDIENCE = "https://orders.example"
ROUNDS = 4


def generate_key(alg: str) -> ECKey | RSAKey | OKPKey:
    params: KeyParameters = {"alg": alg, "use": "sig"}
    key: ECKey | RSAKey | OKPKey
    if alg.startswith("ES"):
        key = ECKey.generate_key({"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg], params)
    elif alg == "EdDSA":
        key = OKPKey.generate_key("Ed25519", params)
    else:
        key = RSAKey.generate_key(2048, params)
    key.ensure_kid()
    return key


async def start_issuer(keys: dict[str, ECKey | RSAKey | OKPKey]) -> tuple[web.AppRunner, str]:
    jwks = json.dumps({"keys": [key.as_dict(private=False) for key in keys.values()]})

    async def jwks_handler(request: web.Request) -> web.Response:
        return web.Response(text=jwks, content_type="application/json", headers={"Cache-Control": "max-age=300"})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def issue(issuer: str, alg: str, key: ECKey | RSAKey | OKPKey) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "user-42",
        "aud": AUDIENCE,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "jti": uuid.uuid4().hex,
        "client_id": "orders-web",
        "scope": "orders.read profile",
        "auth_time": now,
    }
    header = {"typ": "at+jwt", "alg": alg, "kid": key.kid}
    return jws.serialize_compact(header, json.dumps(claims), key, algorithms=[alg])


def measure_sync(operation: Callable[[], object], seconds: float) -> float:
    operation()  # warm-up
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            operation()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


async def measure_async(operation: Callable[[], Awaitable[object]], seconds: float) -> float:
    await operation()
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            await operation()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


async def measure_http(app: web.Application, token: str, seconds: float, concurrency: int) -> float:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/orders"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
            async with http.get(url, headers=headers) as response:  # a check
                if response.status != 200:
                    raise RuntimeError(f"the benchmark app answered {response.status}")
            count = 0
            deadline = time.perf_counter() + min(0.5, seconds)  # warm-up: open the connections

            async def client() -> None:
                nonlocal count
                while time.perf_counter() < deadline:
                    async with http.get(url, headers=headers) as response:
                        await response.read()
                    count += 1

            await asyncio.gather(*(client() for _ in range(concurrency)))
            count = 0
            deadline = time.perf_counter() + seconds
            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return count / (time.perf_counter() - started)
    finally:
        await runner.cleanup()


async def orders(request: web.Request) -> web.Response:
    return web.json_response({"orders": []})


async def orders_for_caller(request: web.Request) -> web.Response:
    return web.json_response({"orders": [], "sub": get_claims(request).sub})


async def warm_up_http(concurrency: int) -> None:
    """One unmeasured HTTP run: the first in a process is ~30 % slower than the rest (first-use
    costs in aiohttp and the interpreter), which would otherwise be charged to the first algorithm."""
    app = web.Application()
    app.router.add_get("/orders", orders)
    await measure_http(app, "warm-up", 1.0, concurrency)


async def bench_algorithm(alg: str, seconds: float, concurrency: int) -> dict[str, Any]:
    key = generate_key(alg)
    public_key = import_key(key.as_dict(private=False))
    runner, issuer = await start_issuer({alg: key})
    try:
        token = issue(issuer, alg, key)
        async with Verifier(issuer, AUDIENCE, algorithms=[alg], jwks_url=f"{issuer}/.well-known/jwks.json") as verifier:
            await verifier.prefetch()

            # Interleaved rounds, best of each: on a shared machine, load that comes and goes would
            # otherwise favour whichever of the two ran in the quieter moment.
            raw = bare = 0.0
            for _ in range(ROUNDS):
                raw = max(
                    raw,
                    measure_sync(
                        lambda: jws.deserialize_compact(token, public_key, algorithms=[alg]), seconds / ROUNDS
                    ),
                )
                bare = max(bare, await measure_async(lambda: verifier.verify(token), seconds / ROUNDS))

            plain_app = web.Application()
            plain_app.router.add_get("/orders", orders)
            http_plain = await measure_http(plain_app, token, seconds, concurrency)

            guarded_app = web.Application(middlewares=[bearer_auth_middleware(verifier)])
            guarded_app.router.add_get("/orders", orders_for_caller)
            http_guarded = await measure_http(guarded_app, token, seconds, concurrency)
            if verifier.jwks.fetch_count != 1:
                raise RuntimeError("the benchmark fetched the JWKS more than once")
    finally:
        await runner.cleanup()
    return {
        "alg": alg,
        "raw_joserfc_per_s": round(raw),
        "verifier_per_s": round(bare),
        "http_without_middleware_per_s": round(http_plain),
        "http_with_middleware_per_s": round(http_guarded),
        "verifier_ratio": round(bare / raw, 3),
        "http_with_middleware_ratio": round(http_guarded / raw, 3),
        "middleware_http_vs_plain_http": round(http_guarded / http_plain, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alg", default="ES256", help=f"one of {', '.join(ALGORITHMS)}, or 'all' (default ES256)")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP client tasks (default 16)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    algorithms = ALGORITHMS if args.alg == "all" else (args.alg,)
    if not set(algorithms) <= set(ALGORITHMS) or not 0.1 <= args.seconds <= 10 or args.concurrency < 1:
        parser.error("bad --alg, --seconds (0.1 to 10) or --concurrency")

    # joserfc warns on every use of the "EdDSA" name (RFC 9864 deprecates it); the raw baseline calls
    # it in a loop, and the warning is not what is being measured. Only this process is affected.
    warnings.filterwarnings("ignore", category=SecurityWarning)

    asyncio.run(warm_up_http(args.concurrency))
    results = []
    print(
        f"{'alg':6} {'(a) raw joserfc':>16} {'(b) Verifier':>18} {'(c) HTTP plain':>15} {'(c) HTTP + middleware':>22}"
    )
    for alg in algorithms:
        r = asyncio.run(bench_algorithm(alg, args.seconds, args.concurrency))
        results.append(r)
        print(
            f"{alg:6} {r['raw_joserfc_per_s']:>12}/s   {r['verifier_per_s']:>8}/s ({r['verifier_ratio']:.2f})"
            f" {r['http_without_middleware_per_s']:>10}/s   {r['http_with_middleware_per_s']:>8}/s"
            f" ({r['http_with_middleware_ratio']:.2f} of raw, {r['middleware_http_vs_plain_http']:.2f} of plain HTTP)"
        )
    if args.json:
        report = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "joserfc": version("joserfc"),
            "aiohttp": version("aiohttp"),
            "cryptography": version("cryptography"),
            "seconds_per_measurement": args.seconds,
            "http_concurrency": args.concurrency,
            "http_path": "real HTTP over 127.0.0.1, client and server in this process",
            "results": results,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
