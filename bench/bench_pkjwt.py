"""private_key_jwt in `make bench`: the endpoint ``cc_pkjwt`` of bench/run.py (also runnable alone).

client_credentials where the client authenticates with a fresh ES256 client assertion per request
(RFC 7523, ``private_key_jwt``), on one core: each server pinned to CPU 1 with its embedded
PostgreSQL (which inherits the pin), wrk -t1 pinned to CPU 0. The assertions are signed before
each timed run, one per request (wrk/form_once.lua sends each once and stops when they run out; such a
run is made again with more), so the run measures the server, not the client's signing.

Three servers are up together and measured in turn, ``--pkjwt-rounds`` times (the ratio is taken
per round: a shared machine's speed drifts within a minute):
- ``secret``: the same request authenticated with client_secret_basic (the verified-secret cache
  answers it without argon2 and without a query), for reference;
- ``pkjwt``: private_key_jwt as shipped: the signature checked against the client's registered
  key (row cached), and the jti recorded in PostgreSQL, one INSERT and commit per request;
- ``pkjwt_no_register``: the same server code with the jti INSERT replaced by nothing (a bench-only
  launcher patches ``AssertionJtiStore.spend``): the difference is what the replay register costs.

Each run also reads the CPU time the server and its PostgreSQL used, per request (/proc), which
moves less than requests a second on a machine others use. Then the INSERT alone, from this
process on CPU 0 against the first server's PostgreSQL: one statement at a time (latency, next
to a ``SELECT 1`` round trip) and 64 at a time over 20 connections (statements a second).

    .venv/bin/python bench/bench_pkjwt.py --duration 5 --warmup 2 --pkjwt-rounds 3
    make bench BENCH_ARGS='--modes 1p --endpoints cc_pkjwt'
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import run as bench
from bench_sign_in import cpu_ticks

PKJWT_CLIENT = "bench-pkjwt"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The first warm-up's assertions, before the server's rate is known; later pools are MARGIN times
# what the best rate so far would spend.
FIRST_POOL = 20000
MARGIN = 1.5
# The same server, with the replay register's INSERT replaced by nothing. For measuring only.
NO_REGISTER = """
import sys
from tessera.server.store.assertions import AssertionJtiStore

async def spend(self, client_id, jti, *, expires_at, now):
    return True

AssertionJtiStore.spend = spend
from tessera.server.cli import main
sys.exit(main(["serve"]))
"""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """The client's ES256 key: its public JWK Set, and assertions signed with cryptography directly
    (fast enough to make tens of thousands right before a run)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self._ec = ec
        self._key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        self.kid = "bench-" + secrets.token_hex(4)
        self.jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                               "x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big"))}]}

    def bodies(self, count: int, audience: str) -> list[str]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        header = b64(json.dumps({"alg": "ES256", "kid": self.kid, "typ": "JWT"}).encode())
        now = int(time.time())
        out = []
        for _ in range(count):
            claims = {"iss": PKJWT_CLIENT, "sub": PKJWT_CLIENT, "aud": audience, "iat": now, "exp": now + 290,
                      "jti": secrets.token_urlsafe(24)}
            signing_input = f"{header}.{b64(json.dumps(claims).encode())}".encode()
            r, s = decode_dss_signature(self._key.sign(signing_input, self._ec.ECDSA(hashes.SHA256())))
            jws = signing_input.decode() + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
            out.append(urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "api.read",
                                               "client_assertion_type": ASSERTION_TYPE, "client_assertion": jws}))
        return out


