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
- ``oidc-provider``: the peer, panva's oidc-provider (bench/peer_sign_in/server.mjs with
  PKJWT_JWKS_FILE, installed with npm as bench_sign_in.py does) with the same client registered for
  private_key_jwt (ES256, its public JWK Set inline, client_credentials, ES256 at+jwt access tokens
  for the API through resourceIndicators), sent the same kind of pre-made assertions (aud: its
  issuer); its replay register is the library's ReplayDetection in its in-memory store, emptied
  (admin POST /reset) before each run. Skipped, with the reason in the report, if it cannot start.
Within a round: secret, pkjwt, oidc-provider, pkjwt_no_register. One answer of each server is
checked for shape before timing (200, Bearer, an ES256 at+jwt access token verified against its
JWKS; the same assertion again refused with 401), and any non-2xx in a measured run is an error.
The report gives Tessera / oidc-provider per round and its median, and the CPU time per request.

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
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import run as bench
from bench_sign_in import cpu_ticks, install_peer, peer_node, request, PEER_DIR

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
        bench.wait_ready(self.base + "/readyz", self.server)

    def stop(self) -> None:
        self.server.stop()


class Peer:
    """panva's oidc-provider (bench/peer_sign_in/server.mjs, the sign-in peer) with the same
    private_key_jwt client registered (PKJWT_JWKS_FILE: the signer's public JWK Set inline,
    ES256, client_credentials, scope api.read, ES256 at+jwt access tokens for the bench's API),
    pinned to ``cpu``. Its jti register is the library's ReplayDetection in its in-memory store."""

    name = "oidc-provider"

    def __init__(self, work: Path, cpu: str | None, signer: Signer) -> None:
        install_peer()
        port, self.admin_port = bench.free_port(), bench.free_port()
        node = peer_node()
        self.node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        self.version = json.loads((PEER_DIR / "node_modules" / "oidc-provider" / "package.json").read_text())["version"]
        keys = work / "peer-jwks.json"
        keys.write_text(json.dumps(signer.jwks))
        env = {**os.environ, "PORT": str(port), "ADMIN_PORT": str(self.admin_port), "PKJWT_JWKS_FILE": str(keys),
               "PKJWT_CLIENT_ID": PKJWT_CLIENT}
        self.cpu_marker = None
        self.server = bench.Server(bench.pinned(cpu) + [node, "--expose-gc", str(PEER_DIR / "server.mjs")], env,
                                   work / "peer-pkjwt.log")
        self.base = f"http://127.0.0.1:{port}"
        self.issuer = self.base  # an assertion's aud: the issuer identifier, which it accepts
        self.jwks_url = self.base + "/jwks"
        bench.wait_ready(self.base + "/.well-known/openid-configuration", self.server, timeout=30)

    def reset(self) -> None:
        """Empties its in-memory store (the last runs' replay entries) before a run (admin POST /reset)."""
        status, _, _ = request(f"http://127.0.0.1:{self.admin_port}/reset", "POST", "")
        if status != 204:
            raise RuntimeError(f"oidc-provider: /reset answered {status}")

    def stop(self) -> None:
        self.server.stop()


def check_answer(server: Any, signer: Signer, issuer: str, jwks_url: str) -> dict[str, Any]:
    """One fresh assertion posted and the answer checked: a 200 with a Bearer ES256 at+jwt access
    token for the bench's API (verified against the server's JWKS), client_id the client's; the
    same assertion again must be refused (401, invalid_client)."""
    from joserfc import jwt
    from joserfc.jwk import KeySet

    body = signer.bodies(1, issuer)[0]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, text = request(server.base + "/token", "POST", body, headers)
    if status != 200:
        raise RuntimeError(f"{server.name}: a fresh assertion answered {status}: {text[:300]}")
    answer = json.loads(text)
    _, _, jwks = request(jwks_url)
    access = jwt.decode(answer["access_token"], KeySet.import_key_set(json.loads(jwks)), algorithms=["ES256"])
    problems = []
    if access.header.get("typ") != "at+jwt" or access.header.get("alg") != "ES256":
        problems.append(f"access token header {access.header}")
    if str(answer.get("token_type", "")).lower() != "bearer":
        problems.append(f"token_type {answer.get('token_type')!r}")
    aud = access.claims.get("aud")
    if aud != bench.AUDIENCE and not (isinstance(aud, list) and bench.AUDIENCE in aud):
        problems.append(f"access token aud={aud!r}")
    if access.claims.get("client_id") != PKJWT_CLIENT or access.claims.get("iss") != issuer:
        problems.append(f"access token client_id={access.claims.get('client_id')!r} iss={access.claims.get('iss')!r}")
    again, _, again_text = request(server.base + "/token", "POST", body, headers)
    if again != 401:
        problems.append(f"the same assertion again answered {again} {again_text[:200]}")
    if problems:
        raise RuntimeError(f"{server.name}: the private_key_jwt answer is not as expected: {'; '.join(problems)}")
    return {"fields": sorted(answer), "scope": answer.get("scope"), "claims": sorted(access.claims),
            "header": dict(access.header), "replay": f"{again} {json.loads(again_text).get('error')}"}


