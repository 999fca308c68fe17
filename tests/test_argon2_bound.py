"""argon2 work is bounded: a flood of wrong passwords is refused at once past the queue, and
cannot starve the token requests of other clients."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import PASSWORD, SECRET, basic, post_token

FLOOD_REQUESTS = 600
FLOOD_RATE = 300  # per second: far beyond what one argon2 thread checks (~45/s at OWASP's profile)


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        # OWASP's profile, as in production: the flood has to cost what it really costs.
        "TESSERA_ARGON2_TIME_COST": "2",
        "TESSERA_ARGON2_MEMORY_KIB": "19456",
        "TESSERA_ARGON2_THREADS": "1",
        "TESSERA_ARGON2_QUEUE": "2",
        "TESSERA_LOGIN_MAX_FAILURES": "100000",
        "TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS": "0",
    }


@pytest.fixture
async def clients(admin: Any) -> None:
    await admin.client("svc")
    await admin.client("web", grant_types=("password",))
    await admin.user("alice", PASSWORD)


async def _wrong_password(http: TestClient[Any, Any], n: int) -> tuple[int, dict[str, Any], Any]:
    form = {"grant_type": "password", "username": f"user{n}", "password": "wrong"}
    return await post_token(http, form, headers=basic("web", SECRET))


async def _client_credentials(http: TestClient[Any, Any]) -> float:
    started = time.perf_counter()
    status, body, _ = await post_token(http, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200, body
    return (time.perf_counter() - started) * 1000


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) >= 2 else samples[0]


async def test_a_password_flood_past_the_queue_is_refused_at_once_with_503(client, clients):
    assert (await _wrong_password(client, 0))[0] == 400  # the client's secret is cached from here on
    answers = await asyncio.gather(*(_wrong_password(client, n) for n in range(40)))
    statuses = [status for status, _, _ in answers]
    refused = [(body, response) for status, body, response in answers if status == 503]
    print(f"\nflood of 40 with 1 thread + queue of 2: {statuses.count(400)} checked, {len(refused)} refused")
    assert set(statuses) <= {400, 503}
    assert len(refused) >= 30
    for body, response in refused:
        assert body["error"] == "temporarily_unavailable"
        assert response.headers["Retry-After"] == "1"


async def test_client_credentials_are_not_starved_by_a_password_flood(client, clients, admin):
    """An open-loop flood (sent at a fixed rate, whatever the answers) of wrong passwords, while
    another session asks for client_credentials: a busy client whose secret is cached, and a
    client seen for the first time, whose secret has to go through argon2 during the flood."""
    await admin.client("newcomer")
    async with aiohttp.ClientSession(str(client.make_url(""))) as other:

        async def client_credentials(client_id: str) -> tuple[int, float]:
            started = time.perf_counter()
            async with other.post("/token", data={"grant_type": "client_credentials"}, headers=basic(client_id, SECRET)) as r:
                await r.read()
                return r.status, (time.perf_counter() - started) * 1000

        await client_credentials("svc")  # cached from here on, as a busy client's secret is
        baseline = [(await client_credentials("svc"))[1] for _ in range(50)]
        flood: list[asyncio.Task[Any]] = []

        async def send_flood() -> None:
            for n in range(FLOOD_REQUESTS):
                flood.append(asyncio.create_task(_wrong_password(client, n)))
                await asyncio.sleep(1 / FLOOD_RATE)

        sender = asyncio.create_task(send_flood())
        await asyncio.sleep(0.3)
        during = []
        for _ in range(100):
            status, elapsed = await client_credentials("svc")
            assert status == 200
            during.append(elapsed)
        newcomer_status, newcomer_ms = await client_credentials("newcomer")
        await sender
        answers = await asyncio.gather(*flood)
    statuses = [status for status, _, _ in answers]
    print(
        f"\nopen-loop flood of {FLOOD_REQUESTS} wrong passwords at {FLOOD_RATE}/s "
        f"({statuses.count(400)} checked, {statuses.count(503)} refused 503):"
        f"\n  cached client_credentials p50/p99 ms: alone {_p(baseline, 50):.1f}/{_p(baseline, 99):.1f},"
        f" during the flood {_p(during, 50):.1f}/{_p(during, 99):.1f}"
        f"\n  a first-time client (argon2 on its secret) during the flood: {newcomer_status} in {newcomer_ms:.1f} ms"
    )
    assert newcomer_status == 200, "client authentication was starved by the password flood"
    assert statuses.count(503) > 0, "the flood never filled the queue: the test proves nothing"