class Server:
    """One Tessera on a fresh embedded database, pinned to ``cpu``, with the bench's secret client
    and the private_key_jwt client registered."""

    def __init__(self, name: str, work: Path, cpu: str | None, signer: Signer, *, register: bool = True) -> None:
        self.name = name
        port = bench.free_port()
        self.env = bench.tessera_env(work / name, port, 1)
        self.cpu_marker = str(work / name)
        bench.cli(self.env, "clients", "create", bench.CLIENT_ID, "--grant-types", "client_credentials",
                  "--scopes", "api.read api.write", "--audiences", bench.AUDIENCE, "--secret-stdin",
                  stdin=bench.CLIENT_SECRET)
        keys = work / f"{name}-jwks.json"
        keys.write_text(json.dumps(signer.jwks))
        bench.cli(self.env, "clients", "create", PKJWT_CLIENT, "--grant-types", "client_credentials",
                  "--scopes", "api.read", "--audiences", bench.AUDIENCE,
                  "--token-endpoint-auth-method", "private_key_jwt", "--jwks-file", str(keys))
        command = [str(bench.BIN / "tessera"), "serve"] if register else [sys.executable, "-c", NO_REGISTER]
        self.server = bench.Server(bench.pinned(cpu) + command, self.env, work / f"{name}.log")
        self.base = f"http://127.0.0.1:{port}"
        try:
            bench.wait_ready(self.base + "/readyz", self.server)
        except BaseException:
            self.server.stop()
            raise

    def stop(self) -> None:
        self.server.stop()


def with_cpu(server: Server, run: Any) -> dict[str, Any]:
    """``run()``'s wrk result with the CPU time per request of the server and of its PostgreSQL (us)."""
    hz = os.sysconf("SC_CLK_TCK")
    before, started = cpu_ticks({server.server.process.pid}, server.cpu_marker), time.monotonic()
    result = dict(run())
    after, elapsed = cpu_ticks({server.server.process.pid}, server.cpu_marker), time.monotonic() - started
    used = {kind: (after[kind] - before.get(kind, 0)) / hz for kind in after}
    requests = max(1, result["requests"])
    result["cpu_us"] = {kind: round(seconds * 1e6 / requests) for kind, seconds in used.items()}
    result["cpu_us_total"] = round(sum(used.values()) * 1e6 / requests)
    result["core_share"] = round(sum(used.values()) / elapsed, 2)
    return result


def secret_run(server: Server, seconds: float, args: argparse.Namespace, wrk_cpu: str | None) -> dict[str, Any]:
    return with_cpu(server, lambda: bench.wrk(server.base + "/token", "form.lua", seconds, args.conns, wrk_cpu, 1,
                                              bench.CC_FORM))


def assertion_run(server: Server, signer: Signer, count: int, seconds: float, args: argparse.Namespace,
                  wrk_cpu: str | None, work: Path) -> dict[str, Any]:
    """One wrk run on ``count`` fresh assertions (signed now, on wrk's core), each sent once."""
    with bench.on_cpu(None if wrk_cpu is None else int(wrk_cpu)):
        started = time.monotonic()
        bodies = signer.bodies(count, server.base)  # aud: the issuer
        signing = time.monotonic() - started
    pool = work / f"assertions-{server.name}.txt"
    pool.write_text("\n".join(bodies) + "\n")
    result = with_cpu(server, lambda: bench.wrk(server.base + "/token", "form_once.lua", seconds, args.conns, wrk_cpu, 1,
                                                {"BODIES_FILE": str(pool)}))
    # A run that ran out of assertions stopped early but is divided by its whole -d: its rate is too
    # low, and it is made again with more.
    result["assertions"], result["signed_per_s"] = count, round(count / signing)
    result["ran_out"] = result["requests"] + args.conns >= count
    return result


def timed_assertion_run(server: Server, signer: Signer, rate: float, args: argparse.Namespace,
                        wrk_cpu: str | None, work: Path) -> tuple[dict[str, Any], float]:
    for _ in range(3):
        warm = assertion_run(server, signer, int(rate * args.warmup * MARGIN) + 2 * args.conns, args.warmup, args,
                             wrk_cpu, work)
        rate = rate * 2 if warm["ran_out"] else max(rate, warm["rps"])
        result = assertion_run(server, signer, int(rate * args.duration * MARGIN) + 2 * args.conns, args.duration,
                               args, wrk_cpu, work)
        if not result["ran_out"]:
            if result["errors"]:
                raise RuntimeError(f"{server.name}: {result['errors']} failed requests in a measured run")
            return result, max(rate, result["rps"])
        rate *= 2
    raise RuntimeError(f"{server.name}: the measured run ran out of assertions three times")


