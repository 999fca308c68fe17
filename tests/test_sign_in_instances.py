"""Sign-in state lives in the database, not in a process (CONTRACT.md, "Sign-in for browser, mobile and
desktop apps"; "Several server processes and hosts share one database"): a code made at one
`tessera serve` is redeemed at another, the login page's session cookie and a code both survive a
restart, and a code is still used at most once across instances. Real processes on one database,
one issuer, real time."""

from __future__ import annotations

from typing import Any

import aiohttp
import jwt as pyjwt

from tests.helpers import PASSWORD, SECRET, basic
from tests.processes import Process, Processes, free_port, wait_until_ready
from tests.sign_in_helpers import REDIRECT_URI, Browser, authorization_parameters, pkce_pair

ISSUER = "https://tessera.test"
CLIENT = "webapp"


async def _serve(processes: Processes, name: str, env: dict[str, str], port: int) -> Process:
    process = processes.serve(name, {**env, "TESSERA_PORT": str(port)})
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process


async def _code(browser: Browser, *, expect_login: bool) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    answer = await browser.authorize(**authorization_parameters(CLIENT, challenge))
    if expect_login:
        assert answer.status == 200 and 'action="/login"' in answer.text, (answer.status, answer.location)
        answer = await browser.submit(answer, username="alice", password=PASSWORD)
    assert answer.status == 303, (answer.status, answer.text[:500])
    query = answer.query()
    assert query["iss"] == ISSUER and "code" in query, answer.location
    return query["code"], verifier


async def _token(session: aiohttp.ClientSession, base: str, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{base}/token", data=data, headers=basic(CLIENT, SECRET)) as response:
        return response.status, await response.json(content_type=None)


async def _redeem(session: aiohttp.ClientSession, base: str, code: str, verifier: str) -> tuple[int, dict[str, Any]]:
    return await _token(session, base, {
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT_URI,
    })


async def test_codes_and_sign_in_sessions_work_across_instances_and_survive_a_restart(env, admin, processes):
    await admin.client(CLIENT, grant_types=("authorization_code", "refresh_token"), scopes=("openid", "read"),
                       redirect_uris=(REDIRECT_URI,), first_party=True)
    await admin.user("alice")
    port_a, port_b = free_port(), free_port()
    a = await _serve(processes, "a", env, port_a)
    await _serve(processes, "b", env, port_b)
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"

    async with aiohttp.ClientSession() as session:
        at_a = Browser(url_a, session)
        at_b = Browser(url_b, session, at_a.cookies)  # the same browser, sent to the other instance

        # Signed in at A, redeemed at B.
        code, verifier = await _code(at_a, expect_login=True)
        status, tokens = await _redeem(session, url_b, code, verifier)
        assert status == 200, tokens
        claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
        assert claims["iss"] == ISSUER and claims["aud"] == CLIENT
        # Used once across instances: A refuses it now, and the replay revokes B's family.
        status, again = await _redeem(session, url_a, code, verifier)
        assert (status, again["error"]) == (400, "invalid_grant")
        status, refreshed = await _token(session, url_b, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        assert (status, refreshed.get("error")) == (400, "invalid_grant")

        # A's session cookie is good at B: straight back with a code.
        code_b, verifier_b = await _code(at_b, expect_login=False)
        # A code made at A before A restarts.
        before, verifier_before = await _code(at_a, expect_login=False)

        assert a.stop() == 0
        await _serve(processes, "a-again", env, port_a)

        # After the restart the session cookie still skips the login page ...
        after, verifier_after = await _code(at_a, expect_login=False)
        # ... and the code made before it is redeemable, as are the others, at either instance.
        for base, made, proof in ((url_a, before, verifier_before), (url_b, after, verifier_after), (url_a, code_b, verifier_b)):
            status, body = await _redeem(session, base, made, proof)
            assert status == 200 and {"access_token", "refresh_token", "id_token"} <= set(body), body
            status, rotated = await _token(session, url_b if base == url_a else url_a,
                                           {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
            assert status == 200, rotated
