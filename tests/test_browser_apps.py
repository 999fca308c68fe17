"""Browser apps over HTTP (CONTRACT.md, "Browser apps: the refresh token never reachable from
JavaScript"): the refresh-token cookie of a public client registered with --refresh-token-cookie,
the Origin and Tessera-CSRF rule for requests that rely on it, and CORS for the origins registered
with clients. tests/test_browser_apps_chromium.py shows the same in a real browser.

Every token request here goes out through a session that keeps no cookies, so each test says
exactly which cookie a request carries.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from tessera.server.http.cors import origin_problem
from tessera.server.oauth.families import parse_refresh_token
from tests.helpers import PASSWORD, SECRET, basic, eventually, tessera_server
from tests.sessions import family_id_of, family_row
from tests.sign_in_helpers import Browser, authorization_parameters, pkce_pair

SPA = "https://spa.example"
SPA_CALLBACK = SPA + "/callback"
COOKIE = "__Host-tessera_refresh"
CSRF = {"Tessera-CSRF": "1"}
OTHER_SPA = "https://other-spa.example"  # a public client's origin, without the cookie
UNREGISTERED = ("https://evil.example", "null", "https://spa.example.evil.example", "http://spa.example",
                "https://SPA.example", "https://spa.example:443", "https://spa.example/")


async def register_spa(admin: Any, client_id: str = "spa", **extra: Any) -> None:
    fields: dict[str, Any] = {
        "secret": None, "grant_types": ("authorization_code", "refresh_token"), "scopes": ("openid", "api"),
        "audiences": ("https://api.example",), "redirect_uris": (SPA_CALLBACK,), "first_party": True,
        "allowed_origins": (SPA,), "refresh_token_cookie": True,
    }
    await admin.client(client_id, **{**fields, **extra})


def cookie_of(response: aiohttp.ClientResponse) -> dict[str, str] | None:
    """The refresh-token cookie ``response`` sets: its value and its attributes (names lowercased)."""
    found = [v for v in response.headers.getall("Set-Cookie", []) if v.startswith(COOKIE + "=")]
    if not found:
        return None
    (header,) = found
    first, *attributes = [part.strip() for part in header.split(";")]
    cookie = {"value": first.split("=", 1)[1]}
    for attribute in attributes:
        name, _, value = attribute.partition("=")
        cookie[name.lower()] = value
    return cookie


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any
    cookie: dict[str, str] | None


@dataclass
class Spa:
    """What the app's page sends, with exactly the headers and cookie each test gives."""

    base: str
    http: aiohttp.ClientSession  # keeps no cookies
    client_id: str = "spa"

    async def post(self, path: str, form: dict[str, str], *, origin: str | None = SPA, cookie: str | None = None,
                   headers: dict[str, str] | None = None) -> Answer:
        sent = dict(headers or {})
        if origin is not None:
            sent["Origin"] = origin
        if cookie is not None:
            sent["Cookie"] = f"{COOKIE}={cookie}"
        async with self.http.post(self.base + path, data=form, headers=sent) as response:
            text = await response.text()
            body = await response.json(content_type=None) if text else None
            return Answer(response.status, response.headers, body, cookie_of(response))

    async def refresh(self, cookie: str | None, *, origin: str | None = SPA, headers: dict[str, str] | None = None,
                      **form: str) -> Answer:
        return await self.post("/token", {"grant_type": "refresh_token", "client_id": self.client_id, **form},
                               origin=origin, cookie=cookie, headers=CSRF if headers is None else headers)

    async def revoke(self, cookie: str | None, *, headers: dict[str, str] | None = None, **form: str) -> Answer:
        return await self.post("/revoke", {"client_id": self.client_id, **form}, cookie=cookie,
                               headers=CSRF if headers is None else headers)

    async def sign_in(self) -> Answer:
        """Alice signs in on Tessera's pages; the app redeems the code from its origin."""
        async with aiohttp.ClientSession() as pages:
            browser = Browser(self.base, pages)
            verifier, challenge = pkce_pair()
            parameters = authorization_parameters(
                self.client_id, challenge, redirect_uri=SPA_CALLBACK, scope="openid api"
            )
            back = await browser.submit(await browser.authorize(**parameters), username="alice", password=PASSWORD)
            assert back.status == 303, back.text
            code = back.query()["code"]
        answer = await self.post("/token", {
            "grant_type": "authorization_code", "code": code, "redirect_uri": SPA_CALLBACK, "code_verifier": verifier,
            "client_id": self.client_id,
        })
        assert answer.status == 200, answer.body
        return answer


