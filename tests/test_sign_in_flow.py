"""The authorization code flow end to end over real HTTP: /authorize, the login and consent pages,
the code at /token, the ID token, /userinfo, refresh and /logout (CONTRACT.md, "Sign-in")."""

from __future__ import annotations

import base64
import hashlib

import aiohttp
import jwt as pyjwt

from tests.helpers import PASSWORD, SECRET, basic, tessera_server
from tests.sign_in_helpers import REDIRECT_URI, Browser, authorization_parameters, pkce_pair

ISSUER = "https://tessera.test"


async def _app_client(admin, **extra):
    await admin.client(
        "webapp", grant_types=("authorization_code", "refresh_token"), scopes=("openid", "read"),
        redirect_uris=(REDIRECT_URI,), **extra,
    )
    await admin.user("alice")


async def _signed_in(http, session) -> dict:
    """alice signs in at webapp (first party: no consent page); the code grant's answer."""
    browser = Browser(str(http.make_url("")).rstrip("/"), session)
    verifier, challenge = pkce_pair()
    page = await browser.authorize(**authorization_parameters("webapp", challenge))
    back = await browser.submit(page, username="alice", password=PASSWORD)
    token = await http.post("/token", data={
        "grant_type": "authorization_code", "code": back.query()["code"], "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }, headers=basic("webapp", SECRET))
    assert token.status == 200
    return await token.json()


async def test_a_person_signs_in_consents_and_the_app_gets_tokens_that_work(env, clock, admin):
    await _app_client(admin)
    async with tessera_server(env, clock) as http, aiohttp.ClientSession() as session:
        browser = Browser(str(http.make_url("")).rstrip("/"), session)
        verifier, challenge = pkce_pair()
        parameters = authorization_parameters("webapp", challenge)
        page = await browser.authorize(**parameters)
        assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY"
        consent = await browser.submit(page, username="alice", password=PASSWORD)
        assert consent.status == 200 and "Allow access" in consent.text
        assert "__Host-tessera_session" in browser.cookies
        back = await browser.submit(consent, decision="allow")
        assert back.status == 303 and back.location.startswith(REDIRECT_URI + "?")
        answer = back.query()
        assert answer["state"] == parameters["state"] and answer["iss"] == ISSUER

        token = await http.post("/token", data={
            "grant_type": "authorization_code", "code": answer["code"], "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }, headers=basic("webapp", SECRET))
        body = await token.json()
        assert token.status == 200, body
        assert {"access_token", "refresh_token", "id_token"} <= set(body) and body["scope"] == "openid read"
        id_token = pyjwt.decode(body["id_token"], options={"verify_signature": False})
        assert id_token["aud"] == "webapp" and id_token["nonce"] == parameters["nonce"] and id_token["iss"] == ISSUER
        assert pyjwt.get_unverified_header(body["id_token"])["typ"] == "JWT"

        info = await http.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert info.status == 200 and (await info.json())["preferred_username"] == "alice"

        again = await http.post("/token", data={
            "grant_type": "authorization_code", "code": answer["code"], "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }, headers=basic("webapp", SECRET))
        assert again.status == 400 and (await again.json())["error"] == "invalid_grant"
        # The replay revoked the family the first redemption started.
        refreshed = await http.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                                    headers=basic("webapp", SECRET))
        assert refreshed.status == 400

        # Signed in already and consented: the next request goes straight back with a code.
        _, challenge2 = pkce_pair()
        straight = await browser.authorize(**authorization_parameters("webapp", challenge2))
        assert straight.status == 303 and "code" in straight.query()

        logout = await browser.request("GET", f"/logout?id_token_hint={body['id_token']}&post_logout_redirect_uri={REDIRECT_URI}&state=bye")
        assert logout.status == 303 and logout.location == REDIRECT_URI + "?state=bye"
        assert "__Host-tessera_session" not in browser.cookies


async def test_the_id_token_and_the_access_token_name_the_same_sid(env, clock, admin):
    """One sign-in at one client is one session at the RP: the refresh family, in both tokens."""
    await _app_client(admin, first_party=True)
    async with tessera_server(env, clock) as http, aiohttp.ClientSession() as session:
        body = await _signed_in(http, session)
        access = pyjwt.decode(body["access_token"], options={"verify_signature": False})
        id_token = pyjwt.decode(body["id_token"], options={"verify_signature": False})
        assert access["sid"] == id_token["sid"]


async def test_refreshing_gives_a_new_id_token_about_the_same_sign_in(env, clock, admin):
    """OpenID Connect Core 12.2: the same iss, sub, aud, sid and auth_time, a new iat, no nonce,
    at_hash of the new access token, signed with a key of the JWKS; none once openid is left out."""
    await _app_client(admin, first_party=True)
    async with tessera_server(env, clock) as http, aiohttp.ClientSession() as session:
        first = await _signed_in(http, session)
        jwks = pyjwt.PyJWKSet.from_dict(await (await http.get("/.well-known/jwks.json")).json())

        def verified(id_token: str) -> dict:
            key = jwks[pyjwt.get_unverified_header(id_token)["kid"]]
            return pyjwt.decode(id_token, key, algorithms=["ES256"], audience="webapp", issuer=ISSUER,
                                leeway=300)  # the server runs on the test's clock

        original = verified(first["id_token"])
        clock.advance(120)
        answer = await http.post("/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
                                 headers=basic("webapp", SECRET))
        refreshed = await answer.json()
        assert answer.status == 200, refreshed
        renewed = verified(refreshed["id_token"])
        for claim in ("iss", "sub", "aud", "sid", "auth_time"):
            assert renewed[claim] == original[claim], claim
        assert renewed["iat"] == original["iat"] + 120 and "nonce" in original and "nonce" not in renewed
        digest = hashlib.sha256(refreshed["access_token"].encode()).digest()[:16]
        assert renewed["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

        narrowed = await http.post("/token", data={
            "grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"], "scope": "read",
        }, headers=basic("webapp", SECRET))
        body = await narrowed.json()
        assert narrowed.status == 200 and body["scope"] == "read" and "id_token" not in body, body


async def test_logout_redirects_a_native_app_to_its_loopback_port_and_checks_client_id(env, clock, admin):
    await admin.client(
        "desktop", secret=None, grant_types=("authorization_code",), scopes=("openid",),
        redirect_uris=("http://127.0.0.1/callback",), first_party=True,
    )
    await admin.user("alice")
    async with tessera_server(env, clock) as http, aiohttp.ClientSession() as session:
        browser = Browser(str(http.make_url("")).rstrip("/"), session)
        verifier, challenge = pkce_pair()
        callback = "http://127.0.0.1:53682/callback"
        page = await browser.authorize(**authorization_parameters("desktop", challenge, redirect_uri=callback, scope="openid"))
        back = await browser.submit(page, username="alice", password=PASSWORD)
        token = await http.post("/token", data={
            "grant_type": "authorization_code", "code": back.query()["code"], "redirect_uri": callback,
            "code_verifier": verifier, "client_id": "desktop",
        })
        id_token = (await token.json())["id_token"]
        # Another client's id with this hint: no redirect (RP-Initiated Logout 1.0 section 2).
        wrong = await browser.request("GET", f"/logout?id_token_hint={id_token}&client_id=webapp&post_logout_redirect_uri={callback}")
        assert "Location" not in wrong.headers
        right = await browser.request("GET", f"/logout?id_token_hint={id_token}&client_id=desktop&post_logout_redirect_uri={callback}")
        assert right.status == 303 and right.location == callback  # no state: no bare "?"


async def test_with_login_session_ttl_0_every_request_asks_to_sign_in_and_consent_still_completes(env, clock, admin):
    """TESSERA_LOGIN_SESSION_TTL=0: no sign-in is remembered, yet the consent page it leads to works."""
    await _app_client(admin)
    async with tessera_server(env, clock, TESSERA_LOGIN_SESSION_TTL="0") as http, aiohttp.ClientSession() as session:
        browser = Browser(str(http.make_url("")).rstrip("/"), session)
        _, challenge = pkce_pair()
        page = await browser.authorize(**authorization_parameters("webapp", challenge))
        consent = await browser.submit(page, username="alice", password=PASSWORD)
        back = await browser.submit(consent, decision="allow")
        assert back.status == 303 and "code" in back.query()
        _, challenge2 = pkce_pair()
        again = await browser.authorize(**authorization_parameters("webapp", challenge2))
        assert again.status == 200 and "Sign in" in again.text  # not remembered


async def test_userinfo_with_two_authorization_headers_is_a_bearer_invalid_request(env, clock, admin):
    async with tessera_server(env, clock) as http:
        answer = await http.get("/userinfo", headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
        assert answer.status == 400 and (await answer.json())["error"] == "invalid_request"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
