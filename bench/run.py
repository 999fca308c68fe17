"""`make bench`: Tessera's throughput and latency next to this machine's own limits, measured in
the same run, printed as one table with ratios and written as JSON.

Bounded (about 3-4 minutes with the defaults), 127.0.0.1 only, on a fresh embedded database.
Load comes from wrk (Debian's `wrk` package), a closed loop at -c64. In mode `1p` the server (and
the embedded PostgreSQL it starts, which inherits the pin) runs on CPU 1 and wrk on CPU 0: a
per-core figure. In mode `2w` the server runs `--workers 2` unpinned, sharing the cores with wrk.
The 2w/1p ratio for client_credentials is measured apart, with a 1p and a 2w server up together and
measured in turn (``run_scaling``), so that the machine's drift falls on both.

    make bench
    make bench BENCH_ARGS='--modes 1p --duration 10 --json bench/results/my-run.json'
    make bench BENCH_ARGS='--gc-families 200000'     # and garbage collection (bench_gc.py), ~20 s more
    make bench BENCH_ARGS='--modes 1p --endpoints code,login'   # sign-in alone (bench_sign_in.py)

The endpoints ``code`` (authorization codes exchanged, next to oidc-provider, interleaved) and
``login`` (the login page apart from argon2) are bench_sign_in.py's, always in mode 1p.
The endpoint ``cc_pkjwt`` (client_credentials with private_key_jwt, a fresh ES256 assertion per
request, with and without the jti replay register) is bench_pkjwt.py's, in mode 1p; not a default:
    make bench BENCH_ARGS='--modes 1p --endpoints cc_pkjwt'
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret-7c1f0e2b9d4a4e58a3b6"
USERNAME, PASSWORD = "bench-user", "bench-password-correct-horse"
# Password logins: distinct users taken in turn, at a concurrency the argon2 queue holds (each
# worker has TESSERA_ARGON2_QUEUE = 16 places; past that a login is a quick 503).
LOGIN_USERS, LOGIN_CONNS = 64, 8
AUDIENCE = "https://api.example.com"
AUTH = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
# The client_credentials request every cc run sends (the hello gets the same body).
CC_FORM = {"BODY": "grant_type=client_credentials&scope=api.read", "AUTH": AUTH}


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu] if cpu and shutil.which("taskset") else []


@contextlib.contextmanager
def on_cpu(cpu: int | None) -> Any:
    """This process on ``cpu`` alone for the block (no pinning when None), then where it was."""
    if cpu is None:
        yield
        return
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)


class Server:
    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wait_ready(url: str, server: Server, timeout: float = 90.0) -> None:
    """Until ``url`` answers 200; a server that never gets there (or an interruption) is stopped."""
    try:
        _wait_ready(url, server, timeout)
    except BaseException:
        server.stop()
        raise


def _wait_ready(url: str, server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early; see {server.log}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s; see {server.log}")


def post_form(url: str, form: dict[str, str], auth: str | None = AUTH) -> dict[str, Any]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def wrk(url: str, script: str, seconds: float, conns: int, cpu: str | None, threads: int, env: dict[str, str]) -> dict[str, Any]:
    command = pinned(cpu) + [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout=5s",
        "-s", str(HERE / "wrk" / script), url,
    ]
    output = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds + 60)
    for line in output.stdout.splitlines():
        # report.lua prints "BENCH {...}"; refresh_chain.lua (shared with bench_refresh.py) "WRKJSON {...}".
        if line.startswith(("BENCH ", "WRKJSON ")):
            result = json.loads(line.partition(" ")[2])
            if "rps" not in result:
                result["rps"] = result["requests"] / result["duration_s"]
            result["errors"] = result["non2xx"] + result["socket_errors"] + result["bad"]
            return result
    raise RuntimeError(f"wrk printed no result: {output.stdout[-500:]} {output.stderr[-500:]}")


# --- limits measured in-process -----------------------------------------------------------------


def ops_per_second(operation: Any, seconds: float = 1.0) -> float:
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(50):
            operation()
        count += 50
    return count / elapsed


def signing_limits(seconds: float) -> dict[str, float]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from tessera.keys.material import generate, signer_from_private_jwk

    made = generate("ES256")
    signer = signer_from_private_jwk("ES256", made.kid, made.private_jwk_json)
    raw_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    claims = {"iss": "http://127.0.0.1:8080", "sub": CLIENT_ID, "aud": AUDIENCE, "exp": now + 300, "iat": now,
              "nbf": now, "jti": "x" * 22, "client_id": CLIENT_ID, "scope": "api.read"}
    signing_input = signer.sign(claims).rsplit(".", 1)[0].encode()
    # Interleaved in short rounds, the best round of each kept: on a shared VM the speed of one
    # core drifts by tens of percent within seconds, more than the difference measured here.
    raw, ours = [], []
    for _ in range(6):
        raw.append(ops_per_second(lambda: raw_key.sign(signing_input, ec.ECDSA(hashes.SHA256())), seconds / 6))
        ours.append(ops_per_second(lambda: signer.sign(claims), seconds / 6))
    return {"raw_es256_sign_per_s": max(raw), "tessera_signer_per_s": max(ours)}


def add_login_users(env: dict[str, str], count: int) -> None:
    """Users ``bench-user-0`` .. ``count - 1`` with the bench user's password hash, put in with SQL
    (through the CLI, each would cost a process start and an argon2 hash)."""
    import asyncio

    import asyncpg

    from tessera.server.store import db
    from tessera.server.settings import load_settings

    async def copy(dsn: str) -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(
                "INSERT INTO users (username, password_hash) SELECT $1 || '-' || n, password_hash"
                " FROM users, generate_series(0, $2 - 1) AS n WHERE username = $1",
                USERNAME, count,
            )
        finally:
            await connection.close()

    with db.open_database(load_settings(env)) as database:
        asyncio.run(copy(database.dsn))


def argon2_times(count: int = 15) -> tuple[list[float], str]:
    """``count`` argon2id verifications at the default profile, each timed, in this process."""
    from tessera.server.oauth.passwords import SecretHasher
    from tessera.server.settings import load_settings

    profile = load_settings({}).argon2
    hasher = SecretHasher(profile)
    stored = hasher.hash_sync(PASSWORD)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        hasher._hasher.verify(stored, PASSWORD)
        times.append(time.perf_counter() - started)
    hasher.close()
    return times, f"m={profile.memory_kib}KiB,t={profile.time_cost},p={profile.parallelism}"


def argon2_limit() -> dict[str, float]:
    times, profile = argon2_times()
    median = statistics.median(times)
    return {"argon2_verify_ms": median * 1000, "argon2_verify_per_s": 1 / median, "argon2_profile": profile}


# Verifications timed before the password run, and again after it.
ARGON2_AROUND = 8


def argon2_limit_around(cpu: str | None, run: Any) -> dict[str, Any]:
    """``run()``'s result, with the argon2 limit measured right before and right after it, on the
    server's core in mode 1p. The password figure is compared with this rather than with the limit
    taken at the start: on a shared VM one verification can drift by a third within one
    ``make bench``, which moves the ratio by as much."""
    def timed() -> list[float]:
        time.sleep(1.0)  # the logins still queued when wrk stopped are done by then
        with on_cpu(None if cpu is None else int(cpu)):
            return argon2_times(ARGON2_AROUND)[0]

    before = timed()
    result = run()
    after = timed()
    median = statistics.median(before + after)
    return {**result, "argon2_verify_ms_around": [round(statistics.median(before) * 1000, 1),
                                                  round(statistics.median(after) * 1000, 1)],
            "argon2_verify_per_s_around": 1 / median}


def verifier_limits(seconds: float) -> dict[str, float] | None:
    script = HERE / "bench_verify.py"
    if not script.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        done = subprocess.run([sys.executable, str(script), "--seconds", str(seconds), "--json", out.name],
                              capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            return None
        result = json.loads(Path(out.name).read_text())["results"][0]
    return {k: result[k] for k in ("raw_joserfc_per_s", "verifier_per_s", "verifier_ratio",
                                   "http_with_middleware_per_s", "http_with_middleware_ratio")}


def gc_figures(families: int) -> dict[str, Any] | None:
    """bench_gc.py on a table of ``families`` (half of them dead): the collector's throughput and
    what a pass does to rotations. None if it failed."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        done = subprocess.run([sys.executable, str(HERE / "bench_gc.py"), "--families", str(families),
                               "--rotation-seconds", "2", "--json", out.name], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            print(f"bench_gc.py failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
            return None
        return dict(json.loads(Path(out.name).read_text()))


# --- one server's run -----------------------------------------------------------------------------


def tessera_env(data_dir: Path, port: int, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update({
        "TESSERA_DATA_DIR": str(data_dir), "TESSERA_HOST": "127.0.0.1", "TESSERA_PORT": str(port),
        "TESSERA_ISSUER": f"http://127.0.0.1:{port}", "TESSERA_SIGNING_ALG": "ES256",
        "TESSERA_ACCESS_TOKEN_TTL": "300", "TESSERA_WORKERS": str(workers),
    })
    return env


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    result = subprocess.run([str(BIN / "tessera"), *args, "--json"], input=stdin, env=env,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"tessera {' '.join(args)}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def placement(mode: str) -> tuple[str | None, str | None, int]:
    """(server CPU, wrk CPU, wrk threads): 1p pins the server to CPU 1 and wrk to CPU 0; 2w pins nothing."""
    return ("1", "0", 1) if mode == "1p" else (None, None, 2)


def start_tessera(mode: str, work: Path, name: str, users: bool = True) -> tuple[Server, str]:
    """A Tessera for ``mode`` on a fresh embedded database with the bench client (and users), ready."""
    port = free_port()
    env = tessera_env(work / name, port, 2 if mode == "2w" else 1)
    grant_types = "client_credentials,password,refresh_token"
    # Create the client and user before the server starts: the CLI brings the embedded database up.
    try:
        cli(env, "clients", "create", CLIENT_ID, "--grant-types", grant_types, "--scopes", "api.read api.write",
            "--audiences", AUDIENCE, "--secret-stdin", stdin=CLIENT_SECRET)
    except RuntimeError:
        cli(env, "clients", "create", CLIENT_ID, "--grant-types", "client_credentials,password", "--scopes",
            "api.read api.write", "--audiences", AUDIENCE, "--secret-stdin", stdin=CLIENT_SECRET)
    if users:
        cli(env, "users", "create", USERNAME, "--password-stdin", stdin=PASSWORD)
        add_login_users(env, LOGIN_USERS)
    server_cpu = placement(mode)[0]
    server = Server(pinned(server_cpu) + [str(BIN / "tessera"), "serve"], env, work / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/readyz", server)
    return server, base


def run_tessera(mode: str, endpoints: list[str], args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    server_cpu, wrk_cpu, threads = placement(mode)
    server, base = start_tessera(mode, work, f"tessera-{mode}")
    results: dict[str, dict[str, Any]] = {}
    try:
        login = {"grant_type": "password", "username": USERNAME, "password": PASSWORD, "scope": "api.read"}
        metadata = json.loads(urllib.request.urlopen(base + "/.well-known/oauth-authorization-server").read())
        wrk(base + "/token", "form.lua", 3, args.conns, wrk_cpu, threads, CC_FORM)  # warm-up
        for endpoint in endpoints:
            if endpoint == "cc":
                spec = ("/token", "form.lua", CC_FORM)
            elif endpoint == "password":
                bodies = work / f"logins-{mode}.txt"
                bodies.write_text("".join(
                    urllib.parse.urlencode({**login, "username": f"{USERNAME}-{n}"}) + "\n" for n in range(LOGIN_USERS)
                ))
                logins = {"BODIES_FILE": str(bodies), "AUTH": AUTH}
                wrk(base + "/token", "form_cycle.lua", args.warmup, LOGIN_CONNS, wrk_cpu, threads, logins)
                results[endpoint] = argon2_limit_around(server_cpu, lambda: wrk(
                    base + "/token", "form_cycle.lua", args.duration, LOGIN_CONNS, wrk_cpu, threads, logins))
                continue
            elif endpoint == "jwks":
                spec = ("/.well-known/jwks.json", "get.lua", {})
            elif endpoint == "introspect":
                if "introspection_endpoint" not in metadata:
                    continue
                token = post_form(base + "/token", {"grant_type": "client_credentials"})["access_token"]
                spec = ("/introspect", "form.lua", {"BODY": "token=" + token, "AUTH": AUTH})
            elif endpoint == "refresh":
                first = post_form(base + "/token", login)
                if "refresh_token" not in first:
                    continue
                pool = work / f"tokens-{mode}.txt"
                # wrk asks for a connection's next request before it hands over the previous answer, so
                # a chain needs two seed tokens per connection; the warm-up spends one set, the run the other.
                per_run = 2 * args.conns + 4
                tokens = [first["refresh_token"]] + [
                    post_form(base + "/token", login)["refresh_token"] for _ in range(2 * per_run - 1)
                ]
                for part, seconds in ((tokens[:per_run], args.warmup), (tokens[per_run:], args.duration)):
                    pool.write_text("\n".join(part) + "\n")
                    result = wrk(base + "/token", "refresh_chain.lua", seconds, args.conns, wrk_cpu, threads,
                                 {"TOKENS_FILE": str(pool), "WRK_THREADS": str(threads), "AUTH": AUTH})
                results[endpoint] = result
                continue
            else:
                continue
            path, script, extra = spec
            wrk(base + path, script, args.warmup, args.conns, wrk_cpu, threads, extra)
            results[endpoint] = wrk(base + path, script, args.duration, args.conns, wrk_cpu, threads, extra)
    finally:
        server.stop()
    return results


def run_scaling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """client_credentials with one worker pinned and with two, measured in turn (1p, 2w, 1p, 2w, ...)
    with both servers up, and their ratio taken per round. On a shared VM one core's speed drifts
    by tens of percent within a minute; the table's 1p and 2w figures are minutes apart, so their
    ratio carries that drift, where a round's two runs share it (compare.py interleaves for the
    same reason)."""
    servers: dict[str, tuple[Server, str]] = {}
    rounds = []
    try:
        for mode in ("1p", "2w"):
            servers[mode] = start_tessera(mode, work, f"scaling-{mode}", users=False)
            _, wrk_cpu, threads = placement(mode)
            wrk(servers[mode][1] + "/token", "form.lua", args.warmup, args.conns, wrk_cpu, threads, CC_FORM)
        for _ in range(args.scaling_rounds):
            rps = {}
            for mode, (_, base) in servers.items():
                _, wrk_cpu, threads = placement(mode)
                wrk(base + "/token", "form.lua", 1, args.conns, wrk_cpu, threads, CC_FORM)
                result = wrk(base + "/token", "form.lua", args.scaling_duration, args.conns, wrk_cpu, threads, CC_FORM)
                if result["errors"]:
                    raise RuntimeError(f"scaling {mode}: {result['errors']} failed requests")
                rps[mode] = result["rps"]
            rounds.append({**rps, "ratio": rps["2w"] / rps["1p"]})
    finally:
        for server, _ in servers.values():
            server.stop()
    return {"rounds": rounds, "ratio": statistics.median(r["ratio"] for r in rounds), "seconds": args.scaling_duration}


def run_hello(mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    cpu, wrk_cpu, threads = placement(mode)
    server = Server(pinned(cpu) + [sys.executable, str(HERE / "hello.py"), "--port", str(port)], dict(os.environ),
                    work / f"hello-{mode}.log")
    try:
        url = f"http://127.0.0.1:{port}/token"
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        wrk(url, "form.lua", args.warmup, args.conns, wrk_cpu, threads, CC_FORM)
        return wrk(url, "form.lua", args.duration, args.conns, wrk_cpu, threads, CC_FORM)
    finally:
        server.stop()


# --- report ----------------------------------------------------------------------------------------

LIMIT_OF = {
    "cc": ("aiohttp hello", "hello"),
    "jwks": ("aiohttp hello", "hello"),
    "introspect": ("aiohttp hello", "hello"),
    "password": ("argon2 verifications/s on the core(s)", "argon2"),
    "refresh": ("aiohttp hello", "hello"),
}


def report(data: dict[str, Any]) -> str:
    lines = [
        f"# Tessera bench: {data['meta']['when']} on {data['meta']['machine']}",
        "",
        "| mode | endpoint | req/s | p50 ms | p99 ms | errors | limit | limit value | ratio |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    limits = data["limits"]
    scaling = data.get("scaling")
    for mode, results in data["tessera"].items():
        hello = data["hello"].get(mode, {}).get("rps")
        cores = 1 if mode == "1p" else 2
        for endpoint, result in results.items():
            name, key = LIMIT_OF[endpoint]
            per_core = result.get("argon2_verify_per_s_around", limits["argon2_verify_per_s"])
            value = hello if key == "hello" else per_core * cores
            ratio = f"{result['rps'] / value:.2f}" if value else "-"
            lines.append(
                f"| {mode} | {endpoint} | {result['rps']:,.0f} | {result['p50_ms']:.1f} | {result['p99_ms']:.1f} |"
                f" {result['errors']} | {name} | {value:,.0f} | {ratio} |"
            )
        if scaling and mode == "2w":
            lines.append(f"| 2w/1p | cc | | | | | 1-worker cc, in turn | | {scaling['ratio']:.2f} |")
    lines.append("")
    if scaling:
        rounds = scaling["rounds"]
        lines.append(
            f"- two workers / one on client_credentials, measured in turn with both servers up "
            f"({len(rounds)} rounds of {scaling['seconds']:g} s): "
            + ", ".join(f"{r['2w']:,.0f}/{r['1p']:,.0f} = {r['ratio']:.2f}" for r in rounds)
            + f"; median {scaling['ratio']:.2f}"
        )
    if "cc" in data["tessera"].get("2w", {}) and "cc" in data["tessera"].get("1p", {}):
        lines.append(f"- the table's own 2w and 1p cc runs, minutes apart: "
                     f"{data['tessera']['2w']['cc']['rps'] / data['tessera']['1p']['cc']['rps']:.2f}")
    around = ", ".join(f"{mode} {'/'.join(map(str, results['password']['argon2_verify_ms_around']))}"
                       for mode, results in data["tessera"].items()
                       if "argon2_verify_ms_around" in results.get("password", {}))
    lines += [
        f"- raw ES256 signing (cryptography): {limits['raw_es256_sign_per_s']:,.0f}/s; Tessera's signer: "
        f"{limits['tessera_signer_per_s']:,.0f}/s (ratio {limits['tessera_signer_per_s'] / limits['raw_es256_sign_per_s']:.2f})",
        f"- argon2id verify at {limits['argon2_profile']}: {limits['argon2_verify_ms']:.1f} ms "
        f"({limits['argon2_verify_per_s']:.1f}/s per core) at the start"
        + (f"; the password rows' limit is the median of {2 * ARGON2_AROUND} verifications taken just before and"
           f" after their run (ms, before/after: {around})" if around else ""),
    ]
    verify = data.get("verifier")
    if verify:
        lines.append(
            f"- verifier (ES256, in-process): {verify['verifier_per_s']:,}/s against raw joserfc "
            f"{verify['raw_joserfc_per_s']:,}/s (ratio {verify['verifier_ratio']:.2f}); through the aiohttp "
            f"middleware over HTTP {verify['http_with_middleware_per_s']:,}/s"
        )
    gc = data.get("gc")
    if gc:
        alone, janitor = gc["alone"], gc["with_rotations"]
        rotations, during = janitor["rotations_alone"], janitor["rotations_during_gc"]
        lines.append(
            f"- garbage collection (bench_gc.py, {gc['families']:,} families, {100 * gc['dead_fraction']:g}% dead): "
            f"{alone['families_per_s']:,} families/s, {alone['pages_per_s']:,} heap pages/s, statement p99 "
            f"{alone['statement_p99_ms']:.0f} ms; rotation p99 {rotations['p99_ms']:.1f} ms alone, "
            f"{during['p99_ms']:.1f} ms during a janitor pass"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="1p,2w")
    parser.add_argument("--endpoints", default="cc,password,refresh,jwks,introspect,code,login")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--scaling-rounds", type=int, default=3,
                        help="rounds of 1p and 2w client_credentials in turn, for the 2w/1p ratio (0: none)")
    parser.add_argument("--scaling-duration", type=float, default=5.0)
    parser.add_argument("--sign-in-rounds", type=int, default=3,
                        help="code: rounds of Tessera and oidc-provider in turn (bench_sign_in.py)")
    parser.add_argument("--sign-in-duration", type=float, default=5.0,
                        help="seconds of each measured code and login run (codes are minted for each first)")
    parser.add_argument("--pkjwt-rounds", type=int, default=3,
                        help="cc_pkjwt: rounds of the secret, private_key_jwt and no-register servers in turn")
    parser.add_argument("--gc-families", type=int, default=0,
                        help="also run bench_gc.py on a table of this many families (about 20 s for 200000; 0: no)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with on_cpu(1 if (os.cpu_count() or 1) > 1 else 0):
        limits = {**signing_limits(1.0), **argon2_limit()}
    modes = [m for m in args.modes.split(",") if m]
    endpoints = [e for e in args.endpoints.split(",") if e]
    data: dict[str, Any] = {
        "meta": {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine":
                 f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
                 "args": vars(args)},
        "limits": limits, "hello": {}, "tessera": {},
    }
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        work = Path(tmp)
        for mode in modes:
            if not set(endpoints) & set(LIMIT_OF):
                break  # only endpoints with drivers of their own (bench_sign_in.py, ...)
            data["hello"][mode] = run_hello(mode, args, work)
            data["tessera"][mode] = run_tessera(mode, endpoints, args, work)
        if args.scaling_rounds > 0 and {"1p", "2w"} <= set(modes) and "cc" in endpoints:
            data["scaling"] = run_scaling(args, work)
        if {"code", "login"} & set(endpoints):
            import bench_sign_in

            data["sign_in"] = bench_sign_in.run(args, work, endpoints)
        if "cc_pkjwt" in endpoints:
            import bench_pkjwt

            data["pkjwt"] = bench_pkjwt.run(args, work)
    data["verifier"] = verifier_limits(2.0)
    if args.gc_families:
        data["gc"] = gc_figures(args.gc_families)
    text = report(data)
    if "sign_in" in data:
        import bench_sign_in

        text += "\n" + bench_sign_in.report(data["sign_in"])
    if "pkjwt" in data:
        import bench_pkjwt

        text += "\n" + bench_pkjwt.report(data["pkjwt"])
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(data, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
