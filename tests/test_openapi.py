"""The OpenAPI 3.1 document describes the HTTP API as it answers: schemathesis sends generated
requests (valid and invalid) to a live `tessera serve` and checks each answer against it, and a
person's sign-in, step by step, checks the answers no generated request reaches."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tessera.server.app import create_app
from tessera.server.http.limits import MAX_LINE_BYTES
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.settings import load_settings
from tessera.server.store import ClientStore, UserStore
from tests.conftest import FAST_ARGON2, TABLES_KEPT
from tests.helpers import KEK, PASSWORD, SECRET, basic
from tests.processes import tessera_serve
from tests.sign_in_helpers import forms_of, pkce_pair

DOCUMENT = Path(__file__).parent.parent / "server" / "http" / "openapi.json"
CONTRACT_PATHS = {
    "/token", "/revoke", "/introspect", "/.well-known/jwks.json", "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration", "/healthz", "/readyz", "/metrics",
    "/authorize", "/login", "/consent", "/userinfo", "/logout",
}
# The app of the document's examples (/authorize), registered by _prepare.
APP = "app"
REDIRECT_URI = "https://app.example/cb"
FORM = "application/x-www-form-urlencoded"


def _served_paths() -> set[str]:
    """What this build serves; endpoints of the contract not built yet are left out of the run."""
    app = create_app(load_settings({}, require_kek=False))
    # Less the catch-all route that answers every other path with 404 (tessera.server.http.views.add_routes).
    return {resource.canonical for resource in app.router.resources() if "{" not in resource.canonical}


CHECKS: dict[str, Any] = {
    "checks": {
        # OAuth answers a well-formed request with a wrong password or an unknown grant with 400
        # by design (RFC 6749 section 5.2): "schema-valid data must be accepted" does not apply.
        "positive_data_acceptance": {"enabled": False},
        # A body over the limit is refused with 413, and one that arrives too slowly with 408.
        "negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 408, 413, 415, 429]},
    },
    "operations": [
        {
            # RFC 6749 section 4.1.2.1: once the client and its redirect URI are known, the
            # authorization endpoint tells the client of every other error with a 303 to that
            # redirect URI (error=invalid_request, unsupported_response_type, ...), not with a 4xx;
            # an unknown client or redirect URI is a 400 HTML page. It authenticates nobody (no 401).
            "include-path": "/authorize",
            "checks": {"negative_data_rejection": {"expected-statuses": [303, 400, 405, 408, 413]}},
        },
        {
            # The pages' forms refuse a CSRF token or a sealed interaction that is not this
            # browser's with a 403 HTML page (OWASP CSRF cheat sheet), whatever else the form
            # holds; the login page also throttles (429). They authenticate no client (no 401).
            "include-name": ["POST /login", "POST /consent", "POST /logout"],
            "checks": {"negative_data_rejection": {"expected-statuses": [400, 403, 405, 408, 413, 429]}},
        },
    ],
}
SERVED = _served_paths()
document = schemathesis.openapi.from_path(str(DOCUMENT), config=SchemathesisConfig.from_dict(CHECKS))
# The operations a client authenticates to (client_secret_basic), by the document's security.
CLIENT_AUTHENTICATED = {
    f"{method.upper()} {path}"
    for path, item in json.loads(DOCUMENT.read_text())["paths"].items()
    for method, operation in item.items() if {"clientSecretBasic": []} in operation.get("security", [])
}
# Selected with exclude: with per-operation settings ("operations" above) schemathesis adds a
# selection filter of its own that matches every operation, and `include` filters are ORed with it.
schema = document.exclude(func=lambda ctx: ctx.operation.path not in SERVED)
form_endpoints = schema.exclude(func=lambda ctx: ctx.operation.label not in CLIENT_AUTHENTICATED)
# What a browser that loaded the page sends: well-formed forms only (the generated bad ones are the
# tests above), with the page's own CSRF token and interaction, or a signed-in user's access token.
well_formed = schemathesis.openapi.from_path(
    str(DOCUMENT), config=SchemathesisConfig.from_dict({**CHECKS, "generation": {"mode": "positive"}})
).exclude(func=lambda ctx: ctx.operation.path not in SERVED)
page_forms = well_formed.exclude(func=lambda ctx: ctx.operation.label not in {"POST /login", "POST /consent"})
userinfo = well_formed.exclude(func=lambda ctx: ctx.operation.path != "/userinfo")
# Bounded: a few dozen examples per operation, no time limit per example.
BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def call_and_validate(case: schemathesis.Case, base: str, headers: dict[str, str] | None = None) -> schemathesis.Response:
    """``case.call_and_validate``, but a request target longer than the HTTP parser takes never
    reaches an endpoint: it is refused before routing with the RFC 6749 JSON body (CONTRACT.md,
    "Request limits"; an /authorize or /logout URL can be that long), which is checked instead."""
    response = case.call(base_url=base, headers=headers)
    if len(response.request.path_url) > MAX_LINE_BYTES:
        assert response.status_code == 400, response.status_code
        assert response.json() == {
            "error": "invalid_request", "error_description": "the request line or a header line is too long",
        }
        return response
    sent = {"base_url": base, **({"headers": headers} if headers else {})}
    case.validate_response(response, headers=headers, transport_kwargs=sent)
    return response


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
            # An app that signs people in, not first-party (so its consent page is shown): the
            # document's examples name it, so generated authorization requests reach its pages.
            await ClientStore(connection).create(
                APP, secret_hash=await hasher.hash(SECRET), grant_types=["authorization_code", "refresh_token"],
                scopes=["openid", "read"], audiences=["https://orders.example"], redirect_uris=[REDIRECT_URI],
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


# --- a browser, each answer checked against the document -------------------------------------------


@dataclass
class Browser:
    """Keeps the pages' cookies as a browser does for this origin (the __Host- ones too, which an
    HTTP client drops over http), follows nothing by itself, and checks every answer."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    def send(
        self, method: str, path: str, *, query: dict[str, str] | None = None, form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> schemathesis.Response:
        parts: dict[str, Any] = {"query": query, "cookies": dict(self.cookies) or None}
        if form is not None:
            parts.update(body=form, media_type=FORM)
        response = call_and_validate(document[path][method].Case(**parts), self.base, headers)
        self.keep(response)
        return response

    def keep(self, response: schemathesis.Response) -> None:
        for value in response.headers.get("set-cookie", []):
            name, _, rest = value.partition("=")
            content = rest.split(";", 1)[0]
            if "max-age=0" in value.lower() or content in ("", '""'):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = content


