"""The OpenAPI 3.1 document describes the HTTP API as it answers: schemathesis sends generated
requests (valid and invalid) to a live `tessera serve` and checks each answer against it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tessera.server.app import create_app
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.settings import load_settings
from tessera.server.store import ClientStore, UserStore
from tests.conftest import FAST_ARGON2, TABLES_KEPT
from tests.helpers import KEK, PASSWORD, SECRET, basic
from tests.processes import tessera_serve

DOCUMENT = Path(__file__).parent.parent / "server" / "http" / "openapi.json"
CONTRACT_PATHS = {
    "/token", "/revoke", "/introspect", "/.well-known/jwks.json", "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration", "/healthz", "/readyz", "/metrics",
}


def _served_paths() -> set[str]:
    """What this build serves; endpoints of the contract not built yet are left out of the run."""
    app = create_app(load_settings({}, require_kek=False))
    # Less the catch-all route that answers every other path with 404 (tessera.server.http.views.add_routes).
    return {resource.canonical for resource in app.router.resources() if "{" not in resource.canonical}


CHECKS = SchemathesisConfig.from_dict({
    "checks": {
        # OAuth answers a well-formed request with a wrong password or an unknown grant with 400
        # by design (RFC 6749 section 5.2): "schema-valid data must be accepted" does not apply.
        "positive_data_acceptance": {"enabled": False},
        # A body over the limit is refused with 413, and one that arrives too slowly with 408.
        "negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 408, 413, 415, 429]},
    }
})
document = schemathesis.openapi.from_path(str(DOCUMENT), config=CHECKS)
schema = document.include(path=sorted(_served_paths()))
form_endpoints = document.include(path=sorted(_served_paths()), method="POST")
# Bounded: a few dozen examples per operation, no time limit per example.
BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


async def _prepare(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        tables = [r["tablename"] for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                  if r["tablename"] not in TABLES_KEPT]
        await connection.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
        hasher = SecretHasher(load_settings(FAST_ARGON2, require_kek=False).argon2)
        try:
            await ClientStore(connection).create(
                "svc", secret_hash=await hasher.hash(SECRET),
                grant_types=["client_credentials", "password", "refresh_token"],
                scopes=["read", "write"], audiences=["https://orders.example"],
            )
            await UserStore(connection).create("alice", await hasher.hash(PASSWORD))
        finally:
            hasher.close()
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def live_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tessera serve` as an operator runs it, on 127.0.0.1, stopped when the module is done."""
    asyncio.run(_prepare(database_url))
    env = {
        **FAST_ARGON2,
        "TESSERA_DATABASE_URL": database_url,
        "TESSERA_KEY_ENCRYPTION_KEY": KEK,
        "TESSERA_DATA_DIR": str(tmp_path_factory.mktemp("live")),
        # Generated requests fail often; throttling them is tested elsewhere.
        "TESSERA_LOGIN_MAX_FAILURES": "1000000",
        "TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS": "0",
    }
    with tessera_serve(env, tmp_path_factory.mktemp("live-log")) as (base, server):
        yield base
    # No traceback may ever reach a log line from anything schemathesis sent.
    errors = server.stderr()
    assert "Traceback" not in errors and '"level":"error"' not in errors, errors[-3000:]


@schema.parametrize()
@BOUNDED
def test_every_answer_conforms_to_the_document(case, live_server):
    case.call_and_validate(base_url=live_server)


@form_endpoints.parametrize()
@BOUNDED
def test_every_answer_to_an_authenticated_client_conforms_to_the_document(case, live_server):
    case.headers = {**(case.headers or {}), **basic("svc", SECRET)}
    case.call_and_validate(base_url=live_server)


def test_the_document_is_served_and_covers_the_contract(live_server):
    with urllib.request.urlopen(f"{live_server}/openapi.json", timeout=5) as response:
        served = json.loads(response.read())
    assert served == json.loads(DOCUMENT.read_text())
    assert served["openapi"].startswith("3.1")
    assert CONTRACT_PATHS <= set(served["paths"])
    assert _served_paths() <= set(served["paths"]) | {"/openapi.json"}