def with_cpu(server: Any, run: Any) -> dict[str, Any]:
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


def assertion_run(server: Any, signer: Signer, count: int, seconds: float, args: argparse.Namespace,
                  wrk_cpu: str | None, work: Path) -> dict[str, Any]:
    """One wrk run on ``count`` fresh assertions (signed now, on wrk's core), each sent once."""
    with bench.on_cpu(None if wrk_cpu is None else int(wrk_cpu)):
        started = time.monotonic()
        bodies = signer.bodies(count, server.base)  # aud: the issuer
        signing = time.monotonic() - started
    pool = work / f"assertions-{server.name}.txt"
    pool.write_text("\n".join(bodies) + "\n")
    if isinstance(server, Peer):
        server.reset()
    result = with_cpu(server, lambda: bench.wrk(server.base + "/token", "form_once.lua", seconds, args.conns, wrk_cpu, 1,
                                                {"BODIES_FILE": str(pool)}))
    # A run that ran out of assertions stopped early but is divided by its whole -d: its rate is too
    # low, and it is made again with more.
    result["assertions"], result["signed_per_s"] = count, round(count / signing)
    result["ran_out"] = result["requests"] + args.conns >= count
    return result


def timed_assertion_run(server: Any, signer: Signer, rate: float, args: argparse.Namespace,
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
    started_all = time.monotonic()
    loadavg_before = os.getloadavg()
    servers: list[Any] = []
    peer: Peer | None = None
    peer_skipped = None
    try:
        servers.append(Server("pkjwt", work, server_cpu, signer))
        servers.append(Server("pkjwt-no-register", work, server_cpu, signer, register=False))
        with_register, without_register = servers
        try:
            peer = Peer(work, server_cpu, signer)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            peer_skipped = str(exc)
        else:
            servers.append(peer)
        # Correctness before speed: a fresh assertion gets an ES256 at+jwt access token, once; the
        # launcher's server records nothing (it must not be timed as the shipped one).
        checks = {"tessera": check_answer(with_register, signer, with_register.base,
                                          with_register.base + "/.well-known/jwks.json")}
        if peer is not None:
            checks["oidc-provider"] = check_answer(peer, signer, peer.issuer, peer.jwks_url)

        rate: dict[str, float] = {}
        for server in servers:  # a first warm-up (node's JIT too), which also gives the rate to size pools by
            first_run = assertion_run(server, signer, FIRST_POOL, 3, args, wrk_cpu, work)
            rate[server.name] = max(first_run["rps"] * (2 if first_run["ran_out"] else 1), 500.0)
        bench.wrk(with_register.base + "/token", "form.lua", args.warmup, args.conns, wrk_cpu, 1, bench.CC_FORM)
        rounds = []
        # In turn within a round: secret, Tessera private_key_jwt, oidc-provider private_key_jwt,
        # Tessera without the register.
        order = [with_register] + ([peer] if peer is not None else []) + [without_register]
        for _ in range(rounds_wanted):
            runs: dict[str, Any] = {"secret": secret_run(with_register, args.duration, args, wrk_cpu)}
            for server in order:
                runs[server.name], rate[server.name] = timed_assertion_run(server, signer, rate[server.name], args,
                                                                            wrk_cpu, work)
            with_, without = runs["pkjwt"], runs["pkjwt-no-register"]
            runs["register_us_wall"] = round(1e6 / with_["rps"] - 1e6 / without["rps"])
            runs["register_us_cpu"] = with_["cpu_us_total"] - without["cpu_us_total"]
            if peer is not None:
                p = runs["oidc-provider"]
                runs["ratio"] = with_["rps"] / p["rps"]
                runs["cpu_ratio"] = p["cpu_us_total"] / max(1, with_["cpu_us_total"])
            rounds.append(runs)
        alone = insert_alone(with_register.env, wrk_cpu)
    finally:
        for server in servers:
            server.stop()

    def median(pick: Any) -> float:
        return statistics.median(pick(r) for r in rounds)

    result = {
        "rounds": rounds, "alone": alone, "seconds": args.duration, "warmup": args.warmup, "conns": args.conns,
        "checks": checks, "peer_skipped": peer_skipped,
        "secret_rps": median(lambda r: r["secret"]["rps"]),
        "pkjwt_rps": median(lambda r: r["pkjwt"]["rps"]),
        "no_register_rps": median(lambda r: r["pkjwt-no-register"]["rps"]),
        "register_us_wall": median(lambda r: r["register_us_wall"]),
        "register_us_cpu": median(lambda r: r["register_us_cpu"]),
        "pkjwt_cpu_us": median(lambda r: r["pkjwt"]["cpu_us_total"]),
        "signed_per_s": rounds[-1]["pkjwt"]["signed_per_s"],
    }
    if peer is not None:
        result.update({
            "peer": {"oidc_provider": peer.version, "node": peer.node_version},
            "peer_rps": median(lambda r: r["oidc-provider"]["rps"]),
            "peer_cpu_us": median(lambda r: r["oidc-provider"]["cpu_us_total"]),
            "ratio": median(lambda r: r["ratio"]),
            "cpu_ratio": median(lambda r: r["cpu_ratio"]),
        })
    result["loadavg_before"], result["loadavg_after"] = loadavg_before, os.getloadavg()
    result["total_seconds"] = round(time.monotonic() - started_all)
    return result


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
    if result.get("peer_skipped"):
        lines += ["", f"- oidc-provider skipped: {result['peer_skipped']}"]
    elif "peer" in result:
        peer = result["peer"]
        lines += [
            "",
            f"Side by side, private_key_jwt (fresh ES256 assertion per request, made before each run): Tessera and"
            f" oidc-provider {peer['oidc_provider']} on node {peer['node']}, each pinned to CPU 1 in turn, wrk -t1 on CPU 0",
            "",
            "| round | Tessera req/s | p50/p99 ms | CPU µs/req (PG) | core | oidc-provider req/s | p50/p99 ms"
            " | CPU µs/req | core | errors | ratio | CPU ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, r in enumerate(result["rounds"], 1):
            t, p = r["pkjwt"], r["oidc-provider"]
            lines.append(
                f"| {n} | {t['rps']:,.0f} | {t['p50_ms']:.1f}/{t['p99_ms']:.1f} | {t['cpu_us_total']}"
                f" ({t['cpu_us'].get('postgres', 0)}) | {t['core_share']:.2f} | {p['rps']:,.0f} |"
                f" {p['p50_ms']:.1f}/{p['p99_ms']:.1f} | {p['cpu_us_total']} | {p['core_share']:.2f} |"
                f" {t['errors']}/{p['errors']} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} |")
        verdict = "met" if result["ratio"] >= 1.5 else "NOT met"
        lines += [
            "",
            f"- medians: Tessera {result['pkjwt_rps']:,.0f} req/s at {result['pkjwt_cpu_us']:.0f} µs of CPU per request"
            f" (its PostgreSQL's included), oidc-provider {result['peer_rps']:,.0f} req/s at {result['peer_cpu_us']:.0f} µs;"
            f" Tessera / oidc-provider {result['ratio']:.2f} (target 1.5: {verdict}), CPU ratio {result['cpu_ratio']:.2f}",
            "- answers checked before timing (200, Bearer, ES256 at+jwt for the API, verified against the server's JWKS;"
            " the same assertion again refused), then every answer for 2xx: "
            + "; ".join(f"{name}: {', '.join(c['fields'])}; again: {c['replay']}" for name, c in result["checks"].items()),
        ]
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
    if "total_seconds" in result:
        lines.append(f"- {result['total_seconds']} s in all; load average before/after:"
                     f" {'/'.join(f'{x:.2f}' for x in result['loadavg_before'])},"
                     f" {'/'.join(f'{x:.2f}' for x in result['loadavg_after'])}")
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