def form_fields(response: schemathesis.Response) -> dict[str, str]:
    (form,) = forms_of(response.text)
    return dict(form["fields"])


def redirected_to(response: schemathesis.Response, uri: str) -> dict[str, str]:
    assert response.status_code == 303, (response.status_code, response.text)
    (location,) = response.headers["location"]
    assert location.startswith(uri + "?"), location
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


def authorization_request(challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code", "client_id": APP, "redirect_uri": REDIRECT_URI, "scope": "openid read",
        "state": secrets.token_urlsafe(8), "code_challenge": challenge, "code_challenge_method": "S256",
        "nonce": secrets.token_urlsafe(8), **extra,
    }


def exchange(base: str, code: str, verifier: str) -> schemathesis.Response:
    case = document["/token"]["POST"].Case(media_type=FORM, body={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    })
    return call_and_validate(case, base, basic(APP, SECRET))


def sign_in(browser: Browser) -> dict[str, str]:
    """alice signs in to the app (and allows it, unless she has already); the app's token response."""
    verifier, challenge = pkce_pair()
    login = browser.send("GET", "/authorize", query=authorization_request(challenge))
    signed_in = browser.send("POST", "/login", form={**form_fields(login), "username": "alice", "password": PASSWORD})
    if signed_in.status_code == 200:
        signed_in = browser.send("POST", "/consent", form={**form_fields(signed_in), "decision": "allow"})
    tokens = exchange(browser.base, redirected_to(signed_in, REDIRECT_URI)["code"], verifier)
    assert tokens.status_code == 200, tokens.text
    return tokens.json()


# --- generated requests -------------------------------------------------------------------------


@schema.parametrize()
@BOUNDED
def test_every_answer_conforms_to_the_document(case, live_server):
    call_and_validate(case, live_server)


@form_endpoints.parametrize()
@BOUNDED
def test_every_answer_to_an_authenticated_client_conforms_to_the_document(case, live_server):
    case.headers = {**(case.headers or {}), **basic("svc", SECRET)}
    call_and_validate(case, live_server)


@pytest.fixture(scope="module")
def at_the_pages(live_server: str) -> dict[str, tuple[Browser, dict[str, str]]]:
    """A browser at the login page, and one signed in at the consent page: each with its form."""
    _, challenge = pkce_pair()
    at_login = Browser(live_server)
    login = at_login.send("GET", "/authorize", query=authorization_request(challenge))
    at_consent = Browser(live_server)
    signed_in = at_consent.send("POST", "/login", form={
        **form_fields(at_consent.send("GET", "/authorize", query=authorization_request(challenge, prompt="consent"))),
        "username": "alice", "password": PASSWORD,
    })
    assert login.status_code == signed_in.status_code == 200
    return {"/login": (at_login, form_fields(login)), "/consent": (at_consent, form_fields(signed_in))}


@page_forms.parametrize()
@BOUNDED
def test_the_forms_a_browser_sends_from_its_page_are_answered_as_documented(case, at_the_pages):
    browser, fields = at_the_pages[case.path]
    case.cookies = {**(case.cookies or {}), **browser.cookies}
    case.body = {**case.body, "interaction": fields["interaction"], "csrf_token": fields["csrf_token"]}
    call_and_validate(case, browser.base)