def insert_alone(env: dict[str, str], cpu: str | None, statements: int = 3000) -> dict[str, Any]:
    """The replay register's statement alone (``AssertionJtiStore.spend``, with its deadline check),
    against the server's PostgreSQL: one at a time next to ``SELECT 1``, then 64 at a time."""
    import asyncpg

    from tessera.server.settings import load_settings
    from tessera.server.store import db
    from tessera.server.store.assertions import AssertionJtiStore

    async def measure(dsn: str) -> dict[str, Any]:
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        expires = now + timedelta(minutes=5)
        connection = await asyncpg.connect(dsn)
        try:
            store = AssertionJtiStore(connection)

            async def each(operation: Any) -> list[float]:
                times = []
                for _ in range(statements):
                    started = time.perf_counter()
                    await operation()
                    times.append(time.perf_counter() - started)
                return times

            round_trip = await each(lambda: connection.fetchval("SELECT 1"))
            inserts = await each(lambda: store.spend("bench-alone", secrets.token_urlsafe(24), expires_at=expires,
                                                     now=now))
        finally:
            await connection.close()
        pool = await asyncpg.create_pool(dsn, min_size=20, max_size=20)
        try:
            shared = AssertionJtiStore(pool)
            remaining = [statements * 4]

            async def worker(operation: Any) -> None:
                while remaining[0] > 0:
                    remaining[0] -= 1
                    await operation()

            rates = {}
            for name, operation in (
                ("select_1", lambda: pool.fetchval("SELECT 1")),
                ("insert", lambda: shared.spend("bench-alone", secrets.token_urlsafe(24), expires_at=expires, now=now)),
            ):
                remaining[0] = statements * 4
                started = time.perf_counter()
                await asyncio.gather(*(worker(operation) for _ in range(64)))
                rates[name] = round(statements * 4 / (time.perf_counter() - started))
            await pool.execute("DELETE FROM client_assertion_jtis WHERE client_id = 'bench-alone'")
        finally:
            await pool.close()
        return {
            "statements": statements,
            "select_1_us": {"p50": round(statistics.median(round_trip) * 1e6), "mean": round(statistics.mean(round_trip) * 1e6)},
            "insert_us": {"p50": round(statistics.median(inserts) * 1e6), "mean": round(statistics.mean(inserts) * 1e6),
                          "p99": round(sorted(inserts)[int(len(inserts) * 0.99)] * 1e6)},
            "concurrent_per_s": rates,
        }

    with bench.on_cpu(None if cpu is None else int(cpu)), db.open_database(load_settings(env)) as database:
        return asyncio.run(measure(database.dsn))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    server_cpu, wrk_cpu, _ = bench.placement("1p")
    signer = Signer()
    rounds_wanted = getattr(args, "pkjwt_rounds", 3)
    servers = []
    try:
        servers.append(Server("pkjwt", work, server_cpu, signer))
        servers.append(Server("pkjwt-no-register", work, server_cpu, signer, register=False))
        with_register, without_register = servers
        # Correctness before speed: an assertion is accepted once; the launcher's is not (it must not be).
        first = signer.bodies(1, with_register.base)[0]
        answers = [bench.post_form(with_register.base + "/token", dict(urllib.parse.parse_qsl(first)), auth=None)]
        try:
            bench.post_form(with_register.base + "/token", dict(urllib.parse.parse_qsl(first)), auth=None)
            raise RuntimeError("pkjwt: a replayed assertion got a token")
        except OSError:
            pass  # 401
        if "access_token" not in answers[0]:
            raise RuntimeError(f"pkjwt: no token for a fresh assertion: {answers[0]}")

        rate: dict[str, float] = {}
        for server in servers:  # a first warm-up, which also gives the rate to size pools by
            first_run = assertion_run(server, signer, FIRST_POOL, 3, args, wrk_cpu, work)
            rate[server.name] = max(first_run["rps"] * (2 if first_run["ran_out"] else 1), 500.0)
        bench.wrk(with_register.base + "/token", "form.lua", args.warmup, args.conns, wrk_cpu, 1, bench.CC_FORM)
        rounds = []
        for _ in range(rounds_wanted):
            runs: dict[str, Any] = {"secret": secret_run(with_register, args.duration, args, wrk_cpu)}
            for server in servers:
                runs[server.name], rate[server.name] = timed_assertion_run(server, signer, rate[server.name], args,
                                                                            wrk_cpu, work)
            with_, without = runs["pkjwt"], runs["pkjwt-no-register"]
            runs["register_us_wall"] = round(1e6 / with_["rps"] - 1e6 / without["rps"])
            runs["register_us_cpu"] = with_["cpu_us_total"] - without["cpu_us_total"]
            rounds.append(runs)
        alone = insert_alone(with_register.env, wrk_cpu)
    finally:
        for server in servers:
            server.stop()

    def median(pick: Any) -> float:
        return statistics.median(pick(r) for r in rounds)

    return {
        "rounds": rounds, "alone": alone, "seconds": args.duration, "conns": args.conns,
        "secret_rps": median(lambda r: r["secret"]["rps"]),
        "pkjwt_rps": median(lambda r: r["pkjwt"]["rps"]),
        "no_register_rps": median(lambda r: r["pkjwt-no-register"]["rps"]),
        "register_us_wall": median(lambda r: r["register_us_wall"]),
        "register_us_cpu": median(lambda r: r["register_us_cpu"]),
        "signed_per_s": rounds[-1]["pkjwt"]["signed_per_s"],
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        "",
        f"## private_key_jwt: client_credentials with a fresh ES256 assertion per request (1 core, -c{result['conns']},"
        f" {len(result['rounds'])} rounds of {result['seconds']:g} s, in turn)",
        "",
        "| round | secret req/s | pkjwt req/s | no register req/s | pkjwt p50/p99 ms | CPU us/req (server + postgres)"
        " secret / pkjwt / no register | register cost us/req (wall, CPU) |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for n, r in enumerate(result["rounds"], 1):
        cpu = " / ".join(f"{r[k]['cpu_us'].get('server', 0)} + {r[k]['cpu_us'].get('postgres', 0)}"
                         for k in ("secret", "pkjwt", "pkjwt-no-register"))
        lines.append(
            f"| {n} | {r['secret']['rps']:,.0f} | {r['pkjwt']['rps']:,.0f} | {r['pkjwt-no-register']['rps']:,.0f} |"
            f" {r['pkjwt']['p50_ms']:.1f}/{r['pkjwt']['p99_ms']:.1f} | {cpu} | {r['register_us_wall']}, {r['register_us_cpu']} |"
        )
    alone = result["alone"]
    lines += [
        "",
        f"- medians: secret {result['secret_rps']:,.0f} req/s, private_key_jwt {result['pkjwt_rps']:,.0f} req/s, "
        f"without the replay register {result['no_register_rps']:,.0f} req/s; the register costs "
        f"{result['register_us_wall']:.0f} us of the core per request (wall), {result['register_us_cpu']:.0f} us of CPU",
        f"- the register's INSERT alone (from CPU 0, PostgreSQL on CPU 1): p50 {alone['insert_us']['p50']} us, "
        f"p99 {alone['insert_us']['p99']} us one at a time, next to SELECT 1 at p50 {alone['select_1_us']['p50']} us; "
        f"64 at a time over 20 connections: {alone['concurrent_per_s']['insert']:,}/s "
        f"(SELECT 1: {alone['concurrent_per_s']['select_1']:,}/s)",
        f"- assertions signed before each run at {result['signed_per_s']:,}/s (cryptography, ES256)",
    ]
    return "\n".join(lines)


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--pkjwt-rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-pkjwt-") as tmp:
        result = run(args, Path(tmp))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
