"""Attacks on the authorization code flow, each refused with the right error and with nothing issued
(CONTRACT.md, "Sign-in for browser, mobile and desktop apps"; RFC 9700 sections 2.1, 4.1, 4.4,
4.5, 4.7 and 4.11; RFC 7636; RFC 9207; OpenID Connect Core section 3.1.2.1).

Every test checks the database after the refusal: no refresh-token family, the code not redeemed,
no sign-in session where none is due. The server runs in process (tests.helpers.tessera_server)
with a FakeClock; tests.sign_in_helpers.Browser is the person's browser.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import asyncpg
import jwt as pyjwt
import pytest

from tests.helpers import PASSWORD, SECRET, basic, tessera_server
from tests.processes import cli
from tests.sign_in_helpers import REDIRECT_URI, Answer, Browser, authorization_parameters, forms_of, pkce_pair

ISSUER = "https://tessera.test"
CLIENT = "webapp"
SESSION_COOKIE = "__Host-tessera_session"
SAME_ERROR = "The username or password is not right."


# --- the stage ---------------------------------------------------------------------------------


async def _app(admin: Any, client_id: str = CLIENT, *, first_party: bool = True, redirect_uris: tuple[str, ...] = (REDIRECT_URI,),
               grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")) -> None:
    await admin.client(client_id, grant_types=grant_types, scopes=("openid", "read"), redirect_uris=redirect_uris,
                       first_party=first_party)


@contextlib.asynccontextmanager
async def _site(env: dict[str, str], clock: Any, **settings: str) -> AsyncIterator[tuple[Any, Browser]]:
    """The server in process, and a browser for it."""
    async with tessera_server(env, clock, **settings) as http, aiohttp.ClientSession() as session:
        yield http, Browser(str(http.make_url("")).rstrip("/"), session)


def _another_browser(browser: Browser) -> Browser:
    return Browser(browser.base, browser.session)


async def _signed_in_code(browser: Browser, client_id: str = CLIENT, **extra: str) -> tuple[str, str]:
    """Through /authorize (the login page if the browser is not signed in, consent if asked) to a
    code; returns the code and its verifier."""
    verifier, challenge = pkce_pair()
    answer = await browser.authorize(**authorization_parameters(client_id, challenge, **extra))
    if answer.status == 200 and 'action="/login"' in answer.text:
        answer = await browser.submit(answer, username="alice", password=PASSWORD)
    if answer.status == 200 and 'action="/consent"' in answer.text:
        answer = await browser.submit(answer, decision="allow")
    assert answer.status == 303, (answer.status, answer.text[:800])
    query = answer.query()
    assert "code" in query and query["iss"] == ISSUER, answer.location
    return query["code"], verifier


async def _redeem(http: Any, code: str, verifier: str | None, *, client: str = CLIENT, secret: str = SECRET,
                  redirect_uri: str | None = REDIRECT_URI) -> tuple[int, dict[str, Any]]:
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": redirect_uri}
    response = await http.post("/token", data={k: v for k, v in data.items() if v is not None},
                               headers=basic(client, secret))
    return response.status, await response.json(content_type=None)


async def _refresh(http: Any, refresh_token: str) -> tuple[int, dict[str, Any]]:
    response = await http.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                               headers=basic(CLIENT, SECRET))
    return response.status, await response.json(content_type=None)


def _hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


async def _code_row(db: asyncpg.Connection, code: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT redeemed_at, family_id FROM authorization_codes WHERE code_hash = $1", _hash(code))
    assert row is not None, "the code is not stored"
    return row


async def _count(db: asyncpg.Connection, table: str, where: str = "true") -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))


async def _nothing_issued_for(db: asyncpg.Connection, code: str) -> None:
    """The code is still unredeemed and no refresh-token family exists."""
    row = await _code_row(db, code)
    assert row["redeemed_at"] is None and row["family_id"] is None
    assert await _count(db, "refresh_families") == 0


def _is_error_page(answer: Answer, status: int = 400) -> None:
    assert answer.status == status, (answer.status, answer.headers.get("Location"), answer.text[:400])
    assert "Location" not in answer.headers, answer.headers["Location"]
    assert answer.headers["Content-Type"].startswith("text/html")


def _redirect_query(answer: Answer, redirect_uri: str = REDIRECT_URI) -> dict[str, list[str]]:
    """The parameters of an authorization response redirect to ``redirect_uri``, every value kept."""
    assert answer.status == 303, (answer.status, answer.text[:400])
    assert answer.location.split("?", 1)[0] == redirect_uri.split("?", 1)[0], answer.location
    assert answer.headers["Cache-Control"] == "no-store"
    return parse_qs(urlsplit(answer.location).query, keep_blank_values=True)


def _set_cookies(answer: Answer) -> list[str]:
    return [value.split("=", 1)[0] for value in answer.headers.getall("Set-Cookie", [])]


# --- codes at /token ---------------------------------------------------------------------------


async def test_a_replayed_code_is_refused_and_revokes_the_family_its_first_redemption_started(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, verifier = await _signed_in_code(browser)
        status, first = await _redeem(http, code, verifier)
        assert status == 200 and "refresh_token" in first, first
        family_id = (await _code_row(db_conn, code))["family_id"]
        assert family_id is not None

        status, again = await _redeem(http, code, verifier)
        assert (status, again["error"]) == (400, "invalid_grant")
        assert "access_token" not in again and "id_token" not in again

        # The first redemption's refresh token now fails: its family is revoked.
        status, refreshed = await _refresh(http, first["refresh_token"])
        assert (status, refreshed["error"]) == (400, "invalid_grant")
        family = await db_conn.fetchrow("SELECT revoked_at, revoked_reason FROM refresh_families WHERE family_id = $1", family_id)
        assert family["revoked_at"] is not None and family["revoked_reason"] == "code_replay"
        assert await _count(db_conn, "refresh_families") == 1  # the replay started no family of its own
        events = await db_conn.fetch("SELECT kind, family_id, client_id, presented_by FROM security_events")
        assert [(e["kind"], e["family_id"], e["client_id"], e["presented_by"]) for e in events] == [
            ("code_replay", family_id, CLIENT, CLIENT)
        ]


async def test_a_code_presented_by_another_client_is_refused_and_stays_redeemable_by_its_own(env, clock, admin, db_conn):
    await _app(admin)
    await _app(admin, "intruder")  # its own valid secret, the same redirect URI
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, verifier = await _signed_in_code(browser)
        status, body = await _redeem(http, code, verifier, client="intruder")
        assert (status, body["error"]) == (400, "invalid_grant")
        await _nothing_issued_for(db_conn, code)

        status, body = await _redeem(http, code, verifier)
        assert status == 200 and "refresh_token" in body, body
        assert pyjwt.decode(body["id_token"], options={"verify_signature": False})["aud"] == CLIENT


async def test_a_wrong_code_verifier_is_invalid_grant_and_spends_nothing(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, verifier = await _signed_in_code(browser)
        other_verifier, _ = pkce_pair()
        for wrong in (other_verifier, verifier[:-1] + ("A" if verifier[-1] != "A" else "B"), verifier + "x", "short"):
            status, body = await _redeem(http, code, wrong)
            assert (status, body["error"]) == (400, "invalid_grant"), wrong
        await _nothing_issued_for(db_conn, code)
        # (Refused requests spend nothing: the right verifier still redeems it.)
        assert (await _redeem(http, code, verifier))[0] == 200


async def test_a_missing_code_verifier_is_invalid_request_and_spends_nothing(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, _ = await _signed_in_code(browser)
        status, body = await _redeem(http, code, None)
        assert (status, body["error"]) == (400, "invalid_request")
        await _nothing_issued_for(db_conn, code)


async def test_code_challenge_method_plain_is_refused_at_authorize_with_invalid_request(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        await _signed_in_code(browser)  # signed in: a request that passed would be answered with a code at once
        codes = await _count(db_conn, "authorization_codes")
        verifier, _ = pkce_pair()
        # With plain, the challenge is the verifier itself (RFC 7636 section 4.2).
        parameters = authorization_parameters(CLIENT, verifier, code_challenge_method="plain")
        query = _redirect_query(await browser.authorize(**parameters))
        assert query["error"] == ["invalid_request"] and query["state"] == [parameters["state"]]
        assert query["iss"] == [ISSUER] and "code" not in query
        for method in ("PLAIN", "s256", ""):
            refused = _redirect_query(await browser.authorize(**{**parameters, "code_challenge_method": method}))
            assert refused["error"] == ["invalid_request"] and "code" not in refused, method
        # An S256 challenge without the method named is not taken for S256 either (RFC 7636 says
        # that means plain).
        _, challenge = pkce_pair()
        without_method = {k: v for k, v in authorization_parameters(CLIENT, challenge).items() if k != "code_challenge_method"}
        refused = _redirect_query(await browser.authorize(**without_method))
        assert refused["error"] == ["invalid_request"] and "code" not in refused
        assert await _count(db_conn, "authorization_codes") == codes


async def test_an_authorization_request_without_code_challenge_is_refused_with_invalid_request(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        await _signed_in_code(browser)
        codes = await _count(db_conn, "authorization_codes")
        parameters = {k: v for k, v in authorization_parameters(CLIENT, "x").items() if k != "code_challenge"}
        query = _redirect_query(await browser.authorize(**parameters))
        assert query["error"] == ["invalid_request"] and query["iss"] == [ISSUER] and "code" not in query
        empty = _redirect_query(await browser.authorize(**{**parameters, "code_challenge": ""}))
        assert empty["error"] == ["invalid_request"] and "code" not in empty
        assert await _count(db_conn, "authorization_codes") == codes


async def test_a_token_request_with_another_redirect_uri_than_the_authorization_request_is_invalid_grant(env, clock, admin, db_conn):
    second = "https://app.example/other-callback"
    await _app(admin, redirect_uris=(REDIRECT_URI, second))
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, verifier = await _signed_in_code(browser)
        for redirect_uri in (second, REDIRECT_URI + "/", None):  # another registered one, a near miss, left out
            status, body = await _redeem(http, code, verifier, redirect_uri=redirect_uri)
            assert (status, body["error"]) == (400, "invalid_grant"), redirect_uri
        await _nothing_issued_for(db_conn, code)


async def test_a_code_used_after_its_lifetime_is_invalid_grant(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock, TESSERA_AUTHORIZATION_CODE_TTL="30") as (http, browser):
        code, verifier = await _signed_in_code(browser)
        clock.advance(31)
        status, body = await _redeem(http, code, verifier)
        assert (status, body["error"]) == (400, "invalid_grant")
        await _nothing_issued_for(db_conn, code)


# --- redirect URIs -------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [
    pytest.param(REDIRECT_URI + "/", id="trailing-slash"),
    pytest.param(REDIRECT_URI + "/evil", id="path-suffix"),
    pytest.param(REDIRECT_URI + "-evil", id="path-suffix-without-slash"),
    pytest.param(REDIRECT_URI + "#fragment", id="fragment"),
    pytest.param("https://APP.example/callback", id="host-letter-case"),
    pytest.param("https://app.example/Callback", id="path-letter-case"),
    pytest.param("HTTPS://app.example/callback", id="scheme-letter-case"),
    pytest.param("https://app.example:8443/callback", id="port"),
    pytest.param("https://app.example:443/callback", id="default-port-spelled-out"),
    pytest.param(REDIRECT_URI + "?next=https://evil.example", id="added-query"),
    pytest.param("http://app.example/callback", id="http-instead-of-https"),
    pytest.param("https://app.example.evil.example/callback", id="another-host"),
])
async def test_a_redirect_uri_not_exactly_registered_is_an_error_page_and_never_a_redirect(env, clock, admin, db_conn, sent):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        await _signed_in_code(browser)  # signed in: a request that passed would get a code at once
        codes = await _count(db_conn, "authorization_codes")
        _, challenge = pkce_pair()
        _is_error_page(await browser.authorize(**authorization_parameters(CLIENT, challenge, redirect_uri=sent)))
        # Also when the request has another error that would otherwise be redirected.
        _is_error_page(await browser.authorize(
            **authorization_parameters(CLIENT, challenge, redirect_uri=sent, response_type="token")
        ))
        _is_error_page(await browser.authorize(**authorization_parameters(CLIENT, challenge, redirect_uri=sent, prompt="none")))
        assert await _count(db_conn, "authorization_codes") == codes


async def test_a_loopback_redirect_uri_is_accepted_on_any_port_and_the_code_is_bound_to_that_port(env, clock, admin, db_conn):
    await _app(admin, "native", redirect_uris=("http://127.0.0.1/cb",))
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        sent = "http://127.0.0.1:53682/cb"
        code, verifier = await _signed_in_code(browser, "native", redirect_uri=sent)
        status, body = await _redeem(http, code, verifier, client="native", redirect_uri="http://127.0.0.1:9999/cb")
        assert (status, body["error"]) == (400, "invalid_grant")  # bound to the port it was sent to
        status, body = await _redeem(http, code, verifier, client="native", redirect_uri=sent)
        assert status == 200, body

        for port in ("8080", "1", "65535"):
            _, challenge = pkce_pair()
            answer = await browser.authorize(**authorization_parameters("native", challenge, redirect_uri=f"http://127.0.0.1:{port}/cb"))
            assert answer.status == 303 and answer.location.startswith(f"http://127.0.0.1:{port}/cb?code="), answer.location
        # Only the port may differ: not the host, the path, or the scheme.
        for other in ("http://localhost:8080/cb", "http://127.0.0.2:8080/cb", "http://127.0.0.1:8080/cb/",
                      "http://127.0.0.1:8080/cbx", "https://127.0.0.1:8080/cb", "http://127.0.0.1:8080@evil.example/cb",
                      "http://127.0.0.1:99999/cb"):
            _, challenge = pkce_pair()
            _is_error_page(await browser.authorize(**authorization_parameters("native", challenge, redirect_uri=other)))


def test_clients_create_refuses_http_redirect_uris_except_for_loopback_hosts(env):
    def create(client_id: str, uri: str) -> Any:
        return cli(env, "clients", "create", client_id, "--grant-types", "authorization_code", "--scopes", "openid",
                   "--audiences", "https://orders.example", "--redirect-uris", uri, "--public")

    for index, uri in enumerate(("http://app.example/cb", "http://10.0.0.1/cb", "http://127.0.0.1.nip.io/cb",
                                 "http://localhost.evil.example/cb")):
        refused = create(f"web{index}", uri)
        assert refused.returncode != 0, uri
        assert refused.stderr.count("\n") == 1 and "--redirect-uris" in refused.stderr, refused.stderr
    accepted = create("native", "http://127.0.0.1/cb http://[::1]/cb http://localhost/cb")
    assert accepted.returncode == 0, accepted.stderr
    listed = json.loads(cli(env, "clients", "list", "--json").stdout)
    assert [c["client_id"] for c in listed] == ["native"]


# --- open redirects ------------------------------------------------------------------------------


async def test_authorize_never_redirects_for_an_unknown_client_or_an_unregistered_redirect_uri(env, clock, admin, db_conn):
    await _app(admin)
    await admin.client("backend")  # client_credentials only, no redirect URI at all
    async with _site(env, clock) as (http, browser):
        _, challenge = pkce_pair()
        evil = "https://evil.example/cb"
        for parameters in (
            authorization_parameters("nobody", challenge, redirect_uri=evil),
            authorization_parameters("nobody", challenge, redirect_uri=evil, response_type="token"),
            {k: v for k, v in authorization_parameters("x", challenge, redirect_uri=evil).items() if k != "client_id"},
            authorization_parameters("backend", challenge, redirect_uri=evil),
            authorization_parameters(CLIENT, challenge, redirect_uri=evil),
            authorization_parameters(CLIENT, challenge, redirect_uri=evil, code_challenge_method="plain"),
            authorization_parameters(CLIENT, challenge, redirect_uri=evil, scope="admin"),
        ):
            _is_error_page(await browser.authorize(**parameters))
            posted = await browser.request("POST", "/authorize", parameters)
            _is_error_page(posted)
            assert "evil.example" not in posted.headers["Content-Security-Policy"]  # no form may post there either
        assert await _count(db_conn, "authorization_codes") == 0


async def test_logout_never_redirects_to_a_post_logout_redirect_uri_not_registered_for_the_hints_client(env, clock, admin, db_conn):
    await _app(admin)
    await _app(admin, "other", redirect_uris=("https://other.example/cb",))
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, verifier = await _signed_in_code(browser)
        status, tokens = await _redeem(http, code, verifier)
        assert status == 200
        hint = tokens["id_token"]
        forged = hint[: hint.rindex(".") + 1] + base64.urlsafe_b64encode(b"\x00" * 64).rstrip(b"=").decode()

        def logout_path(**parameters: str) -> str:
            return "/logout?" + urlencode(parameters)

        # Signed out by a fresh browser each time (a hint for this browser's session signs out at once).
        for parameters in (
            {"id_token_hint": hint, "post_logout_redirect_uri": "https://evil.example/cb", "state": "s"},
            {"id_token_hint": hint, "post_logout_redirect_uri": "https://other.example/cb", "state": "s"},
            {"id_token_hint": hint, "post_logout_redirect_uri": REDIRECT_URI + "/", "state": "s"},
            {"id_token_hint": forged, "post_logout_redirect_uri": REDIRECT_URI, "state": "s"},
            {"id_token_hint": "not-a-token", "post_logout_redirect_uri": REDIRECT_URI, "state": "s"},
            {"post_logout_redirect_uri": REDIRECT_URI, "state": "s"},
        ):
            for method in ("GET", "POST"):
                stranger = _another_browser(browser)
                answer = await (stranger.request("GET", logout_path(**parameters)) if method == "GET"
                                else stranger.request("POST", "/logout", parameters))
                assert answer.status == 200 and "Location" not in answer.headers, (parameters, answer.headers.get("Location"))

        # Signed in, without a hint: the person is asked, and after saying yes is still not sent there.
        page = await browser.request("GET", logout_path(post_logout_redirect_uri=REDIRECT_URI, state="s"))
        assert page.status == 200 and "Location" not in page.headers and 'action="/logout"' in page.text
        assert await _count(db_conn, "login_sessions", "ended_at IS NULL") == 1  # not signed out by a mere link
        done = await browser.submit(page, decision="logout")
        assert done.status == 200 and "Location" not in done.headers, done.headers.get("Location")
        assert await _count(db_conn, "login_sessions", "ended_at IS NULL") == 0


# --- the login form ------------------------------------------------------------------------------


async def _assert_refused_form(answer: Answer, db: asyncpg.Connection) -> None:
    _is_error_page(answer, 403)
    assert SESSION_COOKIE not in _set_cookies(answer)
    assert await _count(db, "login_sessions") == 0
    assert await _count(db, "login_failures") == 0  # refused before the password was looked at
    assert await _count(db, "authorization_codes") == 0


async def test_a_login_post_without_a_csrf_token_is_refused(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        _, challenge = pkce_pair()
        page = await browser.authorize(**authorization_parameters(CLIENT, challenge))
        (form,) = forms_of(page.text)
        fields = {**form["fields"], "username": "alice", "password": PASSWORD}
        without = {k: v for k, v in fields.items() if k != "csrf_token"}
        await _assert_refused_form(await browser.request("POST", "/login", without), db_conn)
        for bad in ("", "x", "é" * 43, fields["csrf_token"][:-1]):
            await _assert_refused_form(await browser.request("POST", "/login", {**fields, "csrf_token": bad}), db_conn)
        # A cross-site form post: the right fields, but no cookie of this browser.
        await _assert_refused_form(await Browser(browser.base, browser.session).request("POST", "/login", fields), db_conn)


async def test_a_login_post_with_another_browsers_csrf_token_or_interaction_is_refused(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, victim):
        attacker = _another_browser(victim)
        _, challenge = pkce_pair()
        theirs = forms_of((await attacker.authorize(**authorization_parameters(CLIENT, challenge))).text)[0]["fields"]
        _, challenge = pkce_pair()
        page = await victim.authorize(**authorization_parameters(CLIENT, challenge))
        ours = forms_of(page.text)[0]["fields"]
        credentials = {"username": "alice", "password": PASSWORD}
        for fields in (
            {**theirs, **credentials},  # the attacker's whole form, posted by the victim's browser
            {**ours, "csrf_token": theirs["csrf_token"], **credentials},
            {**ours, "interaction": theirs["interaction"], **credentials},
        ):
            await _assert_refused_form(await victim.request("POST", "/login", fields), db_conn)
        # ... and the victim's own form, posted by the attacker's browser.
        await _assert_refused_form(await attacker.request("POST", "/login", {**ours, **credentials}), db_conn)


async def test_a_login_post_with_a_tampered_or_expired_interaction_is_refused(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        _, challenge = pkce_pair()
        page = await browser.authorize(**authorization_parameters(CLIENT, challenge))
        fields = {**forms_of(page.text)[0]["fields"], "username": "alice", "password": PASSWORD}
        sealed = fields["interaction"]
        payload_text, mac_text = sealed.split(".")
        payload = json.loads(base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4)))
        payload["p"]["redirect_uri"] = "https://evil.example/cb"
        swapped = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode() + "." + mac_text
        flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
        for interaction in (swapped, flipped, payload_text, "." + mac_text, "", "é.é", "!!!.!!!", sealed + ".x"):
            await _assert_refused_form(await browser.request("POST", "/login", {**fields, "interaction": interaction}), db_conn)
        clock.advance(1801)  # past INTERACTION_SECONDS
        await _assert_refused_form(await browser.request("POST", "/login", fields), db_conn)


async def test_a_consent_post_from_another_browser_allows_nothing(env, clock, admin, db_conn):
    await _app(admin, first_party=False)
    await admin.user("alice")
    async with _site(env, clock) as (http, victim):
        _, challenge = pkce_pair()
        login = await victim.authorize(**authorization_parameters(CLIENT, challenge))
        consent = await victim.submit(login, username="alice", password=PASSWORD)
        assert 'action="/consent"' in consent.text
        attacker = _another_browser(victim)
        attacker.cookies[SESSION_COOKIE] = victim.cookies[SESSION_COOKIE]  # even holding the session cookie
        answer = await attacker.request("POST", "/consent", {**forms_of(consent.text)[0]["fields"], "decision": "allow"})
        _is_error_page(answer, 403)
        assert await _count(db_conn, "consents") == 0 and await _count(db_conn, "authorization_codes") == 0


async def test_a_logout_form_post_without_this_browsers_csrf_token_signs_nobody_out(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, victim):
        code, verifier = await _signed_in_code(victim)
        assert (await _redeem(http, code, verifier))[0] == 200
        confirm = await victim.request("GET", "/logout")
        fields = {**forms_of(confirm.text)[0]["fields"], "decision": "logout"}
        attacker = _another_browser(victim)
        _, challenge = pkce_pair()
        theirs = forms_of((await attacker.authorize(**authorization_parameters(CLIENT, challenge))).text)[0]["fields"]
        for sent in (
            {k: v for k, v in fields.items() if k != "csrf_token"},
            {**fields, "csrf_token": ""},
            {**fields, "csrf_token": "é" * 43},
            {**fields, "csrf_token": theirs["csrf_token"]},
            {**fields, "interaction": theirs["interaction"]},
        ):
            _is_error_page(await victim.request("POST", "/logout", sent), 403)
        assert await _count(db_conn, "login_sessions", "ended_at IS NULL") == 1
        assert await _count(db_conn, "refresh_families", "revoked_at IS NOT NULL") == 0
        assert SESSION_COOKIE in victim.cookies


# --- the authorization response --------------------------------------------------------------------


async def test_every_authorization_response_carries_iss_and_echoes_state_exactly(env, clock, admin, db_conn):
    await _app(admin)
    await _app(admin, "thirdparty", first_party=False)
    with_query = "https://app.example/callback?tenant=7&lang=en"
    await _app(admin, "tenanted", redirect_uris=(with_query,))
    await admin.client("legacy", grant_types=("password",), scopes=("openid", "read"), redirect_uris=(REDIRECT_URI,))
    await admin.user("alice")
    state = "st 1/2?a=b&c=d+e%20f=~é#x"
    async with _site(env, clock) as (http, browser):
        answers: dict[str, Answer] = {}
        _, challenge = pkce_pair()

        def request(client_id: str = CLIENT, **extra: str) -> dict[str, str]:
            return authorization_parameters(client_id, challenge, state=state, **extra)

        answers["login_required"] = await browser.authorize(**request(prompt="none"))
        answers["unsupported_response_type"] = await browser.authorize(**request(response_type="token"))
        answers["invalid_scope"] = await browser.authorize(**request(scope="openid admin"))
        answers["invalid_request"] = await browser.authorize(**request(code_challenge_method="plain"))
        answers["unauthorized_client"] = await browser.authorize(**request("legacy"))
        login = await browser.authorize(**request())
        answers["code"] = await browser.submit(login, username="alice", password=PASSWORD)
        answers["consent_required"] = await browser.authorize(**request("thirdparty", prompt="none"))
        consent = await browser.authorize(**request("thirdparty"))
        answers["access_denied"] = await browser.submit(consent, decision="deny")
        tenanted = await browser.authorize(**request("tenanted", redirect_uri=with_query))
        posted = await browser.request("POST", "/authorize", request())

        for expected, answer in answers.items():
            query = _redirect_query(answer)
            assert query["iss"] == [ISSUER], expected
            assert query["state"] == [state], expected
            if expected == "code":
                assert len(query["code"]) == 1 and "error" not in query
            else:
                assert query["error"] == [expected] and "code" not in query
        kept = _redirect_query(tenanted, with_query)
        assert kept["tenant"] == ["7"] and kept["lang"] == ["en"] and kept["iss"] == [ISSUER] and kept["state"] == [state]
        assert "code" in kept
        assert _redirect_query(posted)["iss"] == [ISSUER] and _redirect_query(posted)["state"] == [state]


# --- prompt and max_age ----------------------------------------------------------------------------


async def test_prompt_none_without_a_session_redirects_with_login_required(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        _, challenge = pkce_pair()
        parameters = authorization_parameters(CLIENT, challenge, prompt="none")
        query = _redirect_query(await browser.authorize(**parameters))
        assert query["error"] == ["login_required"] and query["state"] == [parameters["state"]] and "code" not in query
        # A session cookie that names no session is no session.
        browser.cookies[SESSION_COOKIE] = "forged-" + "x" * 36
        query = _redirect_query(await browser.authorize(**parameters))
        assert query["error"] == ["login_required"]
        assert await _count(db_conn, "authorization_codes") == 0


async def test_prompt_none_signed_in_without_consent_redirects_with_consent_required(env, clock, admin, db_conn):
    await _app(admin, first_party=False)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        _, challenge = pkce_pair()
        login = await browser.authorize(**authorization_parameters(CLIENT, challenge))
        consent = await browser.submit(login, username="alice", password=PASSWORD)
        assert 'action="/consent"' in consent.text and SESSION_COOKIE in browser.cookies  # signed in, not consented
        parameters = authorization_parameters(CLIENT, challenge, prompt="none")
        query = _redirect_query(await browser.authorize(**parameters))
        assert query["error"] == ["consent_required"] and query["state"] == [parameters["state"]] and "code" not in query
        assert await _count(db_conn, "consents") == 0 and await _count(db_conn, "authorization_codes") == 0


async def test_prompt_login_with_a_session_shows_the_login_page_again(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        await _signed_in_code(browser)
        codes = await _count(db_conn, "authorization_codes")
        clock.advance(100)
        verifier, challenge = pkce_pair()
        page = await browser.authorize(**authorization_parameters(CLIENT, challenge, prompt="login"))
        assert page.status == 200 and 'action="/login"' in page.text and "Location" not in page.headers
        assert await _count(db_conn, "authorization_codes") == codes
        # Signing in again makes a new auth_time.
        back = await browser.submit(page, username="alice", password=PASSWORD)
        status, tokens = await _redeem(http, back.query()["code"], verifier)
        assert status == 200
        claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
        assert claims["auth_time"] == int(clock())


async def test_max_age_0_with_a_session_shows_the_login_page_again(env, clock, admin, db_conn):
    # OpenID Connect Core 1.0 (errata set 2) section 3.1.2.1: max_age=0 is equivalent to
    # prompt=login. A whole-second clock: the sign-in and this request in the same second.
    clock.now = float(int(clock.now))
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        await _signed_in_code(browser)
        codes = await _count(db_conn, "authorization_codes")
        _, challenge = pkce_pair()
        page = await browser.authorize(**authorization_parameters(CLIENT, challenge, max_age="0"))
        assert page.status == 200 and 'action="/login"' in page.text, (page.status, page.location)
        clock.advance(0.5)
        page = await browser.authorize(**authorization_parameters(CLIENT, challenge, max_age="0"))
        assert page.status == 200 and 'action="/login"' in page.text, (page.status, page.location)
        assert await _count(db_conn, "authorization_codes") == codes
        # An exceeded max_age asks again; one not yet exceeded does not.
        clock.advance(61)
        page = await browser.authorize(**authorization_parameters(CLIENT, challenge, max_age="60"))
        assert page.status == 200 and 'action="/login"' in page.text
        straight = await browser.authorize(**authorization_parameters(CLIENT, challenge, max_age="3600"))
        assert straight.status == 303 and "code" in straight.query()


# --- accounts ----------------------------------------------------------------------------------------


def _without_per_request_fields(html: str, username: str) -> str:
    html = re.sub(r'name="(interaction|csrf_token)" value="[^"]*"', r'name="\1" value=""', html)
    return html.replace(f'value="{username}"', 'value="USERNAME"')


async def _failed_login(browser: Browser, username: str, password: str) -> Answer:
    _, challenge = pkce_pair()
    page = await browser.authorize(**authorization_parameters(CLIENT, challenge))
    return await browser.submit(page, username=username, password=password)


async def test_a_disabled_user_cannot_sign_in_and_is_told_the_same_as_for_a_wrong_password(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    await admin.user("bobby")
    assert cli(env, "users", "disable", "alice").returncode == 0
    async with _site(env, clock) as (http, browser):
        disabled = await _failed_login(browser, "alice", PASSWORD)
        wrong = await _failed_login(_another_browser(browser), "bobby", PASSWORD + "x")
        assert disabled.status == wrong.status == 400 and SAME_ERROR in disabled.text
        assert _without_per_request_fields(disabled.text, "alice") == _without_per_request_fields(wrong.text, "bobby")
        assert SESSION_COOKIE not in _set_cookies(disabled) and SESSION_COOKIE not in browser.cookies
        assert await _count(db_conn, "login_sessions") == 0 and await _count(db_conn, "authorization_codes") == 0


async def test_a_code_issued_before_the_user_was_disabled_cannot_be_redeemed(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, verifier = await _signed_in_code(browser)
        disabled = cli(env, "users", "disable", "alice")
        assert disabled.returncode == 0, disabled.stderr
        status, body = await _redeem(http, code, verifier)
        assert (status, body["error"]) == (400, "invalid_grant")
        await _nothing_issued_for(db_conn, code)
        # Nor does the sign-in session still skip the login page.
        _, challenge = pkce_pair()
        page = await browser.authorize(**authorization_parameters(CLIENT, challenge))
        assert page.status == 200 and 'action="/login"' in page.text


async def test_a_code_issued_before_logout_cannot_be_redeemed(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        code, verifier = await _signed_in_code(browser)
        confirm = await browser.request("GET", "/logout")
        assert confirm.status == 200 and 'action="/logout"' in confirm.text
        done = await browser.submit(confirm, decision="logout")
        assert done.status == 200 and SESSION_COOKIE not in browser.cookies
        assert await _count(db_conn, "login_sessions", "ended_at IS NULL") == 0
        status, body = await _redeem(http, code, verifier)
        assert (status, body["error"]) == (400, "invalid_grant")
        await _nothing_issued_for(db_conn, code)


async def test_the_login_page_answers_an_unknown_username_and_a_wrong_password_alike(env, clock, admin, db_conn):
    await _app(admin)
    await admin.user("alice")
    async with _site(env, clock) as (http, browser):
        unknown = await _failed_login(browser, "alicf", PASSWORD)
        wrong = await _failed_login(_another_browser(browser), "alice", PASSWORD + "x")
        assert unknown.status == wrong.status == 400
        assert SAME_ERROR in unknown.text
        assert _without_per_request_fields(unknown.text, "alicf") == _without_per_request_fields(wrong.text, "alice")
        assert sorted(unknown.headers.keys()) == sorted(wrong.headers.keys())
        assert _set_cookies(unknown) == _set_cookies(wrong) and SESSION_COOKIE not in _set_cookies(unknown)
        assert await _count(db_conn, "login_sessions") == 0


async def test_a_max_age_of_non_ascii_digits_is_invalid_request_not_a_500(env, clock, admin):
    """"²".isdigit() is true in Python, and int("²") raises: only ASCII digits are a number of seconds."""
    from tests.sign_in_helpers import REDIRECT_URI as CALLBACK

    await admin.client("webapp", grant_types=("authorization_code",), scopes=("openid",), redirect_uris=(CALLBACK,))
    async with tessera_server(env, clock) as http:
        _, challenge = pkce_pair()
        answer = await http.get("/authorize", params=authorization_parameters("webapp", challenge, scope="openid", max_age="\u00b2"),
                                allow_redirects=False)
        assert answer.status == 303 and "error=invalid_request" in answer.headers["Location"]