@contextlib.asynccontextmanager
async def spa_server(env: dict[str, str], clock: Any, **settings: str) -> AsyncIterator[Spa]:
    async with tessera_server(env, clock, **settings) as http, aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield Spa(str(http.make_url("")).rstrip("/"), session)


@pytest.fixture
async def spa(env, clock, admin) -> AsyncIterator[Spa]:
    await register_spa(admin)
    await admin.user("alice")
    async with spa_server(env, clock) as app:
        yield app


def cors_headers(answer: Answer) -> dict[str, str]:
    return {k.lower(): v for k, v in answer.headers.items() if k.lower().startswith("access-control-")}


async def generation_and_revoked(db: asyncpg.Connection, token: str) -> tuple[int, str | None]:
    row = await family_row(db, token)
    return row["generation"], row["revoked_reason"]


# --- the cookie ----------------------------------------------------------------------------------


async def test_the_refresh_token_is_set_as_a_host_only_strict_httponly_cookie_and_left_out_of_the_json(
    spa, db_conn, settings
):
    signed_in = await spa.sign_in()
    assert "refresh_token" not in signed_in.body
    assert {"access_token", "id_token", "expires_in", "scope"} <= set(signed_in.body)
    cookie = signed_in.cookie
    assert cookie is not None and cookie["value"].startswith("tsr_")
    assert cookie.keys() == {"value", "httponly", "secure", "samesite", "path", "max-age"}  # no Domain, no Expires
    assert cookie["samesite"] == "Strict" and cookie["path"] == "/"
    # A new family: its token lives the shorter of the idle and the absolute lifetimes.
    assert int(cookie["max-age"]) == min(settings.refresh_token_ttl, settings.session_ttl)
    assert cookie["value"] not in str(signed_in.body)
    row = await family_row(db_conn, cookie["value"])
    assert row["client_id"] == "spa" and row["generation"] == 0 and row["revoked_at"] is None


async def test_refreshing_through_the_cookie_rotates_it_and_keeps_the_token_out_of_the_json(spa, db_conn):
    cookie = (await spa.sign_in()).cookie["value"]
    seen = {cookie}
    for generation in range(1, 4):
        answer = await spa.refresh(cookie)
        assert answer.status == 200, answer.body
        assert "refresh_token" not in answer.body and answer.body["access_token"]
        cookie = answer.cookie["value"]
        assert cookie not in seen and parse_refresh_token(cookie).generation == generation
        seen.add(cookie)
        assert answer.cookie["samesite"] == "Strict" and "httponly" in answer.cookie and "secure" in answer.cookie
    assert await generation_and_revoked(db_conn, cookie) == (3, None)


async def test_a_refresh_token_in_the_body_still_works_and_its_successor_goes_into_the_cookie(spa, db_conn):
    cookie = (await spa.sign_in()).cookie["value"]
    # No cookie relied on, so no Origin or CSRF header is needed (whoever holds a token can send it).
    answer = await spa.refresh(None, origin=None, headers={}, refresh_token=cookie)
    assert answer.status == 200 and "refresh_token" not in answer.body
    assert parse_refresh_token(answer.cookie["value"]).generation == 1