@pytest.fixture(scope="module")
def access_token(live_server: str) -> str:
    return sign_in(Browser(live_server))["access_token"]


@userinfo.parametrize()
@BOUNDED
def test_userinfo_answers_a_signed_in_user_as_documented(case, live_server, access_token):
    # As explicit headers, so that schemathesis also checks the answer without them and with a
    # wrong token (ignored_auth).
    response = call_and_validate(case, live_server, {"Authorization": f"Bearer {access_token}"})
    assert response.status_code == 200 or case.method not in ("GET", "POST"), response.text


# --- a person's sign-in, step by step -----------------------------------------------------------


def test_a_sign_in_from_authorization_to_logout_is_answered_as_documented(live_server):
    browser = Browser(live_server)
    verifier, challenge = pkce_pair()
    asked = authorization_request(challenge, prompt="consent")  # whatever alice allowed before
    login = browser.send("GET", "/authorize", query=asked)
    assert login.status_code == 200 and "__Host-tessera_browser" in browser.cookies
    wrong = browser.send("POST", "/login", form={**form_fields(login), "username": "alice", "password": "not it"})
    assert wrong.status_code == 400 and "not right" in wrong.text
    consent = browser.send("POST", "/login", form={**form_fields(wrong), "username": "alice", "password": PASSWORD})
    assert consent.status_code == 200 and "__Host-tessera_session" in browser.cookies
    denied = redirected_to(browser.send("POST", "/consent", form={**form_fields(consent), "decision": "deny"}), REDIRECT_URI)
    assert denied["error"] == "access_denied" and denied["state"] == asked["state"]
    answer = redirected_to(browser.send("POST", "/consent", form={**form_fields(consent), "decision": "allow"}), REDIRECT_URI)
    assert answer["state"] == asked["state"] and answer["iss"] == live_server

    tokens = exchange(live_server, answer["code"], verifier)
    assert tokens.status_code == 200 and {"id_token", "refresh_token"} <= set(tokens.json())
    replayed = exchange(live_server, answer["code"], verifier)
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"

    # Signed in and allowed already: straight back with a code, whose access token /userinfo
    # answers (a client's own token, without openid, it refuses); prompt=login asks again.
    verifier, challenge = pkce_pair()
    code = redirected_to(browser.send("GET", "/authorize", query=authorization_request(challenge)), REDIRECT_URI)["code"]
    tokens = exchange(live_server, code, verifier).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    for method in ("GET", "POST"):
        assert browser.send(method, "/userinfo", headers=bearer).json()["preferred_username"] == "alice"
    own = call_and_validate(document["/token"]["POST"].Case(media_type=FORM, body={"grant_type": "client_credentials"}),
                            live_server, basic("svc", SECRET))
    without_openid = browser.send("GET", "/userinfo", headers={"Authorization": f"Bearer {own.json()['access_token']}"})
    assert without_openid.status_code == 403 and without_openid.json()["error"] == "insufficient_scope"
    assert browser.send("POST", "/authorize", form=authorization_request(challenge, prompt="login")).status_code == 200

    # Without id_token_hint the person confirms; then the access token of that sign-in is refused.
    confirm = browser.send("GET", "/logout")
    assert confirm.status_code == 200 and "Sign out?" in confirm.text
    forged = Browser(live_server, {"__Host-tessera_browser": secrets.token_urlsafe(24)})
    assert forged.send("POST", "/logout", form={**form_fields(confirm), "decision": "logout"}).status_code == 403
    signed_out = browser.send("POST", "/logout", form={**form_fields(confirm), "decision": "logout"})
    assert signed_out.status_code == 200 and "__Host-tessera_session" not in browser.cookies
    assert browser.send("GET", "/userinfo", headers=bearer).status_code == 401
    refused = browser.send("GET", "/authorize", query=authorization_request(challenge, prompt="none"))
    assert redirected_to(refused, REDIRECT_URI)["error"] == "login_required"

    # With an id_token_hint and a registered post_logout_redirect_uri: back to the app.
    back = browser.send("GET", "/logout", query={
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": REDIRECT_URI, "state": "bye",
    })
    assert redirected_to(back, REDIRECT_URI) == {"state": "bye"}
    assert browser.send("GET", "/static/tessera.css").status_code == 200


def test_the_document_is_served_and_covers_the_contract(live_server):
    with urllib.request.urlopen(f"{live_server}/openapi.json", timeout=5) as response:
        served = json.loads(response.read())
    assert served == json.loads(DOCUMENT.read_text())
    assert served["openapi"].startswith("3.1")
    assert CONTRACT_PATHS <= set(served["paths"])
    assert SERVED <= set(served["paths"]) | {"/openapi.json"}
