"""SIGTERM during a stream of requests: /readyz turns 503 while the listener is still open, then new
connections are refused, every request that got an answer got a whole and valid one, and the
process exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass

import aiohttp
from joserfc.jwk import KeySet

from tests.helpers import PASSWORD, SECRET, basic, verify_with_joserfc
from tests.processes import free_port, wait_until_ready

DELAY = 1.0


@dataclass
class Outcome:
    started: float
    ended: float
    result: str  # an HTTP status, "refused" (no connection), or "no answer" (closed before any byte)
    body: dict | None = None  # type: ignore[type-arg]


async def one_request(method: str, url: str, **kwargs: object) -> Outcome:
    started = time.monotonic()
    # A new connection each time: what a load balancer without keep-alive does.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        try:
            async with http.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
                body = await response.json(content_type=None)
                return Outcome(started, time.monotonic(), str(response.status), body)
        except aiohttp.ClientConnectorError:
            return Outcome(started, time.monotonic(), "refused")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # Closed, or reset by the kernel (a connection queued as the listener closed), before
            # any byte of an answer: the request was never handled.
            return Outcome(started, time.monotonic(), "no answer")


async def test_sigterm_flips_readyz_then_refuses_new_connections_and_finishes_requests_in_flight(processes, env, admin):
    await admin.client("web", grant_types=("password",), scopes=("profile",))
    await admin.user("alice", PASSWORD)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # A costly argon2 makes every login take a while, so some are always in flight.
    slow = {"TESSERA_ARGON2_MEMORY_KIB": "32768", "TESSERA_ARGON2_TIME_COST": "3"}
    server = processes.serve(
        "tessera", {**env, **slow, "TESSERA_PORT": str(port), "TESSERA_SHUTDOWN_DELAY": str(DELAY)}
    )
    await wait_until_ready(f"{base}/readyz", server)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/.well-known/jwks.json") as response:
            key_set = KeySet.import_key_set(await response.json(content_type=None))

    logins: list[Outcome] = []
    probes: list[Outcome] = []
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}

    async def login_stream() -> None:
        while not logins or logins[-1].result not in ("refused",):
            logins.append(await one_request("POST", f"{base}/token", data=form, headers=basic("web", SECRET)))
            if len(logins) > 400:
                return

    async def readiness_probe() -> None:
        while not probes or probes[-1].result != "refused":
            probes.append(await one_request("GET", f"{base}/readyz"))
            await asyncio.sleep(0.02)
            if len(probes) > 1000:
                return

    streams = [asyncio.create_task(login_stream()) for _ in range(4)]
    probe = asyncio.create_task(readiness_probe())
    await asyncio.sleep(0.8)
    sigterm_at = time.monotonic()
    server.signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*streams, probe), timeout=30)
    returncode = await asyncio.to_thread(server.wait, 20)

    assert returncode == 0
    messages = [line["msg"] for line in server.log_lines()]
    assert messages.index("shutting down") < messages.index("stopped")

    # Readiness: 200 until SIGTERM, then 503 while connections are still accepted, then refused.
    results = [p.result for p in probes]
    first_503 = results.index("503")
    assert set(results[:first_503]) == {"200"} and probes[first_503].ended >= sigterm_at
    assert set(results[first_503:]) <= {"503", "refused", "no answer"} and results[-1] == "refused"
    assert len([r for r in results if r == "503"]) >= 5  # observed for most of the 1 s delay

    # Every login that was answered got a whole, valid token; none failed with a server error.
    answered = [o for o in logins if o.result not in ("refused", "no answer")]
    assert {o.result for o in answered} == {"200"}
    for outcome in answered:
        assert outcome.body is not None
        verify_with_joserfc(outcome.body["access_token"], key_set)
    # Connections stop being accepted only after the delay: nothing is turned away before it.
    unanswered = [o for o in logins if o.result in ("refused", "no answer")]
    assert unanswered and min(o.ended for o in unanswered) >= sigterm_at + DELAY - 0.05
    # And requests in flight when the listener closed were finished, not dropped.
    closed_at = sigterm_at + DELAY
    assert [o for o in answered if o.started < closed_at < o.ended]