async def test_the_cookie_max_age_never_outlives_the_family(env, clock, admin, db_conn):
    await register_spa(admin)
    await admin.user("alice")
    clock.now = float(int(clock.now))  # whole seconds, so that what is left is exactly what is expected
    async with spa_server(env, clock, TESSERA_REFRESH_TOKEN_TTL="3600", TESSERA_SESSION_TTL="5000") as spa:
        signed_in = await spa.sign_in()
        cookie = signed_in.cookie
        assert int(cookie["max-age"]) == 3600  # the idle lifetime is the shorter
        for step, expected in ((3000, 2000), (1500, 500)):  # then the absolute end is nearer
            clock.advance(step)
            answer = await spa.refresh(cookie["value"])
            assert answer.status == 200, answer.body
            cookie = answer.cookie
            row = await family_row(db_conn, cookie["value"])
            left = min(row["expires_at"], row["idle_expires_at"]).timestamp() - clock()
            assert int(cookie["max-age"]) == expected == int(left)
        clock.advance(501)  # the absolute lifetime is over: refused as a token in the body would be
        answer = await spa.refresh(cookie["value"])
        assert (answer.status, answer.body["error"]) == (400, "invalid_grant") and answer.cookie is None


async def test_an_idle_cookie_expires_like_an_idle_token(env, clock, admin):
    await register_spa(admin)
    await admin.user("alice")
    async with spa_server(env, clock, TESSERA_REFRESH_TOKEN_TTL="600") as spa:
        cookie = (await spa.sign_in()).cookie["value"]
        clock.advance(601)
        answer = await spa.refresh(cookie)
        assert (answer.status, answer.body["error"]) == (400, "invalid_grant")


# --- the Origin and CSRF-header rule -------------------------------------------------------------


@pytest.mark.parametrize("origin,headers", [
    (None, CSRF),  # a request no browser page made, or a same-origin one: no Origin
    ("https://evil.example", CSRF),
    ("null", CSRF),  # a sandboxed frame, a data: page
    (OTHER_SPA, CSRF),  # registered, but for another client
    ("http://spa.example", CSRF),
    (SPA, {}),  # a cross-site form: it cannot add a header
    (SPA, {"Tessera-CSRF": "0"}),
    (SPA, {"Tessera-CSRF": "true"}),
])
async def test_a_refresh_through_the_cookie_needs_the_clients_origin_and_the_csrf_header(
    env, clock, admin, db_conn, origin, headers
):
    await register_spa(admin)
    await register_spa(admin, "other-spa", allowed_origins=(OTHER_SPA,), refresh_token_cookie=False)
    await admin.user("alice")
    async with spa_server(env, clock) as spa:
        cookie = (await spa.sign_in()).cookie["value"]
        answer = await spa.refresh(cookie, origin=origin, headers=headers)
        assert (answer.status, answer.body["error"]) == (400, "invalid_request"), answer.body
        assert answer.cookie is None
        assert await generation_and_revoked(db_conn, cookie) == (0, None)  # nothing spent
        assert (await spa.refresh(cookie)).status == 200  # the same cookie, sent properly, still works


async def test_a_request_with_two_origin_headers_is_refused(spa, db_conn):
    cookie = (await spa.sign_in()).cookie["value"]
    async with spa.http.post(spa.base + "/token", data={"grant_type": "refresh_token", "client_id": "spa"}, headers=[
        ("Origin", SPA), ("Origin", "https://evil.example"), ("Tessera-CSRF", "1"), ("Cookie", f"{COOKIE}={cookie}"),
    ]) as response:
        assert response.status == 400 and (await response.json())["error"] == "invalid_request"
    assert await generation_and_revoked(db_conn, cookie) == (0, None)


async def test_without_a_cookie_the_refresh_is_invalid_request(spa):
    await spa.sign_in()
    answer = await spa.refresh(None)
    assert (answer.status, answer.body["error"]) == (400, "invalid_request")


async def test_a_client_without_the_cookie_flag_never_reads_the_cookie_nor_sets_it(env, clock, admin, db_conn):
    await register_spa(admin, refresh_token_cookie=False)
    await admin.user("alice")
    async with spa_server(env, clock) as spa:
        signed_in = await spa.sign_in()
        assert signed_in.cookie is None and signed_in.body["refresh_token"].startswith("tsr_")
        token = signed_in.body["refresh_token"]
        answer = await spa.refresh(token)  # the token sent as a cookie, not as the parameter
        assert (answer.status, answer.body["error"]) == (400, "invalid_request")
        assert await generation_and_revoked(db_conn, token) == (0, None)


# --- reuse, retries, revocation --------------------------------------------------------------------


