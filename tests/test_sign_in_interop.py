"""Sign-in with the libraries apps actually use, against a live `tessera serve` (CONTRACT.md,
"Sign-in for browser, mobile and desktop apps" and "Access tokens"): node openid-client 6 and
Python Authlib run the authorization code flow with PKCE and OpenID Connect, node jose verifies the
tokens with the JWKS alone. Each library does the app's part with nothing but the issuer URL; the
test's Browser (tests.sign_in_helpers) does the person's part at the login and consent pages.

The server is a real process whose issuer is its own URL (http://127.0.0.1:PORT), since a client
library discovers the server from its issuer and refuses metadata naming any other. The node
libraries come from tests/interop/package-lock.json, installed once per session by `npm ci`; these
tests skip, saying why, where node, npm or the npm registry is not available.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import secrets
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import pytest
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from tests.conftest import Admin
from tests.helpers import PASSWORD, SECRET, basic
from tests.processes import Processes, free_port, wait_until_ready
from tests.sign_in_helpers import REDIRECT_URI, Browser, authorization_parameters, forms_of, pkce_pair

INTEROP = Path(__file__).with_name("interop")
NODE_MAJOR = 20  # openid-client 6 and jose 6 need WebCrypto and fetch as Node 20 has them
NPM_TIMEOUT = 300
# What npm says when it cannot reach the registry (as opposed to a lock file it cannot install).
UNREACHABLE = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|ESOCKETTIMEDOUT"
    r"|network|request to \S+ failed|getaddrinfo|E50[0-9]|proxy",
    re.IGNORECASE,
)
ALGORITHMS = ["ES256", "ES384", "EdDSA", "RS256", "PS256"]
SESSION_COOKIE = "__Host-tessera_session"
APP_AUDIENCE = "https://orders.example"  # the first of conftest's Admin.client audiences
# A secret an operator chose (`tessera clients create --secret-stdin`) with characters that RFC
# 6749 section 2.3.1 has a client form-urlencode before Basic authentication, as openid-client does.
OPERATOR_SECRET = "s3cret +/:%20&=?~é-s3cret"
# A secret as `tessera clients create` makes one: base64url, the same encoded or not. Authlib sends
# the secret in Basic authentication as it is (latin-1, not form-urlencoded), so only such a secret
# works with it there.
GENERATED_SECRET = "tsc_Xb4s0Q-2nLr8u_ZkT1vWq9eYc3HjMfA6pGdS7oKiN5E"


# --- node, once per session ----------------------------------------------------------------------


def _skip_or_fail_install(output: str) -> None:
    said = next((line.strip() for line in output.splitlines() if UNREACHABLE.search(line)), None)
    if said is not None:
        pytest.skip(f"the npm registry cannot be reached to install tests/interop: {said}")
    pytest.fail(f"npm ci in tests/interop failed:\n{output[-4000:]}")


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with tests/interop/node_modules installed from its lock file: `npm ci` runs
    only when node_modules is missing or older than package-lock.json, under a lock so that two
    test runs in one tree never install over each other."""
    node_path, npm_path = shutil.which("node"), shutil.which("npm")
    if node_path is None or npm_path is None:
        pytest.skip("node and npm are needed to run openid-client and jose (not found on PATH)")
    version = subprocess.run([node_path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    found = re.match(r"v(\d+)\.", version)
    if found is None or int(found.group(1)) < NODE_MAJOR:
        pytest.skip(f"openid-client 6 and jose 6 need Node {NODE_MAJOR} or newer; this is node {version or '?'}")

    lock_file = INTEROP / "package-lock.json"
    installed = INTEROP / "node_modules" / ".package-lock.json"  # npm writes it at every install

    def fresh() -> bool:
        return installed.exists() and installed.stat().st_mtime >= lock_file.stat().st_mtime

    with open(lock_file, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not fresh():
            try:
                result = subprocess.run(
                    [npm_path, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--fetch-retries=1"],
                    cwd=INTEROP, capture_output=True, text=True, timeout=NPM_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                pytest.skip(f"npm ci did not finish within {NPM_TIMEOUT} s: the npm registry cannot be reached")
            if result.returncode != 0 or not fresh():
                _skip_or_fail_install(result.stdout + result.stderr)
    return node_path


async def run_node(node: str, script: str, *args: str, given: dict[str, Any]) -> dict[str, Any]:
    """One of tests/interop's scripts, given its input as JSON on stdin; its JSON answer."""
    process = await asyncio.create_subprocess_exec(
        node, str(INTEROP / script), *args, cwd=INTEROP,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(json.dumps(given).encode()), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{script} {' '.join(args)} did not finish within 60 s") from None
    assert process.returncode == 0, f"{script} {' '.join(args)} failed: {err.decode(errors='replace')}"
    answer: dict[str, Any] = json.loads(out)
    return answer


# --- the server and the person ---------------------------------------------------------------------


async def live_tessera(processes: Processes, env: dict[str, str], **settings: str) -> str:
    """`tessera serve` on a free port whose issuer is its own URL; that URL once /readyz answers."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    server = processes.serve("tessera", {**env, "TESSERA_PORT": str(port), "TESSERA_ISSUER": issuer, **settings})
    await wait_until_ready(f"{issuer}/readyz", server)
    return issuer


def path_of(url: str, issuer: str) -> str:
    """What the Browser asks for: the path and query of a URL on this issuer."""
    assert url.startswith(issuer + "/"), url
    return url[len(issuer):]


def is_login_page(html: str) -> bool:
    return any(form["action"] == "/login" and "password" in form["fields"] for form in forms_of(html))


async def person_signs_in(browser: Browser, issuer: str, authorization_url: str, redirect_uri: str) -> str:
    """alice at the login page, then allowing the app at the consent page: where the browser is
    sent back to (the app's callback URL with the authorization response)."""
    page = await browser.request("GET", path_of(authorization_url, issuer))
    assert page.status == 200 and is_login_page(page.text), (page.status, page.location, page.text[:500])
    consent = await browser.submit(page, username="alice", password=PASSWORD)
    assert consent.status == 200 and "Allow access" in consent.text, (consent.status, consent.text[:500])
    back = await browser.submit(consent, decision="allow")
    assert back.status == 303 and back.location.startswith(redirect_uri + "?"), (back.status, back.location)
    return back.location


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def app_client(admin: Admin, *, secret: str | None, redirect_uri: str) -> None:
    await admin.client(
        "app", secret=secret, grant_types=("authorization_code", "refresh_token"),
        scopes=("openid", "read"), redirect_uris=(redirect_uri,),
    )


# --- openid-client -------------------------------------------------------------------------------


@pytest.mark.parametrize("public", [False, True], ids=["confidential-client_secret_basic", "public-none"])
async def test_openid_client_signs_a_person_in_refreshes_reads_userinfo_and_signs_out(
    public: bool, node: str, processes: Processes, env: dict[str, str], admin: Admin
) -> None:
    # The confidential client is a web app; the public one a desktop app listening on a loopback
    # port of its own choosing (RFC 8252 section 7.3: registered without the port). After logout
    # both ask to come back to the URI as registered: /logout compares it exactly.
    registered = "http://127.0.0.1/callback" if public else REDIRECT_URI
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback" if public else REDIRECT_URI
    await app_client(admin, secret=None if public else OPERATOR_SECRET, redirect_uri=registered)
    alice = await admin.user("alice")
    issuer = await live_tessera(processes, env)
    app = {"issuer": issuer, "client_id": "app", "redirect_uri": redirect_uri, "scope": "openid read"}
    if not public:
        app["client_secret"] = OPERATOR_SECRET

    started = await run_node(node, "oidc_client.mjs", "start", given=app)
    assert started["server_metadata"]["issuer"] == issuer
    asked = query_of(started["authorization_url"])
    assert started["authorization_url"].startswith(f"{issuer}/authorize?")
    assert asked["code_challenge_method"] == "S256" and asked["state"] == started["state"]
    assert asked["nonce"] == started["nonce"] and "code_verifier" not in asked

    async with aiohttp.ClientSession() as session:
        browser = Browser(issuer, session)
        callback = await person_signs_in(browser, issuer, started["authorization_url"], redirect_uri)
        logout_state = "bye-" + secrets.token_hex(4)
        finished = await run_node(node, "oidc_client.mjs", "finish", given={
            **app, "callback_url": callback, "code_verifier": started["code_verifier"], "state": started["state"],
            "nonce": started["nonce"], "post_logout_redirect_uri": registered, "logout_state": logout_state,
        })

        # RFC 9207: openid-client took the metadata's word that `iss` comes with every response, and
        # refused the same response naming another issuer, or none, before spending the code.
        refused = finished["refused"]
        assert refused["other_issuer"]["code"] == "OAUTH_INVALID_RESPONSE", refused
        assert refused["other_issuer"]["cause"] == 'unexpected "iss" (issuer) response parameter value', refused
        assert refused["without_issuer"]["cause"] == 'response parameter "iss" (issuer) missing', refused

        # The code grant passed openid-client's own checks (state, PKCE, iss, the ID token's
        # signature, iss, aud, nonce, exp, iat); what it holds is what the contract says.
        tokens, claims = finished["tokens"], finished["id_token_claims"]
        assert tokens["token_type"].lower() == "bearer" and tokens["scope"] == "openid read"
        assert tokens["refresh_token"].startswith("tsr_") and finished["expires_in"] > 0
        assert claims["iss"] == issuer and claims["aud"] == "app" and claims["sub"] == str(alice.user_id)
        assert claims["nonce"] == started["nonce"]
        assert isinstance(claims["auth_time"], int) and claims["sid"] and claims["at_hash"]

        # Refreshing rotated the refresh token and brought a new ID token, which openid-client
        # checked as it checks any (signature, iss, aud, exp, iat); it is about the same sign-in.
        # UserInfo (read with the new access token, and checked by openid-client against the ID
        # token's sub) names the same person.
        refreshed = finished["refreshed"]
        assert refreshed["refresh_token"].startswith("tsr_") and refreshed["refresh_token"] != tokens["refresh_token"]
        assert refreshed["access_token"] != tokens["access_token"]
        renewed = finished["refreshed_id_token_claims"]
        assert renewed is not None and refreshed["id_token"] != tokens["id_token"]
        for claim in ("iss", "sub", "aud", "sid", "auth_time"):
            assert renewed[claim] == claims[claim], claim
        assert "nonce" not in renewed  # OpenID Connect Core 12.2: SHOULD NOT
        assert finished["userinfo"]["sub"] == claims["sub"] and finished["userinfo"]["preferred_username"] == "alice"

        # RP-initiated logout at the URL openid-client built: back to the app with its state, the
        # sign-in session over, and the next authorization request meets the login page again.
        end_session = finished["end_session_url"]
        assert end_session.startswith(f"{issuer}/logout?")
        assert query_of(end_session)["post_logout_redirect_uri"] == registered
        assert query_of(end_session)["client_id"] == "app"  # openid-client always adds it
        signed_out = await browser.request("GET", path_of(end_session, issuer))
        assert signed_out.status == 303, (signed_out.status, signed_out.text[:500])
        assert signed_out.location == f"{registered}?state={logout_state}"
        assert SESSION_COOKIE not in browser.cookies
        again = await run_node(node, "oidc_client.mjs", "start", given=app)
        page = await browser.request("GET", path_of(again["authorization_url"], issuer))
        assert page.status == 200 and is_login_page(page.text)

        # ... and the tokens of that sign-in went with it: its refresh token is revoked, its access
        # token no longer reads UserInfo.
        form = {"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]}
        headers = {} if public else basic("app", quote(OPERATOR_SECRET, safe=""))
        if public:
            form["client_id"] = "app"
        async with session.post(f"{issuer}/token", data=form, headers=headers) as answer:
            assert answer.status == 400 and (await answer.json())["error"] == "invalid_grant"
        bearer = {"Authorization": f"Bearer {refreshed['access_token']}"}
        async with session.get(f"{issuer}/userinfo", headers=bearer) as answer:
            assert answer.status == 401 and 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


# --- Authlib -------------------------------------------------------------------------------------


def verified_id_token(
    id_token: str, jwks: Any, metadata: dict[str, Any], nonce: str | None, access_token: str
) -> CodeIDToken:
    """The ID token checked as Authlib's own OpenID client checks it (parse_id_token): the
    signature through joserfc against the JWKS and the advertised algorithms, then Authlib's
    CodeIDToken claims rules (iss, aud, nonce, exp, iat, at_hash against the access token).
    ``nonce`` None: a refreshed ID token, which has none."""
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864 (for "Ed25519"); the contract names EdDSA.
        warnings.simplefilter("ignore", SecurityWarning)
        token = jwt.decode(
            id_token, KeySet.import_key_set(jwks),
            registry=JWSRegistry(algorithms=metadata["id_token_signing_alg_values_supported"]),
        )
    claims = CodeIDToken(
        token.claims, token.header,
        options={
            "iss": {"essential": True, "value": metadata["issuer"]},
            "aud": {"essential": True, "value": "app"},
            **({"nonce": {"essential": True, "value": nonce}} if nonce is not None else {}),
            "sub": {"essential": True},
            "auth_time": {"essential": True},
        },
        params={"nonce": nonce, "client_id": "app", "access_token": access_token},
    )
    claims.validate(leeway=5)
    return claims


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_authlib_signs_a_person_in_verifies_the_id_token_reads_userinfo_and_refreshes(
    alg: str, processes: Processes, env: dict[str, str], admin: Admin
) -> None:
    await app_client(admin, secret=GENERATED_SECRET, redirect_uri=REDIRECT_URI)
    alice = await admin.user("alice")
    issuer = await live_tessera(processes, env, TESSERA_SIGNING_ALG=alg)

    oauth = OAuth2Session(
        "app", GENERATED_SECRET, scope="openid read", redirect_uri=REDIRECT_URI, code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    oauth.trust_env = False  # straight to 127.0.0.1, whatever proxy the machine names

    def get_json(url: str) -> Any:
        response = oauth.get(url, withhold_token=True, timeout=10)
        response.raise_for_status()
        return response.json()

    with oauth:
        metadata = await asyncio.to_thread(get_json, f"{issuer}/.well-known/openid-configuration")
        assert metadata["issuer"] == issuer and metadata["id_token_signing_alg_values_supported"] == [alg]
        jwks = await asyncio.to_thread(get_json, metadata["jwks_uri"])

        code_verifier, nonce = generate_token(48), generate_token(20)
        url, state = oauth.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=code_verifier, nonce=nonce
        )
        async with aiohttp.ClientSession() as session:
            callback = await person_signs_in(Browser(issuer, session), issuer, url, REDIRECT_URI)
        # RFC 9207, which Authlib leaves to the app: the response names this issuer.
        assert query_of(callback)["iss"] == issuer

        token = await asyncio.to_thread(
            oauth.fetch_token, metadata["token_endpoint"], authorization_response=callback, state=state,
            code_verifier=code_verifier,
        )
        assert token["token_type"].lower() == "bearer" and token["scope"] == "openid read"
        claims = verified_id_token(token["id_token"], jwks, metadata, nonce, token["access_token"])
        assert claims["sub"] == str(alice.user_id) and claims.header["alg"] == alg and claims.header["typ"] == "JWT"

        # The session now carries the access token as a bearer token.
        userinfo = await asyncio.to_thread(lambda: oauth.get(metadata["userinfo_endpoint"], timeout=10))
        assert userinfo.status_code == 200, userinfo.text
        assert userinfo.json() == {"sub": claims["sub"], "preferred_username": "alice"}

        first_refresh_token = token["refresh_token"]
        refreshed = await asyncio.to_thread(oauth.refresh_token, metadata["token_endpoint"])
        assert refreshed["refresh_token"].startswith("tsr_") and refreshed["refresh_token"] != first_refresh_token
        assert refreshed["access_token"] != token["access_token"]
        # A new ID token about the same sign-in, passing the same checks (at_hash of the new
        # access token) except the nonce, which belonged to the authentication request.
        renewed = verified_id_token(refreshed["id_token"], jwks, metadata, None, refreshed["access_token"])
        for claim in ("iss", "sub", "aud", "sid", "auth_time"):
            assert renewed[claim] == claims[claim], claim
        assert "nonce" not in renewed
        userinfo = await asyncio.to_thread(lambda: oauth.get(metadata["userinfo_endpoint"], timeout=10))
        assert userinfo.status_code == 200 and userinfo.json()["sub"] == claims["sub"]


# --- jose ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_node_jose_verifies_the_id_token_and_the_access_token_with_the_jwks_alone(
    alg: str, node: str, processes: Processes, env: dict[str, str], admin: Admin
) -> None:
    await app_client(admin, secret=SECRET, redirect_uri=REDIRECT_URI)
    alice = await admin.user("alice")
    issuer = await live_tessera(processes, env, TESSERA_SIGNING_ALG=alg)

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{issuer}/.well-known/openid-configuration") as response:
            metadata = await response.json()
        verifier, challenge = pkce_pair()
        parameters = authorization_parameters("app", challenge)
        authorization_url = f"{metadata['authorization_endpoint']}?{urlencode(parameters)}"
        callback = await person_signs_in(Browser(issuer, session), issuer, authorization_url, REDIRECT_URI)
        code = query_of(callback)["code"]
        async with session.post(metadata["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
        }, headers=basic("app", SECRET)) as response:
            tokens = await response.json()
            assert response.status == 200, tokens

    verified = await run_node(node, "verify_tokens.mjs", given={
        "jwks_uri": metadata["jwks_uri"], "issuer": issuer, "client_id": "app", "audience": APP_AUDIENCE,
        "id_token": tokens["id_token"], "access_token": tokens["access_token"],
    })
    id_token, access_token = verified["id_token"], verified["access_token"]
    assert id_token["header"]["typ"] == "JWT" and id_token["header"]["alg"] == alg and id_token["header"]["kid"]
    assert access_token["header"]["typ"] == "at+jwt" and access_token["header"]["alg"] == alg
    assert id_token["payload"]["sub"] == access_token["payload"]["sub"] == str(alice.user_id)
    assert id_token["payload"]["nonce"] == parameters["nonce"]
    assert id_token["payload"]["auth_time"] == access_token["payload"]["auth_time"]
    assert access_token["payload"]["client_id"] == "app" and access_token["payload"]["scope"] == "openid read"
    # Explicit typing (RFC 8725 section 3.11, RFC 9068 section 4): neither passes for the other.
    refused = verified["refused"]
    for name in ("id_token_as_access_token", "access_token_as_id_token"):
        assert refused[name] is not None and refused[name]["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED", refused
        assert refused[name]["claim"] == "typ", refused
