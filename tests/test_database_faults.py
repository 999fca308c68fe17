"""A database that stops, or accepts connections and never answers: 503 in time, the key set
still served, and recovery by itself, without a restart (CONTRACT.md, Robustness)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tessera.server.app import create_app
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.settings import load_settings
from tessera.server.store import ClientStore
from tests.faults import StoppablePostgres, TcpProxy
from tests.helpers import SECRET, basic, eventually, post_token, tessera_server
from tests.processes import cli, free_port

CONTRACT_ANSWER_WITHIN = 10.0
CONTRACT_RECOVERY_WITHIN = 30.0


async def _register_client(database_url: str, env: dict[str, str]) -> None:
    hasher = SecretHasher(load_settings(env).argon2)
    connection = await asyncpg.connect(database_url)
    try:
        await ClientStore(connection).create(
            "svc", secret_hash=await hasher.hash(SECRET), grant_types=["client_credentials"],
            scopes=["read"], audiences=["https://orders.example"],
        )
    finally:
        await connection.close()
        hasher.close()


async def _token(http: TestClient[Any, Any]) -> tuple[int, dict[str, Any], Any]:
    return await post_token(http, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))


async def _timed(coroutine: Any) -> tuple[float, Any]:
    started = time.monotonic()
    result = await coroutine
    return time.monotonic() - started, result


async def _assert_outage_is_answered_in_time(http: TestClient[Any, Any], concurrent: int) -> None:
    """More token requests than pool connections, all at once, plus the endpoints around them."""
    token_requests = [_timed(_token(http)) for _ in range(concurrent)]
    probes = [_timed(http.get(path)) for path in ("/readyz", "/healthz", "/.well-known/jwks.json")]
    results = await asyncio.gather(*token_requests, *probes)
    slowest = max(elapsed for elapsed, _ in results)
    print(f"\noutage: {concurrent} token requests answered, slowest in {slowest:.2f} s")
    for elapsed, (status, body, response) in results[:concurrent]:
        assert status == 503 and body["error"] == "temporarily_unavailable", body
        assert int(response.headers["Retry-After"]) > 0
        assert elapsed < CONTRACT_ANSWER_WITHIN
    (_, ready), (_, health), (_, jwks) = results[concurrent:]
    assert ready.status == 503
    assert health.status == 200
    assert jwks.status == 200 and (await jwks.json(content_type=None))["keys"], "JWKS must be served from memory"


async def _assert_recovers_by_itself(http: TestClient[Any, Any]) -> float:
    async def served() -> bool:
        status, body, _ = await _token(http)
        assert status in (200, 503), body
        return status == 200

    started = time.monotonic()
    await eventually(served, timeout=CONTRACT_RECOVERY_WITHIN, interval=0.25, what="recovery")
    recovered = time.monotonic() - started
    assert (await http.get("/readyz")).status == 200
    print(f"recovered {recovered:.2f} s after the database came back")
    return recovered


@pytest.fixture
async def proxy(env: dict[str, str]) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(env["TESSERA_DATABASE_URL"]) as relay:
        yield relay


async def test_a_database_that_accepts_connections_but_never_answers_gets_503_in_time_then_recovers(env, proxy):
    # Default timeouts: this is the contract's "within 10 seconds" as an operator gets it.
    settings = load_settings({**env, "TESSERA_DATABASE_URL": proxy.url})
    await _register_client(env["TESSERA_DATABASE_URL"], env)
    async with tessera_server(settings) as http:
        assert (await _token(http))[0] == 200
        proxy.blackhole()
        await _assert_outage_is_answered_in_time(http, concurrent=settings.db_pool_size + 5)
        proxy.forward()
        await _assert_recovers_by_itself(http)


@pytest.fixture
async def stoppable_postgres() -> AsyncIterator[StoppablePostgres]:
    postgres = await asyncio.to_thread(StoppablePostgres)
    try:
        yield postgres
    finally:
        await asyncio.to_thread(postgres.close)


async def test_a_stopped_database_gets_503_then_service_resumes_when_it_returns(env, stoppable_postgres):
    env = {**env, "TESSERA_DATABASE_URL": stoppable_postgres.url}
    settings = load_settings(env)
    async with tessera_server(settings) as http:
        await _register_client(stoppable_postgres.url, env)
        assert (await _token(http))[0] == 200
        await asyncio.to_thread(stoppable_postgres.stop)
        await _assert_outage_is_answered_in_time(http, concurrent=settings.db_pool_size + 5)
        await asyncio.to_thread(stoppable_postgres.start)
        await _assert_recovers_by_itself(http)


async def test_startup_waits_for_a_database_that_comes_up_late(env, proxy):
    proxy.blackhole()
    settings = load_settings({**env, "TESSERA_DATABASE_URL": proxy.url, "TESSERA_DB_STARTUP_WAIT": "30",
                              "TESSERA_DB_STATEMENT_TIMEOUT": "1"})
    server = TestServer(create_app(settings), host="127.0.0.1")
    starting = asyncio.create_task(server.start_server())
    await asyncio.sleep(2.5)
    assert not starting.done(), "the server gave up while the database was still coming"
    proxy.forward()
    try:
        await asyncio.wait_for(starting, 20)
        async with TestClient(server) as http:
            assert (await http.get("/readyz")).status == 200
    finally:
        await server.close()


def test_serve_with_an_unreachable_database_stops_with_a_clear_line(env, tmp_path):
    closed_port = free_port()  # nothing listens there
    started = time.monotonic()
    result = cli({
        **env,
        "TESSERA_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/nowhere",
        "TESSERA_DB_STARTUP_WAIT": "1",
        "TESSERA_PORT": str(free_port()),
    }, "serve")
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert "database unreachable; retrying" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tessera: database error"), result.stderr[-2000:]