async def test_an_old_cookie_replayed_revokes_the_family(spa, db_conn):
    first = (await spa.sign_in()).cookie["value"]
    second = (await spa.refresh(first)).cookie["value"]
    replayed = await spa.refresh(first)
    assert (replayed.status, replayed.body["error"]) == (400, "invalid_grant")
    assert await generation_and_revoked(db_conn, second) == (1, "refresh_reuse")
    assert (await spa.refresh(second)).status == 400  # the newest cookie is dead too
    event = await db_conn.fetchrow("SELECT kind, client_id FROM security_events WHERE family_id = $1",
                                   family_id_of(first))
    assert (event["kind"], event["client_id"]) == ("refresh_reuse", "spa")


async def test_a_retry_with_the_previous_cookie_within_the_grace_gets_the_same_cookie(env, clock, admin, db_conn):
    await register_spa(admin)
    await admin.user("alice")
    async with spa_server(env, clock, TESSERA_REFRESH_REUSE_GRACE="30") as spa:
        first = (await spa.sign_in()).cookie["value"]
        rotated = await spa.refresh(first)
        clock.advance(10)
        # The answer was lost: the browser still has the first cookie and sends it again.
        retried = await spa.refresh(first)
        assert retried.status == 200, retried.body
        assert retried.cookie["value"] == rotated.cookie["value"]
        row = await family_row(db_conn, first)
        assert row["generation"] == 1 and row["revoked_at"] is None
        # The cookie never outlives the token: the grace is taken off what is left.
        assert int(retried.cookie["max-age"]) <= min(row["expires_at"], row["idle_expires_at"]).timestamp() - clock()
        assert (await spa.refresh(retried.cookie["value"])).status == 200
        clock.advance(60)
        late = await spa.refresh(first)  # past the grace: reuse
        assert (late.status, late.body["error"]) == (400, "invalid_grant")
        assert (await family_row(db_conn, first))["revoked_reason"] == "refresh_reuse"


async def test_revoke_without_a_token_revokes_the_cookie_and_clears_it(spa, db_conn):
    cookie = (await spa.sign_in()).cookie["value"]
    answer = await spa.revoke(cookie)
    assert answer.status == 200
    assert answer.cookie is not None and answer.cookie["max-age"] == "0" and answer.cookie["value"] in ('""', "")
    assert answer.cookie["path"] == "/" and "secure" in answer.cookie  # else a browser ignores it for __Host-
    assert await generation_and_revoked(db_conn, cookie) == (0, "revoked_by_client")
    assert (await spa.refresh(cookie)).status == 400
    again = await spa.revoke(None)  # signing out twice, or with the cookie gone: still 200
    assert again.status == 200 and again.cookie["max-age"] == "0"


async def test_revoke_through_the_cookie_needs_the_origin_and_the_csrf_header(spa, db_conn):
    cookie = (await spa.sign_in()).cookie["value"]
    for origin, headers in ((SPA, {}), ("https://evil.example", CSRF), (None, CSRF)):
        answer = await spa.post("/revoke", {"client_id": "spa"}, origin=origin, cookie=cookie, headers=headers)
        assert (answer.status, answer.body["error"]) == (400, "invalid_request")
        assert answer.cookie is None
    assert await generation_and_revoked(db_conn, cookie) == (0, None)
    # A token in the body is the RFC 7009 request as ever, and leaves the cookie alone.
    answer = await spa.post("/revoke", {"client_id": "spa", "token": cookie}, origin=None)
    assert answer.status == 200 and answer.cookie is None
    assert await generation_and_revoked(db_conn, cookie) == (0, "revoked_by_client")


# --- CORS ----------------------------------------------------------------------------------------


async def preflight(spa: Spa, path: str, origin: str, method: str = "POST",
                    request_headers: str = "tessera-csrf") -> aiohttp.ClientResponse:
    async with spa.http.options(spa.base + path, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": request_headers,
    }) as response:
        return response


@pytest.fixture
async def two_spas(env, clock, admin) -> AsyncIterator[Spa]:
    """The cookie client at SPA, and a public client without the cookie at OTHER_SPA."""
    await register_spa(admin)
    await register_spa(admin, "other-spa", allowed_origins=(OTHER_SPA,), refresh_token_cookie=False,
                       redirect_uris=(OTHER_SPA + "/callback",))
    await admin.client("svc")
    await admin.user("alice")
    async with spa_server(env, clock) as app:
        yield app


