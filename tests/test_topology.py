"""The docker-compose topology as processes on 127.0.0.1: PostgreSQL (the test database), two
``tessera serve`` instances, nginx running deploy/nginx.conf as the load balancer, and the whole flow
through it, then a rolling restart of both instances under load.

Each step of the flow is one function in ``FLOW``; a feature that lands later adds its step there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc.jwk import KeySet

from tests.helpers import PASSWORD, basic, decode_segment, eventually, verify_with_joserfc
from tests.processes import Process, Processes, cli, free_port, wait_until_ready

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx-light): it is the load balancer here"
)
AUDIENCE = "https://orders.example"
NGINX_FAIL_TIMEOUT = 2.0


def nginx_conf(listen: int, upstreams: list[int]) -> str:
    """deploy/nginx.conf as compose mounts it, with the container names and port made local."""
    text = (DEPLOY / "nginx.conf").read_text()
    assert text.count(f"fail_timeout={NGINX_FAIL_TIMEOUT:g}s") == len(upstreams)
    servers = re.findall(r"server tessera-\d+:8080", text)
    assert len(servers) == len(upstreams), servers
    for server, port in zip(servers, upstreams):
        text = text.replace(server, f"server 127.0.0.1:{port}", 1)
    assert text.count("listen 8080;") == 1
    return text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")


@dataclass
class Topology:
    processes: Processes
    env: dict[str, str]
    ports: list[int]
    lb: str
    instances: list[Process]
    nginx: Process
    state: dict[str, Any] = field(default_factory=dict)

    def start_instance(self, n: int) -> Process:
        process = self.processes.serve(f"tessera-{n + 1}", {**self.env, "TESSERA_PORT": str(self.ports[n])})
        if n < len(self.instances):
            self.instances[n] = process
        else:
            self.instances.append(process)
        return process

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.nginx.stdout().splitlines() if line.strip()]


@pytest.fixture
async def topology(processes, env, tmp_path):
    lb_port = free_port()
    ports = [free_port(), free_port()]
    issuer = f"http://127.0.0.1:{lb_port}"
    topo_env = {**env, "TESSERA_ISSUER": issuer}
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(lb_port, ports))
    assert NGINX is not None
    nginx = processes.start(
        "nginx", [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", "stderr", "-g", f"daemon off; pid {tmp_path}/nginx.pid;"],
        os.environ.copy(),
    )
    topo = Topology(processes, topo_env, ports, issuer, [], nginx)
    for n in range(2):
        topo.start_instance(n)
    for n, process in enumerate(topo.instances):
        await wait_until_ready(f"http://127.0.0.1:{ports[n]}/readyz", process)
    await wait_until_ready(f"{issuer}/readyz", nginx)
    created = cli(topo_env, "clients", "create", "svc", "--grant-types", "client_credentials", "--scopes", "read write",
                  "--audiences", AUDIENCE, "--json")
    assert created.returncode == 0, created.stderr
    topo.state["svc_secret"] = json.loads(created.stdout)["client_secret"]
    return topo


# --- the flow, one step per function ---------------------------------------------------------------


async def metadata_names_the_issuer_and_endpoints(topo: Topology, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{topo.lb}/.well-known/oauth-authorization-server") as response:
        document = await response.json()
    assert document["issuer"] == topo.lb
    assert document["token_endpoint"] == f"{topo.lb}/token"
    topo.state["grants"] = document["grant_types_supported"]


async def jwks_is_served_through_the_balancer(topo: Topology, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{topo.lb}/.well-known/jwks.json") as response:
        assert response.status == 200
        topo.state["jwks"] = KeySet.import_key_set(await response.json(content_type=None))


async def client_credentials_token_verifies_against_the_jwks(topo: Topology, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{topo.lb}/token", data={"grant_type": "client_credentials", "scope": "read"},
                         headers=basic("svc", topo.state["svc_secret"])) as response:
        assert response.status == 200
        body = await response.json()
        request_id = response.headers["X-Request-Id"]
    claims = verify_with_joserfc(body["access_token"], topo.state["jwks"]).claims
    assert (claims["iss"], claims["aud"], claims["scope"]) == (topo.lb, AUDIENCE, "read")
    topo.state["access_token"] = body["access_token"]
    # nginx's $request_id travels on: the same id in nginx's access log and in Tessera's log line.
    # Both write their line once the answer is sent (Tessera at the end of that turn of its event
    # loop), so either may land a moment after the client has the answer.
    def logged() -> tuple[bool, bool]:
        tessera_ids = {line.get("request_id") for p in topo.instances for line in p.log_lines()}
        return request_id in {line["request_id"] for line in topo.access_log()}, request_id in tessera_ids

    await eventually(lambda: all(logged()), timeout=2, interval=0.01, fail=False)
    assert logged() == (True, True)


async def resource_server_accepts_the_token(topo: Topology, http: aiohttp.ClientSession) -> None:
    # MERGE: deploy/resource_server.py (the offline-verifier branch) belongs here: start it with
    # TESSERA_ISSUER=topo.lb, TESSERA_JWKS_URL=f"{topo.lb}/.well-known/jwks.json",
    # RESOURCE_AUDIENCE=AUDIENCE, RESOURCE_PORT=free_port() through topo.processes, wait for its
    # /health, then GET /me with topo.state["access_token"] (200) and with a tampered token (401).
    if not (DEPLOY / "resource_server.py").exists():
        return


async def refresh_rotates_and_reuse_revokes_the_family(topo: Topology, http: aiohttp.ClientSession) -> None:
    if "refresh_token" not in topo.state["grants"]:
        return  # the refresh-token feature is not on this branch yet
    made = [
        cli(topo.env, "clients", "create", "web", "--grant-types", "password,refresh_token", "--scopes", "profile",
            "--audiences", AUDIENCE, "--json"),
        cli(topo.env, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n"),
    ]
    assert [m.returncode for m in made] == [0, 0], [m.stderr for m in made]
    auth = basic("web", json.loads(made[0].stdout)["client_secret"])
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    async with http.post(f"{topo.lb}/token", data=form, headers=auth) as response:
        first = (await response.json())["refresh_token"]
    async with http.post(f"{topo.lb}/token", data={"grant_type": "refresh_token", "refresh_token": first}, headers=auth) as response:
        assert response.status == 200
        second = (await response.json())["refresh_token"]
    async with http.post(f"{topo.lb}/token", data={"grant_type": "refresh_token", "refresh_token": first}, headers=auth) as response:
        assert (response.status, (await response.json())["error"]) == (400, "invalid_grant")
    async with http.post(f"{topo.lb}/token", data={"grant_type": "refresh_token", "refresh_token": second}, headers=auth) as response:
        assert (response.status, (await response.json())["error"]) == (400, "invalid_grant")  # the family is revoked


async def key_rotation_keeps_tokens_verifiable(topo: Topology, http: aiohttp.ClientSession) -> None:
    # MERGE: with `tessera keys rotate` (the key-lifecycle branch): rotate through the CLI, then
    # check that both instances sign with the new kid once they have reloaded the key set, and that
    # topo.state["access_token"] (signed by the old key) still verifies against the served JWKS.
    return


async def metrics_are_not_published_by_the_balancer(topo: Topology, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{topo.lb}/metrics") as response:
        assert response.status == 404
    async with http.get(f"http://127.0.0.1:{topo.ports[0]}/metrics") as response:
        assert response.status == 200  # Prometheus scrapes each instance directly


Step = Callable[[Topology, aiohttp.ClientSession], Awaitable[None]]
FLOW: list[Step] = [
    metadata_names_the_issuer_and_endpoints,
    jwks_is_served_through_the_balancer,
    client_credentials_token_verifies_against_the_jwks,
    resource_server_accepts_the_token,
    refresh_rotates_and_reuse_revokes_the_family,
    key_rotation_keeps_tokens_verifiable,
    metrics_are_not_published_by_the_balancer,
]


async def test_the_whole_flow_runs_through_nginx_and_two_instances(topology):
    async with aiohttp.ClientSession() as http:
        for step in FLOW:
            await step(topology, http)
        # Connections are spread over both instances.
        for _ in range(8):
            async with http.get(f"{topology.lb}/.well-known/jwks.json") as response:
                assert response.status == 200
    upstreams = {line["upstream"] for line in topology.access_log() if line["upstream"]}
    assert upstreams == {f"127.0.0.1:{port}" for port in topology.ports}


async def test_a_rolling_restart_under_load_loses_no_answered_request(topology):
    """SIGTERM one instance, start it again, then the other, while clients keep asking for tokens
    through nginx. Every 200 is a valid token; a refused connection is retried by nginx on the other
    instance (safe even for a POST), and no request Tessera handled is ever answered with an error."""
    secret = topology.state["svc_secret"]
    async with aiohttp.ClientSession() as http:
        await jwks_is_served_through_the_balancer(topology, http)
    answers: list[tuple[int, dict[str, Any]]] = []
    done = asyncio.Event()

    async def client_loop() -> None:
        async with aiohttp.ClientSession() as http:
            while not done.is_set() and len(answers) < 5000:
                async with http.post(f"{topology.lb}/token", data={"grant_type": "client_credentials"},
                                     headers=basic("svc", secret)) as response:
                    text = await response.text()
                    answers.append((response.status, json.loads(text) if response.status == 200 else {"body": text}))

    loops = [asyncio.create_task(client_loop()) for _ in range(4)]
    try:
        for n in range(2):
            await asyncio.sleep(0.5)
            old = topology.instances[n]
            old.signal(signal.SIGTERM)
            assert await asyncio.to_thread(old.wait, 20) == 0
            started = time.monotonic()
            await asyncio.sleep(0.3)  # requests keep coming while it is down
            new = topology.start_instance(n)
            await wait_until_ready(f"http://127.0.0.1:{topology.ports[n]}/readyz", new)
            assert time.monotonic() - started < 30
            # nginx tries a failed instance again after fail_timeout (2 s in deploy/nginx.conf):
            # only then is it back in rotation, and the next one may go.
            await asyncio.sleep(NGINX_FAIL_TIMEOUT + 0.5)
    finally:
        done.set()
        await asyncio.gather(*loops)

    statuses = [status for status, _ in answers]
    assert len(statuses) > 50 and set(statuses) <= {200, 502}, {s: statuses.count(s) for s in set(statuses)}
    # A 502 is nginx's own answer when a connection it had just opened was reset as the listener
    # closed (docs/operations.md: the one race no server closes alone). Such a request must never
    # have reached Tessera: its request id is in no instance's log. And it stays rare.
    failed_ids = {line["request_id"] for line in topology.access_log() if line["status"] == 502}
    handled_ids = {line.get("request_id") for p in topology.processes.started if p.name.startswith("tessera") for line in p.log_lines()}
    assert len(failed_ids) == statuses.count(502) <= max(2, len(statuses) // 500)
    assert not failed_ids & handled_ids
    kids = set()
    for _, body in (answer for answer in answers if answer[0] == 200):
        verify_with_joserfc(body["access_token"], topology.state["jwks"])
        kids.add(decode_segment(body["access_token"].split(".")[0])["kid"])
    assert len(kids) == 1
    # Both restarts happened while the load ran: nginx saw each instance go and come back.
    assert [p.popen.returncode for p in topology.processes.started if p.name.startswith("tessera") and p.popen.poll() is not None] == [0, 0]
