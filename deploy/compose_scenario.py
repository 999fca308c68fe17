"""The compose deployment, run for real: deploy/ci-compose.sh builds the images and tears the stack
down; this brings it up and checks it, each step one line (with what it measured) or one clear
failure (exit status 1):

 1. up --wait: PostgreSQL, tessera-1, tessera-2, nginx and the resource server healthy (the time
    from `up` to all of them healthy is measured);
 2. clients as code: the clients of deploy/clients.toml are registered at start
    (TESSERA_CLIENTS_FILE), and applying the same file again changes nothing;
 3. tokens through nginx, answered by both instances (nginx's access log names each upstream),
    accepted by the example resource server; a forged token refused;
 4. X-Forwarded-For: a caller inside the network that keeps failing the client's secret is
    throttled; Tessera's "login throttled" line names that caller's address, not nginx's, and the
    same client from another address is not throttled;
 5. key rotation: `tessera keys rotate` in tessera-1; both instances then serve the same JWKS and
    sign with the new key, and the tokens of both verify, at the resource server too;
 6. rolling restart: deploy/rolling-restart.sh takes tessera-1 out of nginx's rotation, restarts
    it, waits until it is healthy and puts it back, then tessera-2, while a load generator asks
    for tokens through nginx without pause: every answer must be a 200 with a valid token
    ("N requests, 0 failed").

    COMPOSE="docker compose -f deploy/docker-compose.yml" .venv/bin/python deploy/compose_scenario.py

Settings (environment): COMPOSE, the compose command and its -f (required); LB_URL and
RESOURCE_URL, where this host reaches nginx and the resource server (default
http://127.0.0.1:8080 and http://127.0.0.1:9000, the compose file's defaults); SECRETS, the folder
make-secrets.sh filled (default deploy/secrets); LOAD_CONCURRENCY, the load generator's
concurrent requests (default 8). The stack must run with TESSERA_JWKS_MAX_AGE of a few seconds,
or step 5 waits until the next key has been published that long.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.jwk import KeySet

DEPLOY = Path(__file__).resolve().parent
ISSUER = "http://localhost:8080"  # docker-compose.yml's default TESSERA_ISSUER
AUDIENCE = "https://orders.example"
CLIENT_ID = "orders-service"  # deploy/clients.toml
SECRET_FILE = "orders_service_secret"
LB_ADDRESS = "172.30.89.10"  # docker-compose.yml: lb's fixed address, the one trusted proxy
INSTANCES = {"tessera-1": "172.30.89.11", "tessera-2": "172.30.89.12"}
LOGIN_MAX_FAILURES = 10  # TESSERA_LOGIN_MAX_FAILURES, its default
UP_TIMEOUT = 240
LOAD_LIMIT = 240.0  # seconds: the load generator stops by then whatever happens
ALGORITHMS = ["ES256", "ES384", "RS256", "PS256", "EdDSA"]


class ScenarioFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"== compose {time.strftime('%H:%M:%S')} {message}", flush=True)


def check(condition: object, message: str) -> None:
    if not condition:
        raise ScenarioFailed(message)


@dataclass
class Stack:
    compose: list[str]
    lb: str
    resource: str
    secret: str

    def run(self, *args: str, timeout: float = 120) -> str:
        try:
            result = subprocess.run([*self.compose, *args], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ScenarioFailed(f"compose {' '.join(args[:4])} took more than {timeout:g} s") from None
        if result.returncode != 0:
            raise ScenarioFailed(f"compose {' '.join(args[:4])} exited {result.returncode}: {result.stderr.strip()[-1000:]}")
        return result.stdout

    def exec(self, service: str, *command: str) -> str:
        return self.run("exec", "-T", service, *command)

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).strip()

    def inspect(self, service: str, template: str) -> str:
        result = subprocess.run(["docker", "inspect", "-f", template, self.container(service)],
                                capture_output=True, text=True, timeout=30)
        return result.stdout.strip()

    def health(self, service: str) -> str:
        return self.inspect(service, "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}")

    def logs(self, service: str, since: str | None = None) -> list[dict[str, Any]]:
        """The service's JSON log lines (nginx's and Tessera's; other lines are skipped)."""
        args = ["logs", "--no-log-prefix", "--no-color", *(["--since", since] if since else []), service]
        lines = []
        for line in self.run(*args).splitlines():
            if line.lstrip().startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        return lines


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def jose_header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))  # type: ignore[no-any-return]


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The token's claims, checked against the key set: signature, typ, iss, aud, exp."""
    check(jose_header(token).get("typ") == "at+jwt", "an access token without typ at+jwt")
    claims = dict(jwt.decode(token, KeySet.import_key_set(jwks), algorithms=ALGORITHMS).claims)  # type: ignore[arg-type]
    audiences = [claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"]
    check(claims["iss"] == ISSUER and AUDIENCE in audiences, f"unexpected iss or aud: {claims['iss']} {claims['aud']}")
    check(claims["exp"] > time.time() and claims["client_id"] == CLIENT_ID, "an expired token, or another client's")
    return claims


async def get_token(http: aiohttp.ClientSession, base: str, secret: str, scope: str = "orders.read") -> str:
    async with http.post(f"{base}/token", data={"grant_type": "client_credentials", "scope": scope},
                         headers=basic(CLIENT_ID, secret)) as response:
        body = await response.text()
        check(response.status == 200, f"POST {base}/token answered {response.status}: {body[:300]}")
        return json.loads(body)["access_token"]  # type: ignore[no-any-return]


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- the steps ----------------------------------------------------------------------------------


def step_up(stack: Stack) -> None:
    started = time.monotonic()
    stack.run("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 60)
    elapsed = time.monotonic() - started
    states = {service: stack.health(service) for service in ("postgres", "tessera-1", "tessera-2", "lb", "resource-server")}
    check(all(state in ("healthy", "running") for state in states.values()), f"not all up: {states}")
    say(f"stack healthy in {elapsed:.1f} s (up --wait): " + ", ".join(f"{s} {h}" for s, h in states.items()))


def step_clients(stack: Stack) -> None:
    listed = json.loads(stack.exec("tessera-1", "tessera", "clients", "list", "--json"))
    registered = {client["client_id"]: client for client in listed}
    check(CLIENT_ID in registered, f"{CLIENT_ID} from deploy/clients.toml is not registered: {sorted(registered)}")
    check(set(registered[CLIENT_ID]["scopes"]) == {"orders.read", "orders.write"}, f"scopes: {registered[CLIENT_ID]}")
    again = json.loads(stack.exec("tessera-2", "tessera", "clients", "apply", "--json", "/etc/tessera/clients.toml"))
    check(again.get("created") == 0 and again.get("updated") == 0 and again.get("deleted") == 0,
          f"applying deploy/clients.toml again changed something: {again}")
    say(f"clients from deploy/clients.toml (TESSERA_CLIENTS_FILE): {', '.join(sorted(registered))} registered;"
        f" applied again: {again.get('unchanged')} unchanged, nothing created, updated or deleted")


async def step_tokens(stack: Stack, http: aiohttp.ClientSession) -> None:
    since = iso_now()
    await asyncio.sleep(1)  # `logs --since` has a resolution of one second
    status, jwks = await get_json(http, f"{stack.lb}/.well-known/jwks.json")
    check(status == 200, f"JWKS through nginx: {status}")
    tokens = [await get_token(http, stack.lb, stack.secret, "orders.read orders.write") for _ in range(8)]
    for token in tokens:
        verify(token, jwks)
    upstreams = Counter(line.get("upstream") for line in stack.logs("lb", since) if line.get("uri") == "/token")
    check(set(upstreams) == {f"{address}:8080" for address in INSTANCES.values()},
          f"nginx did not send tokens requests to both instances: {dict(upstreams)}")
    auth = {"Authorization": f"Bearer {tokens[0]}"}
    status, me = await get_json(http, f"{stack.resource}/me", headers=auth)
    check(status == 200 and me.get("client_id") == CLIENT_ID, f"resource server /me: {status} {me}")
    async with http.post(f"{stack.resource}/orders", json={"item": "tea", "quantity": 2}, headers=auth) as response:
        check(response.status == 201, f"resource server POST /orders: {response.status}")
    status, orders = await get_json(http, f"{stack.resource}/orders", headers=auth)
    check(status == 200 and len(orders["orders"]) == 1, f"resource server GET /orders: {status} {orders}")
    forged = tokens[0][:-4] + ("AAAA" if not tokens[0].endswith("AAAA") else "BBBB")
    status, _ = await get_json(http, f"{stack.resource}/me", headers={"Authorization": f"Bearer {forged}"})
    check(status == 401, f"resource server took a forged token: {status}")
    say(f"tokens through nginx: 8 issued by both instances ({', '.join(f'{u} {n}' for u, n in sorted(upstreams.items()))});"
        " the resource server accepted them (/me, POST and GET /orders) and refused a forged one (401)")


PROBE = """
import base64, json, sys, urllib.error, urllib.request
statuses = []
for _ in range(int(sys.argv[1])):
    request = urllib.request.Request("http://lb:8080/token", data=b"grant_type=client_credentials", headers={
        "Authorization": "Basic " + base64.b64encode(b"orders-service:not-the-secret-at-all").decode(),
        "Content-Type": "application/x-www-form-urlencoded"})
    try:
        statuses.append(urllib.request.urlopen(request, timeout=10).status)
    except urllib.error.HTTPError as error:
        statuses.append(error.code)
print(json.dumps(statuses))
"""


async def step_forwarded_for(stack: Stack, http: aiohttp.ClientSession) -> None:
    """The resource server's container is a caller of its own inside the network: through nginx it
    fails the client's secret until throttled."""
    caller = stack.inspect("resource-server", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    check(caller and caller != LB_ADDRESS, f"the resource server's address: {caller!r}")
    statuses = json.loads(stack.exec("resource-server", "python", "-c", PROBE, str(LOGIN_MAX_FAILURES + 2)))
    check(statuses[:LOGIN_MAX_FAILURES] == [401] * LOGIN_MAX_FAILURES and statuses[-1] == 429,
          f"wrong secrets through nginx from {caller}: {statuses}")
    # The same client, from this host (another address behind the same nginx): not throttled.
    await get_token(http, stack.lb, stack.secret)
    throttled: list[dict[str, Any]] = []
    for _ in range(20):
        throttled = [line for service in INSTANCES for line in stack.logs(service)
                     if line.get("event") == "login_throttled"]
        if throttled:
            break
        await asyncio.sleep(0.5)
    check(throttled, "no login_throttled line in either instance's log")
    remotes = {line.get("remote") for line in throttled}
    check(remotes == {caller}, f"the throttle named {remotes}, not the caller {caller} (nginx is {LB_ADDRESS})")
    say(f"X-Forwarded-For: {LOGIN_MAX_FAILURES} wrong secrets from {caller} through nginx, then 429; Tessera's"
        f" log: login throttled, remote {caller} (nginx is {LB_ADDRESS}); the same client from this host: 200")


def keys(stack: Stack) -> dict[str, str]:
    listed = json.loads(stack.exec("tessera-1", "tessera", "keys", "list", "--json"))
    return {key["state"]: key["kid"] for key in listed if key["state"] in ("active", "next")}


async def step_rotation(stack: Stack, http: aiohttp.ClientSession) -> None:
    before = keys(stack)
    # The CLI refuses to rotate before the next key has been published for TESSERA_JWKS_MAX_AGE.
    rotated = ""
    for _ in range(120):
        try:
            rotated = stack.exec("tessera-1", "tessera", "keys", "rotate").strip()
            break
        except ScenarioFailed as refused:
            if "has been published for" not in str(refused):  # any refusal but "too early" is a failure
                raise
            await asyncio.sleep(1)
    check(rotated, "tessera keys rotate was refused for two minutes")
    started = time.monotonic()
    after = keys(stack)
    check(after["active"] == before["next"] and after["next"] not in before.values(), f"keys {before} then {after}")
    # Both instances, asked directly: the same JWKS, and tokens signed with the new active key.
    agreed = None
    for _ in range(100):
        sets, kids = [], []
        for address in INSTANCES.values():
            sets.append((await get_json(http, f"http://{address}:8080/.well-known/jwks.json"))[1])
            kids.append(jose_header(await get_token(http, f"http://{address}:8080", stack.secret))["kid"])
        if sets[0] == sets[1] and set(kids) == {after["active"]}:
            agreed = time.monotonic() - started
            break
        await asyncio.sleep(0.1)
    check(agreed is not None, f"the instances did not agree on the keys: kids {kids}")
    jwks = sets[0]
    published = {key["kid"] for key in jwks["keys"]}
    check({before["active"], after["active"], after["next"]} <= published, f"JWKS after the rotation: {published}")
    for address in INSTANCES.values():
        token = await get_token(http, f"http://{address}:8080", stack.secret)
        verify(token, jwks)
        status, me = await get_json(http, f"{stack.resource}/me", headers={"Authorization": f"Bearer {token}"})
        check(status == 200, f"the resource server refused a token of {address} signed by {after['active']}: {status} {me}")
    say(f"keys rotated in tessera-1 ({rotated}); both instances served the same JWKS"
        f" ({len(published)} keys) and signed with {after['active']} {agreed:.2f} s later; their tokens verify,"
        " and the resource server accepts them")


@dataclass
class Load:
    """Clients asking for tokens through nginx, without pause, until stopped."""

    base: str
    secret: str
    concurrency: int
    statuses: Counter[str] = field(default_factory=Counter)
    tokens: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.sent - self.statuses["200"]

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            deadline = time.monotonic() + LOAD_LIMIT
            await asyncio.gather(*(self.client(http, deadline) for _ in range(self.concurrency)))

    async def client(self, http: aiohttp.ClientSession, deadline: float) -> None:
        form = {"grant_type": "client_credentials", "scope": "orders.read"}
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                async with http.post(f"{self.base}/token", data=form, headers=basic(CLIENT_ID, self.secret)) as response:
                    body = await response.text()
                    self.statuses[str(response.status)] += 1
                    if response.status == 200:
                        if self.sent % 25 == 0:
                            self.tokens.append(json.loads(body)["access_token"])
                    elif len(self.failures) < 10:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {response.status} {body[:200]}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                self.statuses[type(error).__name__] += 1
                if len(self.failures) < 10:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {type(error).__name__}: {error}")


async def step_rolling_restart(stack: Stack, http: aiohttp.ClientSession, concurrency: int) -> None:
    """deploy/rolling-restart.sh (each instance out of nginx, restarted, healthy, back in), under load."""
    load = Load(stack.lb, stack.secret, concurrency)
    since = iso_now()
    runner = asyncio.create_task(load.run())
    started = time.monotonic()
    try:
        await asyncio.sleep(3)
        check(load.sent > 0 and not runner.done(), "the load generator did not start")
        before = load.sent
        process = await asyncio.create_subprocess_exec(
            str(DEPLOY / "rolling-restart.sh"), *INSTANCES, env={**os.environ, "COMPOSE": shlex.join(stack.compose)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            print(f"   {line}   [load: {load.sent - before} requests, {load.failed} failed]", flush=True)
        check(await process.wait() == 0, "deploy/rolling-restart.sh failed")
        await asyncio.sleep(3)
    finally:
        load.stop.set()
        await runner
    elapsed = time.monotonic() - started
    jwks = (await get_json(http, f"{stack.lb}/.well-known/jwks.json"))[1]
    for token in load.tokens:
        verify(token, jwks)
    lines = [line for line in stack.logs("lb", since) if line.get("uri") == "/token"]
    upstreams = Counter(str(line.get("upstream")) for line in lines)
    last = Counter(str(line.get("upstream")) for line in lines[-100:])
    say(f"rolling restart under load: {load.sent} requests, {load.failed} failed in {elapsed:.1f} s"
        f" ({load.sent / elapsed:.0f}/s, {concurrency} concurrent); statuses {dict(load.statuses)};"
        f" nginx's upstreams {dict(upstreams)}; {len(load.tokens)} sampled tokens verified")
    for failure in load.failures:
        print(f"   failed: {failure}", flush=True)
    check(load.failed == 0, f"{load.failed} of {load.sent} requests failed during the rolling restart")
    check(set(last) == {f"{address}:8080" for address in INSTANCES.values()},
          f"nginx did not take both instances back: {dict(last)}")


async def scenario(stack: Stack, concurrency: int) -> None:
    step_up(stack)
    step_clients(stack)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await step_tokens(stack, http)
        await step_forwarded_for(stack, http)
        await step_rotation(stack, http)
        await step_rolling_restart(stack, http, concurrency)


def main() -> int:
    compose = shlex.split(os.environ.get("COMPOSE", ""))
    if not compose:
        print("compose_scenario: COMPOSE is required (the compose command and its -f)", file=sys.stderr)
        return 2
    secrets = Path(os.environ.get("SECRETS", DEPLOY / "secrets"))
    stack = Stack(
        compose=compose,
        lb=os.environ.get("LB_URL", "http://127.0.0.1:8080").rstrip("/"),
        resource=os.environ.get("RESOURCE_URL", "http://127.0.0.1:9000").rstrip("/"),
        secret=(secrets / SECRET_FILE).read_text().strip(),
    )
    started = time.monotonic()
    try:
        asyncio.run(scenario(stack, int(os.environ.get("LOAD_CONCURRENCY", "8"))))
    except ScenarioFailed as failure:
        say(f"FAILED: {failure}")
        return 1
    say(f"scenario passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
