"""Response headers on every kind of answer, and CORS: off by default, exact origins when on."""

from __future__ import annotations

import os
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tessera.server.settings import SettingsError, load_settings
from tests.helpers import SECRET, basic, post_token, tessera_server

APP_ORIGIN = "https://app.example"


async def _answers(http: TestClient[Any, Any]) -> dict[str, Any]:
    """One response of each kind the token endpoint gives."""
    ok = await http.post("/token", data={"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    bad = await http.post("/token", data={"grant_type": "nope"}, headers=basic("svc", SECRET))
    unauthenticated = await http.post("/token", data={"grant_type": "client_credentials"}, headers=basic("svc", "wrong-wrong"))
    missing = await http.get("/nowhere")
    return {"200": ok, "400": bad, "401": unauthenticated, "404": missing}


async def test_token_and_error_responses_are_never_cached_and_never_sniffed(client, admin):
    await admin.client("svc")
    for kind, response in (await _answers(client)).items():
        assert response.headers["Cache-Control"] == "no-store", kind
        assert response.headers["Pragma"] == "no-cache", kind
        assert response.headers["X-Content-Type-Options"] == "nosniff", kind
        assert response.headers["Server"] == "tessera", kind
        assert response.headers["Content-Type"].startswith("application/json"), kind


async def test_throttled_and_unavailable_answers_are_not_cached_either(env, admin, clock):
    async with tessera_server(env, clock, TESSERA_LOGIN_MAX_FAILURES="1") as http:
        await admin.client("svc")
        for _ in range(2):
            status, _, response = await post_token(http, {"grant_type": "client_credentials"}, headers=basic("svc", "bad-bad-bad"))
        assert status == 429
        assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"


async def test_cors_is_off_by_default(client, admin):
    await admin.client("svc")
    preflight = await client.options(
        "/token", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    actual = await client.post(
        "/token", data={"grant_type": "client_credentials"}, headers={**basic("svc", SECRET), "Origin": APP_ORIGIN}
    )
    assert actual.status == 200
    assert not any(name.lower().startswith("access-control-") for name in actual.headers)


@pytest.fixture
async def cors_client(env, clock) -> Any:
    async with tessera_server(env, clock, TESSERA_CORS_ORIGINS=f"{APP_ORIGIN} http://localhost:3000") as http:
        yield http


@pytest.mark.parametrize("path,method", [("/token", "POST"), ("/revoke", "POST"), ("/introspect", "POST"),
                                         ("/.well-known/jwks.json", "GET")])
async def test_a_preflight_from_an_allowed_origin_is_answered(cors_client, path, method):
    response = await cors_client.options(
        path, headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": method,
                       "Access-Control-Request-Headers": "authorization, content-type"}
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert response.headers["Access-Control-Allow-Methods"] == method
    assert {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")} == {
        "authorization", "content-type"}
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Origin" in response.headers.getall("Vary")


async def test_a_preflight_from_another_origin_gets_no_cors_headers(cors_client):
    for origin in ("https://evil.example", "null", "https://app.example.evil.example", "http://app.example"):
        response = await cors_client.options("/token", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "Access-Control-Allow-Origin" not in response.headers, origin


async def test_answers_to_an_allowed_origin_name_it_and_expose_the_error_headers(cors_client, admin):
    await admin.client("svc")
    for data, secret, expected in (({"grant_type": "client_credentials"}, SECRET, 200),
                                   ({"grant_type": "client_credentials"}, "wrong-wrong", 401)):
        response = await cors_client.post("/token", data=data, headers={**basic("svc", secret), "Origin": APP_ORIGIN})
        assert response.status == expected
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
        assert "Access-Control-Allow-Credentials" not in response.headers
        assert "Origin" in response.headers.getall("Vary")
    jwks = await cors_client.get("/.well-known/jwks.json", headers={"Origin": "http://localhost:3000"})
    assert jwks.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    other = await cors_client.get("/.well-known/jwks.json", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers.getall("Vary")


async def test_endpoints_a_browser_does_not_need_get_no_cors(cors_client):
    response = await cors_client.get("/readyz", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("value", ["*", "https://app.example/", "app.example", "https://app.example/path", "ftp://x"])
def test_cors_origins_must_be_exact_origins(value):
    with pytest.raises(SettingsError) as raised:
        load_settings({"TESSERA_CORS_ORIGINS": value})
    assert str(raised.value).startswith("TESSERA_CORS_ORIGINS") and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "name,value",
    [
        ("TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS", "-1"),
        ("TESSERA_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("TESSERA_TRUSTED_PROXIES", "proxy.example"),
        ("TESSERA_ARGON2_THREADS", "0"),
        ("TESSERA_ARGON2_QUEUE", "many"),
        ("TESSERA_CLIENT_TIMEOUT", "0"),
        ("TESSERA_CLIENT_TIMEOUT", "60"),
        ("TESSERA_DB_STARTUP_WAIT", "soon"),
    ],
)
def test_a_bad_hardening_setting_stops_with_one_line_naming_it(name, value):
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    assert str(raised.value).startswith(name) and "\n" not in str(raised.value)


def test_hardening_defaults(tmp_path):
    settings = load_settings({"TESSERA_DATA_DIR": str(tmp_path)})
    assert settings.login_max_failures_per_address == 0  # the per-address cap is an opt-in
    assert settings.trusted_proxies == () and settings.cors_origins == frozenset()
    assert (settings.argon2_threads, settings.argon2_queue) == (max(1, (os.cpu_count() or 2) // 2), 16)
    assert settings.client_timeout == 15.0 and settings.db_startup_wait == 30.0
    # The contract's promises hold with the defaults: answers within 10 s, slow clients dropped within 30 s.
    assert settings.db_statement_timeout + 2 <= 10 and settings.client_timeout <= 30


async def test_every_routing_outcome_is_answered_with_its_request_id_and_counted(cors_client):
    """Endpoints, the methods they do not take, unknown paths and preflights all pass through the
    same wrapper (tessera.server.http.answering.answering): request id, headers, JSON errors, one count each."""
    from tests.processes import parse_metrics, sample

    preflight = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
    cases = [
        ("GET", "/.well-known/jwks.json", {}, 200, None),
        ("HEAD", "/.well-known/jwks.json", {}, 200, None),
        ("GET", "/token", {}, 405, "POST"),
        ("DELETE", "/.well-known/jwks.json", {}, 405, "GET,HEAD"),
        ("GET", "/token/", {}, 404, None),
        ("POST", "/nowhere/at/all", {}, 404, None),
        ("OPTIONS", "/.well-known/jwks.json", preflight, 204, None),
        ("OPTIONS", "/.well-known/anything-else", preflight, 204, None),  # as before: the whole /.well-known/
    ]
    for method, path, headers, status, allow in cases:
        response = await cors_client.request(method, path, headers={**headers, "X-Request-Id": f"t-{method}-{status}"})
        assert response.status == status, (method, path)
        assert response.headers["X-Request-Id"] == f"t-{method}-{status}", (method, path)
        assert response.headers["X-Content-Type-Options"] == "nosniff" and response.headers["Server"] == "tessera"
        if allow is not None:
            assert response.headers["Allow"] == allow
        if status >= 400 and method != "HEAD":
            assert (await response.json())["error"] in ("invalid_request", "not_found")
    m = parse_metrics(await (await cors_client.get("/metrics")).text())
    assert sample(m, "tessera_http_requests_total", endpoint="/.well-known/jwks.json", method="GET", status="200") == 1
    assert sample(m, "tessera_http_requests_total", endpoint="/.well-known/jwks.json", method="HEAD", status="200") == 1
    assert sample(m, "tessera_http_requests_total", endpoint="unmatched", method="GET", status="405") == 1
    assert sample(m, "tessera_http_requests_total", endpoint="unmatched", method="DELETE", status="405") == 1
    assert sample(m, "tessera_http_requests_total", endpoint="unmatched", method="OPTIONS", status="204") == 2
    assert sample(m, "tessera_oauth_errors_total", endpoint="unmatched", error="not_found") == 2
