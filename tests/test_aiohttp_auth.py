"""tessera.keys.aiohttp_auth: the bearer-token middleware's answers (RFC 6750 section 3), and the example
resource server (deploy/resource_server.py) end to end against a real issuer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from multidict import CIMultiDict

from tessera.keys import Verifier
from tessera.keys.aiohttp_auth import CLAIMS_KEY, bearer_auth_middleware, get_claims, require_scopes

try:  # tests/ as a package, or as a plain directory on sys.path
    from tests.helpers import served
    from tests.verifier_fixtures import AUDIENCE, LocalIssuer, running_issuer
except ModuleNotFoundError:
    from helpers import served  # type: ignore[no-redef, import-not-found]
    from verifier_fixtures import AUDIENCE, LocalIssuer, running_issuer  # type: ignore[no-redef, import-not-found]

if TYPE_CHECKING:
    Client = TestClient[web.Request, web.Application]

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    async with running_issuer("ES256") as running:
        yield running


async def whoami(request: web.Request) -> web.Response:
    claims = get_claims(request)
    return web.json_response({"sub": claims.sub, "scopes": sorted(claims.scopes)})


@require_scopes("orders.read")
async def read_orders(request: web.Request) -> web.Response:
    return web.json_response({"orders": [], "sub": get_claims(request).sub})


@require_scopes("orders.write")
async def write_orders(request: web.Request) -> web.Response:
    return web.json_response({"created": True}, status=201)


@require_scopes("admin")
async def public_but_marked(request: web.Request) -> web.Response:
    return web.json_response({"admin": True})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "authenticated": CLAIMS_KEY in request})


class ReportView(web.View):
    @require_scopes("reports.read")
    async def get(self) -> web.Response:
        return web.json_response({"report": get_claims(self.request).sub})


@pytest.fixture
async def client(issuer: LocalIssuer) -> AsyncIterator[Client]:
    async with Verifier(issuer.url, AUDIENCE) as verifier:
        middleware = bearer_auth_middleware(
            verifier,
            public_paths={"/health", "/admin"},
            is_public=lambda request: request.path.startswith("/static/"),
        )
        app = web.Application(middlewares=[middleware])
        app.router.add_get("/me", whoami)
        app.router.add_get("/orders", read_orders)
        app.router.add_post("/orders", write_orders)
        app.router.add_get("/health", health)
        app.router.add_get("/static/logo", health)
        app.router.add_get("/admin", public_but_marked)
        app.router.add_view("/reports", ReportView)
        async with served(app) as test_client:
            yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_token_reaches_the_handler_with_its_claims(issuer: LocalIssuer, client: Client) -> None:
    response = await client.get("/me", headers=bearer(issuer.issue()))
    assert response.status == 200
    assert await response.json() == {"sub": "user-42", "scopes": ["orders.read", "profile"]}


async def test_missing_token_is_401_with_a_bare_challenge(client: Client) -> None:
    response = await client.get("/me")
    assert response.status == 401
    # RFC 6750 section 3.1: no error code when the request carried no authentication at all
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tessera"'


async def test_other_authentication_schemes_count_as_no_token(client: Client) -> None:
    response = await client.get("/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tessera"'


async def test_bad_token_is_401_invalid_token_and_is_never_echoed(issuer: LocalIssuer, client: Client) -> None:
    token = issuer.issue(aud="https://billing.example")
    response = await client.get("/me", headers=bearer(token))
    assert response.status == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tessera", error="invalid_token", error_description="')
    body = await response.text()
    assert json.loads(body)["error"] == "invalid_token"
    for part in token.split("."):
        assert part not in body and part not in challenge
    assert response.headers["Cache-Control"] == "no-store"


async def test_expired_token_says_so(issuer: LocalIssuer, client: Client) -> None:
    response = await client.get("/me", headers=bearer(issuer.issue(exp=1)))
    assert response.status == 401
    assert 'error_description="the token has expired"' in response.headers["WWW-Authenticate"]


async def test_garbage_in_the_authorization_header_is_invalid_token(client: Client) -> None:
    for garbage in ("not a token", "a.b.c", "ünïcode", "x" * 8000):
        response = await client.get("/me", headers={"Authorization": f"Bearer {garbage}"})
        assert response.status == 401, garbage[:20]
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_scheme_is_case_insensitive(issuer: LocalIssuer, client: Client) -> None:
    for scheme in ("bearer", "BEARER", "BeArEr"):
        response = await client.get("/me", headers={"Authorization": f"{scheme} {issuer.issue()}"})
        assert response.status == 200, scheme


async def test_token_in_the_query_string_is_refused(issuer: LocalIssuer, client: Client) -> None:
    response = await client.get("/me", params={"access_token": issuer.issue()})
    assert response.status == 400
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]
    assert (await response.json())["error"] == "invalid_request"


async def test_empty_bearer_token_is_invalid_request(client: Client) -> None:
    response = await client.get("/me", headers={"Authorization": "Bearer "})
    assert response.status in (400, 401)
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="tessera"')


async def test_two_authorization_headers_are_invalid_request(issuer: LocalIssuer, client: Client) -> None:
    headers = CIMultiDict([("Authorization", f"Bearer {issuer.issue()}")] * 2)
    response = await client.get("/me", headers=headers)
    assert response.status == 400


async def test_missing_scope_is_403_insufficient_scope_naming_the_scope(issuer: LocalIssuer, client: Client) -> None:
    response = await client.post("/orders", headers=bearer(issuer.issue(scope="orders.read")))
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="tessera", error="insufficient_scope", '
        'error_description="the access token lacks a required scope", scope="orders.write"'
    )
    assert (await response.json())["scope"] == "orders.write"


async def test_route_scopes_are_enforced_per_method(issuer: LocalIssuer, client: Client) -> None:
    token = issuer.issue(scope="orders.read orders.write")
    assert (await client.get("/orders", headers=bearer(token))).status == 200
    assert (await client.post("/orders", headers=bearer(token))).status == 201
    assert (await client.get("/orders", headers=bearer(issuer.issue(scope="profile")))).status == 403


async def test_class_based_views_can_demand_scopes(issuer: LocalIssuer, client: Client) -> None:
    assert (await client.get("/reports", headers=bearer(issuer.issue(scope="reports.read")))).status == 200
    assert (await client.get("/reports", headers=bearer(issuer.issue(scope="orders.read")))).status == 403


async def test_public_paths_need_no_token(client: Client) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "authenticated": False}
    assert (await client.get("/static/logo")).status == 200


async def test_a_route_that_demands_scopes_is_never_public(issuer: LocalIssuer, client: Client) -> None:
    assert (await client.get("/admin")).status == 401
    assert (await client.get("/admin", headers=bearer(issuer.issue(scope="admin")))).status == 200


async def test_unavailable_issuer_keys_are_503_not_401(issuer: LocalIssuer, client: Client) -> None:
    token = issuer.issue()
    await issuer.stop()
    response = await client.get("/me", headers=bearer(token))
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert (await response.json())["error"] == "temporarily_unavailable"


async def test_scoped_handler_without_the_middleware_fails_closed(issuer: LocalIssuer) -> None:
    app = web.Application()
    app.router.add_get("/orders", read_orders)
    async with served(app) as unprotected:
        response = await unprotected.get("/orders", headers=bearer(issuer.issue()))
        assert response.status == 500
        assert "orders" not in await response.text()


def test_get_claims_outside_an_authenticated_request_raises() -> None:
    with pytest.raises(LookupError):
        get_claims(make_mocked_request("GET", "/health"))


def test_require_scopes_needs_a_scope() -> None:
    with pytest.raises(ValueError):
        require_scopes()


# -- the example resource server ------------------------------------------------------------------


async def test_example_resource_server_works_end_to_end(issuer: LocalIssuer) -> None:
    environ = {
        **os.environ,
        "TESSERA_ISSUER": issuer.url,
        "RESOURCE_AUDIENCE": AUDIENCE,
        "RESOURCE_HOST": "127.0.0.1",
        "RESOURCE_PORT": "0",
        "ALGORITHMS": "ES256, EdDSA",
        "PYTHONWARNINGS": "error",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPOSITORY / "deploy" / "resource_server.py"),
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("listening on http://127.0.0.1:"), line
        base = line.split()[-1]
        reader = issuer.issue(scope="orders.read profile")
        writer = issuer.issue(scope="orders.read orders.write")
        async with aiohttp.ClientSession(base) as http:
            async with http.get("/health") as response:
                assert response.status == 200
            async with http.get("/orders") as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="orders"'
            async with http.post("/orders", json={"item": "tea", "quantity": 2}, headers=bearer(reader)) as response:
                assert response.status == 403
                assert 'scope="orders.write"' in response.headers["WWW-Authenticate"]
            async with http.post("/orders", json={"item": "tea", "quantity": 2}, headers=bearer(writer)) as response:
                assert response.status == 201
                order = await response.json()
            async with http.get("/orders", headers=bearer(reader)) as response:
                assert response.status == 200
                assert (await response.json())["orders"] == [order]
            async with http.post("/orders", json={"item": ""}, headers=bearer(writer)) as response:
                assert response.status == 400
            async with http.get("/me", headers=bearer(reader)) as response:
                assert (await response.json())["scopes"] == ["orders.read", "profile"]
        assert issuer.jwks_requests == 1  # prefetched at start-up, then served from the cache
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"RESOURCE_AUDIENCE": AUDIENCE}, "TESSERA_ISSUER"),
        ({"TESSERA_ISSUER": "http://127.0.0.1:1"}, "RESOURCE_AUDIENCE"),
        (
            {"TESSERA_ISSUER": "http://127.0.0.1:1", "RESOURCE_AUDIENCE": AUDIENCE, "RESOURCE_PORT": "http"},
            "RESOURCE_PORT",
        ),
        ({"TESSERA_ISSUER": "http://127.0.0.1:1", "RESOURCE_AUDIENCE": AUDIENCE, "ALGORITHMS": "HS256"}, "ALGORITHMS"),
    ],
)
async def test_example_resource_server_refuses_a_bad_setting_in_one_line(
    environ: dict[str, str], variable: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "RESOURCE_", "ALGORITHMS"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPOSITORY / "deploy" / "resource_server.py"),
        env={**clean, **environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]