@pytest.mark.parametrize("path,method,methods", [
    ("/token", "POST", "POST"), ("/revoke", "POST", "POST"), ("/userinfo", "GET", "GET, POST"),
    ("/userinfo", "POST", "GET, POST"),
])
async def test_a_preflight_from_a_cookie_clients_origin_allows_credentials_and_the_csrf_header(
    two_spas, path, method, methods
):
    response = await preflight(two_spas, path, SPA, method)
    assert response.status == 204
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")}
    allowed = {h.strip().lower() for h in headers.pop("access-control-allow-headers").split(",")}
    assert allowed == {"tessera-csrf", "authorization", "content-type"}
    assert headers == {
        "access-control-allow-origin": SPA, "access-control-allow-credentials": "true",
        "access-control-allow-methods": methods, "access-control-max-age": "600",
    }
    assert "Origin" in response.headers.getall("Vary")


async def test_a_preflight_from_a_public_clients_origin_has_no_credentials(two_spas):
    response = await preflight(two_spas, "/token", OTHER_SPA)
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == OTHER_SPA
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("origin", UNREGISTERED)
async def test_no_cors_for_an_origin_no_client_has(two_spas, origin):
    for path in ("/token", "/revoke", "/userinfo"):
        response = await preflight(two_spas, path, origin)
        assert not any(k.lower().startswith("access-control-") for k in response.headers), (path, origin)
    answer = await two_spas.refresh(None, origin=origin)
    assert answer.status == 400 and cors_headers(answer) == {}
    assert "Origin" in answer.headers.getall("Vary")


async def test_a_preflight_asking_another_method_is_not_answered(two_spas):
    for path, method in (("/token", "GET"), ("/revoke", "PUT"), ("/userinfo", "DELETE")):
        response = await preflight(two_spas, path, SPA, method)
        assert "Access-Control-Allow-Origin" not in response.headers, path


async def test_answers_to_a_registered_origin_name_it_exactly_errors_included(two_spas):
    signed_in = await two_spas.sign_in()
    refused = await two_spas.refresh(None, headers={})  # 400 invalid_request
    bad_client = await two_spas.post("/token", {"grant_type": "refresh_token", "client_id": "nobody"})  # 401
    for answer in (signed_in, refused, bad_client):
        assert cors_headers(answer) == {
            "access-control-allow-origin": SPA, "access-control-allow-credentials": "true",
            "access-control-expose-headers": "Retry-After, WWW-Authenticate",
        }, answer.status
        assert answer.headers.getall("Vary") == ["Origin"]
    async with two_spas.http.get(two_spas.base + "/userinfo", headers={
        "Origin": SPA, "Authorization": "Bearer " + signed_in.body["access_token"],
    }) as info:
        assert info.status == 200 and info.headers["Access-Control-Allow-Origin"] == SPA
    other = await two_spas.post("/revoke", {"client_id": "other-spa", "token": "x"}, origin=OTHER_SPA)
    assert other.status == 200 and cors_headers(other) == {
        "access-control-allow-origin": OTHER_SPA, "access-control-expose-headers": "Retry-After, WWW-Authenticate",
    }


async def test_no_cors_at_the_authorization_endpoint_the_pages_or_introspection(two_spas):
    http = two_spas.http
    _, challenge = pkce_pair()
    query = authorization_parameters("spa", challenge, redirect_uri=SPA_CALLBACK)
    for method, path, kwargs in (
        ("GET", "/authorize", {"params": query}), ("OPTIONS", "/authorize", {}), ("POST", "/login", {}),
        ("GET", "/logout", {}), ("POST", "/introspect", {"data": {"token": "x"}}), ("OPTIONS", "/introspect", {}),
        ("GET", "/.well-known/openid-configuration", {}), ("GET", "/static/tessera.css", {}),
    ):
        headers = {"Origin": SPA, "Access-Control-Request-Method": "POST" if method == "OPTIONS" else method}
        async with http.request(method, two_spas.base + path, headers=headers, allow_redirects=False, **kwargs) as r:
            assert not any(k.lower().startswith("access-control-") for k in r.headers), (method, path)


async def test_a_server_side_request_without_origin_is_answered_as_before(two_spas):
    async with two_spas.http.post(two_spas.base + "/token", data={"grant_type": "client_credentials"},
                                  headers=basic("svc", SECRET)) as response:
        assert response.status == 200
        assert "Vary" not in response.headers and "Set-Cookie" not in response.headers
        assert not any(k.lower().startswith("access-control-") for k in response.headers)


async def test_an_origin_registered_or_removed_while_serving_takes_effect_at_once(spa, admin):
    late = "https://late.example"

    async def allowed() -> bool:
        return (await preflight(spa, "/token", late)).headers.get("Access-Control-Allow-Origin") == late

    assert not await allowed()
    await register_spa(admin, "late", allowed_origins=(late,), redirect_uris=(late + "/callback",))
    await eventually(allowed, what="the new origin answered")
    await admin.pool.execute("DELETE FROM clients WHERE client_id = 'late'")
    await eventually(lambda: _not(allowed()), what="the removed origin refused")


async def _not(check: Any) -> bool:
    return not await check


# --- registering a browser app --------------------------------------------------------------------


@pytest.mark.parametrize("origin", [
    "https://spa.example", "https://spa.example:8443", "http://127.0.0.1:5173", "http://localhost:3000",
    "http://[::1]:8080",
])
def test_an_allowed_origin_is_an_origin_as_browsers_send_it(origin):
    assert origin_problem(origin) is None


@pytest.mark.parametrize("origin", [
    "*", "null", "spa.example", "https://spa.example/", "https://spa.example/app", "https://spa.example?x",
    "https://SPA.example", "https://spa.example:443", "http://spa.example", "http://127.0.0.1:80", "ftp://spa.example",
    "https://user@spa.example", "https://spa.example:", "https://spa.example:99999",
])
def test_anything_else_is_refused_as_an_allowed_origin(origin):
    assert origin_problem(origin) is not None


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "tessera.server.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=60)


SPA_CREATE = ("clients", "create", "spa", "--public", "--grant-types", "authorization_code,refresh_token",
              "--scopes", "openid api", "--audiences", "https://api.example", "--redirect-uris", SPA_CALLBACK)


async def test_clients_create_registers_a_browser_app(env, admin):
    created = cli(env, *SPA_CREATE, "--allowed-origins", SPA, "--refresh-token-cookie", "--json")
    assert created.returncode == 0, created.stderr
    row = await admin.pool.fetchrow("SELECT allowed_origins, refresh_token_cookie FROM clients WHERE client_id = 'spa'")
    assert (row["allowed_origins"], row["refresh_token_cookie"]) == ([SPA], True)


@pytest.mark.parametrize("flags,says", [
    (("--allowed-origins", "https://spa.example/"), "--allowed-origins: 'https://spa.example/'"),
    (("--allowed-origins", "http://spa.example"), "loopback"),
    (("--refresh-token-cookie",), "--allowed-origins"),
])
def test_clients_create_refuses_a_bad_browser_app_in_one_line(env, flags, says):
    refused = cli(env, *SPA_CREATE, *flags)
    assert refused.returncode != 0 and says in refused.stderr and refused.stderr.count("\n") <= 1, refused.stderr


def test_the_refresh_token_cookie_is_for_public_clients(env):
    refused = cli(env, "clients", "create", "web", "--grant-types", "authorization_code,refresh_token",
                  "--audiences", "https://api.example", "--redirect-uris", SPA_CALLBACK, "--allowed-origins", SPA,
                  "--refresh-token-cookie")
    assert refused.returncode != 0 and "public" in refused.stderr


async def test_the_database_refuses_a_cookie_client_that_is_confidential_or_has_no_origin(admin):
    with pytest.raises(asyncpg.CheckViolationError):
        await register_spa(admin, "web", secret=SECRET)
    with pytest.raises(asyncpg.CheckViolationError):
        await register_spa(admin, "bare", allowed_origins=())
