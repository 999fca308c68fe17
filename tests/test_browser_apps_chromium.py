"""Browser apps in a real browser: the example app (deploy/spa/, served by the example resource
server deploy/resource_server.py on its own 127.0.0.1 port, so another origin than Tessera's)
signs alice in, refreshes through the HttpOnly cookie, calls the API and signs out, in a headless
Chromium driven by Selenium (as tests/test_sign_in_browser.py does it, and skipped the same way
without Chromium or chromedriver).

What only a browser shows: that the refresh token never reaches JavaScript (document.cookie, web
storage, the page, every response body the page's scripts read, and every response the browser
received from Tessera, read here through DevTools); that CORS keeps pages of an unregistered
origin from refreshing; that a cross-site form is refused with nothing spent; and that reuse
detection works with the cookie (the old value read from the browser's cookie store, which sees
HttpOnly cookies, and replayed from outside revokes the session the app then finds ended).

127.0.0.1 on two ports is one site (a site is the scheme and the registrable domain, or the IP
address, without the port), so the SameSite=Strict cookie goes with the app's requests to
Tessera, as it does between app.example.com and auth.example.com (docs/browser-apps.md), and as
the refreshes here show. Since cookies are kept per host, not per port, the app's own server
receives the cookie too here: a quirk of testing on one address, which two host names do not share.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web

pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (it is in the `test` extra: pip install -e '.[test]')"
)
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException, StaleElementReferenceException, TimeoutException, WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tessera.server.oauth.families import parse_refresh_token  # noqa: E402
from tests.helpers import PASSWORD, served, tessera_server  # noqa: E402
from tests.processes import parse_metrics, sample  # noqa: E402
from tests.test_sign_in_browser import CHROMEDRIVER, CHROMIUM, FLAGS, WAIT, Chromium, in_browser  # noqa: E402

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
)

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://tessera.test"  # conftest's TESSERA_ISSUER
API = "https://api.example"
COOKIE = "__Host-tessera_refresh"

# Put in every page before its own scripts (DevTools, so no CSP applies to it): keeps the text of
# every response the page's scripts fetch, exactly what they could read.
RECORD_WHAT_SCRIPTS_READ = """
(() => {
  const read = [];
  Object.defineProperty(window, "__bodiesRead", { value: read });
  const fetch = window.fetch.bind(window);
  window.fetch = async (...args) => {
    const response = await fetch(...args);
    read.push(await response.clone().text());
    return response;
  };
})();
"""


def load_resource_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_resource_server", ROOT / "deploy" / "resource_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Elsewhere:
    """A site on an origin no client has: pages and their scripts, which try to use the cookie."""

    def __init__(self) -> None:
        self.tessera = ""
        self.web = web.Application()
        self.web.router.add_get("/page/{name}", self._page)
        self.web.router.add_get("/script/{name}.js", self._script)

    async def _page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "form":  # a cross-site form: it can carry the cookie, not a header
            body = (
                f'<form method="post" action="{self.tessera}/token">'
                '<input type="hidden" name="grant_type" value="refresh_token">'
                '<input type="hidden" name="client_id" value="spa"><button>Claim</button></form>'
            )
        else:
            body = f'<script src="/script/{name}.js"></script>'
        page = f"<!doctype html><title>Elsewhere</title><h1>Elsewhere</h1>{body}"
        return web.Response(text=page, content_type="text/html")

    async def _script(self, request: web.Request) -> web.Response:
        # with-header: what a browser app sends, so a preflight goes first; simple: no header, no preflight.
        extra = '"Tessera-CSRF": "1",' if request.match_info["name"] == "with-header" else ""
        script = f"""
            const h1 = document.querySelector("h1");
            fetch("{self.tessera}/token", {{
              method: "POST", credentials: "include",
              headers: {{ {extra} "Content-Type": "application/x-www-form-urlencoded" }},
              body: "grant_type=refresh_token&client_id=spa",
            }}).then((r) => r.text()).then((t) => {{ h1.textContent = "read: " + t; }},
                                           (e) => {{ h1.textContent = "refused: " + e.name; }});
        """
        return web.Response(text=script, content_type="text/javascript")


@dataclass
class Stage:
    http: Any  # Tessera's TestClient
    tessera: str
    spa: str  # the example app's origin
    elsewhere: str
    loop: asyncio.AbstractEventLoop
    admin: Any

    def run(self, coroutine: Any) -> Any:
        """Await on the servers' loop, from the browser's thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT)

    def family(self, token: str) -> dict[str, Any]:
        found: dict[str, Any] = self.run(_family(self.admin, token))
        return found

    def replay(self, token: str) -> tuple[int, dict[str, Any]]:
        """What a thief does with a stolen refresh token: sends it, from anywhere but a browser."""
        async def post() -> tuple[int, dict[str, Any]]:
            async with aiohttp.ClientSession() as session, session.post(self.tessera + "/token", data={
                "grant_type": "refresh_token", "refresh_token": token, "client_id": "spa",
            }) as response:
                return response.status, await response.json()

        answer: tuple[int, dict[str, Any]] = self.run(post())
        return answer

    def answered(self, since: dict[str, float] | None = None) -> dict[str, float]:
        """What Tessera counted (its /metrics), in all or ``since`` an earlier count: refused
        preflights and refused token requests."""
        async def read() -> str:
            return str(await (await self.http.get("/metrics")).text())

        metrics = parse_metrics(self.run(read()))
        counted = {
            "preflights refused": sample(
                metrics, "tessera_http_requests_total", endpoint="unmatched", method="OPTIONS", status="405"),
            "token requests refused": sample(
                metrics, "tessera_http_requests_total", endpoint="/token", method="POST", status="400"),
        }
        return {name: value - (since or {}).get(name, 0) for name, value in counted.items()}


def _base(http: Any) -> str:
    return str(http.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def stage(env: dict[str, str], clock: Any, admin: Any) -> AsyncIterator[Stage]:
    """Tessera, the example resource server serving the app, and a site elsewhere; the app's
    client registered as the docs say (public, its origin, the cookie), and alice."""
    elsewhere = Elsewhere()
    resource_server = load_resource_server()
    async with tessera_server(env, clock) as http:
        tessera = _base(http)
        settings = resource_server.Settings.from_environ({
            "TESSERA_ISSUER": ISSUER, "RESOURCE_AUDIENCE": API, "TESSERA_JWKS_URL": tessera + "/.well-known/jwks.json",
            "SPA_CLIENT_ID": "spa", "SPA_TESSERA_URL": tessera,
        })
        async with served(resource_server.create_app(settings)) as app_http, served(elsewhere.web) as elsewhere_http:
            spa = _base(app_http)
            elsewhere.tessera = tessera
            await admin.client(
                "spa", secret=None, grant_types=("authorization_code", "refresh_token"), scopes=("openid",),
                audiences=(API,), redirect_uris=(spa + "/callback", spa + "/"), first_party=True,
                allowed_origins=(spa,), refresh_token_cookie=True,
            )
            await admin.user("alice")
            yield Stage(http, tessera, spa, _base(elsewhere_http), asyncio.get_running_loop(), admin)


# --- the browser ----------------------------------------------------------------------------------


@dataclass
class AppBrowser(Chromium):
    """The harness of test_sign_in_browser, also keeping what Tessera answered the pages' scripts."""

    fetched: list[tuple[str, str, int]] = field(default_factory=list)  # (requestId, url, status), to scripts
    bodies: list[str] = field(default_factory=list)  # their bodies, read through DevTools

    def drain(self) -> None:
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            kind = params.get("type")
            if message["method"] == "Network.requestWillBeSent" and kind == "Document":
                self._methods[params["requestId"]] = params["request"]["method"]
            elif message["method"] == "Network.responseReceived" and kind == "Document":
                response = params["response"]
                method = self._methods.get(params["requestId"], "GET")
                self.documents.append((method, response["url"], response["status"]))
            elif message["method"] == "Network.responseReceived" and kind == "Fetch":
                response = params["response"]
                if response["url"].startswith(self.tessera + "/"):
                    self.fetched.append((params["requestId"], response["url"], response["status"]))

    def read_bodies(self) -> None:
        """The bodies of Tessera's answers to this page's scripts (before the page goes away)."""
        self.drain()
        for request_id, url, _ in self.fetched:
            try:
                answer = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": request_id})
                self.bodies.append(answer["body"])
            except WebDriverException:  # no body (a refused request), or already dropped
                self.bodies.append(f"<no body: {url}>")
        self.fetched.clear()

    def until(self, condition: Callable[[], Any], what: str) -> None:
        try:
            # The page may be replaced while it is looked at (the app navigates, or re-renders).
            # Chromium may also say so as a bare "Node with given id does not belong to the document".
            WebDriverWait(
                self.driver, WAIT,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException, WebDriverException),
            ).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(f"{what}: not so at {self.driver.current_url}\n{self.driver.page_source}") from None

    def app_state(self) -> str:
        return self.driver.find_element(By.ID, "status").get_attribute("data-state") or ""

    def wait_for_state(self, state: str) -> None:
        self.until(lambda: self.app_state() == state, f"the app {state}")

    def refreshes(self) -> int:
        return int(self.driver.find_element(By.ID, "refreshes").get_attribute("textContent") or 0)

    def refresh_cookie(self) -> dict[str, Any] | None:
        """The cookie as the browser keeps it (Selenium sees HttpOnly cookies; scripts do not)."""
        found = [c for c in self.driver.get_cookies() if c["name"] == COOKIE]
        return found[0] if found else None

    def what_scripts_see(self) -> str:
        """Everything this page's scripts can reach, as one text."""
        seen = self.driver.execute_script(
            "return {cookie: document.cookie, local: JSON.stringify(localStorage),"
            " session: JSON.stringify(sessionStorage), page: document.documentElement.outerHTML,"
            " read: window.__bodiesRead || []};"
        )
        return json.dumps(seen)

    def sign_in_to_the_app(self, spa: str) -> dict[str, Any]:
        self.open(spa + "/")
        self.wait_for_state("signed-out")  # no cookie yet: the app's attempt to resume was refused
        assert self.refresh_cookie() is None
        self.button("Sign in").click()
        self.wait_for_heading("Sign in")  # Tessera's login page, checked as test_sign_in_browser does
        self.sign_in("alice", PASSWORD, then="Signed in")
        self.until(lambda: self.driver.find_element(By.ID, "who").text == "as alice", "alice named (/userinfo)")
        cookie = self.refresh_cookie()
        assert cookie is not None
        return cookie

    def click_refresh(self) -> None:
        before = self.refreshes()
        self.button("Refresh").click()
        self.until(lambda: self.app_state() == "signed-out" or (
            self.app_state() == "signed-in" and self.refreshes() == before + 1), "the refresh answered")


@contextlib.contextmanager
def app_browser(profile: Path, tessera: str) -> Iterator[AppBrowser]:
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=subprocess.DEVNULL), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_WHAT_SCRIPTS_READ})
        driver.set_page_load_timeout(WAIT)
        yield AppBrowser(driver, tessera)
    finally:
        driver.quit()


def assert_out_of_reach(browser: AppBrowser, tokens: set[str]) -> None:
    """No refresh token (``tsr_``...) anywhere the page's scripts can reach, or in any answer of
    Tessera's to them."""
    browser.read_bodies()
    seen = browser.what_scripts_see()
    # Both ways of reading did read the token responses (so the checks below are not vacuous).
    assert '\\"access_token\\"' in seen and any('"access_token"' in body for body in browser.bodies)
    reachable = seen + json.dumps(browser.bodies)
    assert "tsr_" not in reachable
    assert not any(token in reachable for token in tokens)


# --- the tests ------------------------------------------------------------------------------------


async def test_the_example_app_signs_in_refreshes_calls_the_api_and_signs_out(env, clock, admin, tmp_path):
    async with stage(env, clock, admin) as s:
        user = await admin.pool.fetchval("SELECT user_id::text FROM users WHERE username = 'alice'")

        def walk() -> str:
            with app_browser(tmp_path / "profile", s.tessera) as browser:
                cookie = browser.sign_in_to_the_app(s.spa)
                # HttpOnly, Secure, SameSite=Strict, Path=/, host-only (no leading dot: no Domain).
                assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == (
                    True, True, "Strict", "/")
                assert cookie["domain"] == "127.0.0.1"
                tokens = {cookie["value"]}
                assert s.family(cookie["value"])["generation"] == 0
                assert_out_of_reach(browser, tokens)

                for generation in (1, 2):
                    browser.click_refresh()
                    assert browser.app_state() == "signed-in" and browser.refreshes() == generation
                    rotated = browser.refresh_cookie()
                    assert rotated is not None and rotated["value"] not in tokens  # a new cookie each time
                    tokens.add(rotated["value"])
                    assert s.family(rotated["value"])["generation"] == generation

                browser.button("Call the API").click()
                browser.until(lambda: browser.driver.find_element(By.ID, "api-answer").is_displayed(),
                              "the API answered")
                me = json.loads(browser.driver.find_element(By.ID, "api-answer").text)
                assert me["sub"] == user and me["client_id"] == "spa" and me["scopes"] == ["openid"]
                assert_out_of_reach(browser, tokens)
                assert browser.csp_violations() == []  # the app runs under its strict CSP

                browser.button("Sign out").click()  # /revoke through the cookie, then Tessera's /logout
                browser.until(lambda: browser.driver.current_url.startswith(s.spa + "/"), "back in the app")
                browser.wait_for_state("signed-out")
                assert browser.refresh_cookie() is None
                assert "__Host-tessera_session" not in browser.cookies()
                # Signed out at once, no confirmation page: the ID token named this browser's sign-in.
                browser.drain()
                assert not [d for d in browser.documents if d[1].startswith(s.tessera + "/logout")]
                newest = max(tokens, key=lambda t: s.family(t)["generation"])
                return str(newest)

        newest = await in_browser(walk)
        assert await _family(admin, newest) == {"generation": 2, "revoked_reason": "revoked_by_client"}


async def test_a_page_of_another_origin_cannot_use_the_cookie_and_spends_nothing(env, clock, admin, tmp_path):
    async with stage(env, clock, admin) as s:

        def walk() -> str:
            with app_browser(tmp_path / "profile", s.tessera) as browser:
                cookie = browser.sign_in_to_the_app(s.spa)["value"]

                # A script elsewhere, as a browser app would ask: the preflight finds no CORS for its
                # origin, so the browser never sends the request.
                counted = s.answered()  # the app's own start, without a cookie, was refused once
                browser.open(s.elsewhere + "/page/with-header")
                browser.until(lambda: browser.driver.find_element(By.TAG_NAME, "h1").text == "refused: TypeError",
                              "the script refused: its fetch failed (CORS)")
                assert s.answered(since=counted) == {"preflights refused": 1, "token requests refused": 0}  # never sent
                # Without the header no preflight is needed: the request goes, with the cookie (the
                # site is the same), and Tessera refuses it; the script cannot even read the refusal.
                browser.open(s.elsewhere + "/page/simple")
                browser.until(lambda: browser.driver.find_element(By.TAG_NAME, "h1").text.startswith("refused"),
                              "the script refused")
                assert s.answered(since=counted) == {"preflights refused": 1, "token requests refused": 1}
                # A plain form posted across origins: the cookie goes, a header cannot.
                browser.open(s.elsewhere + "/page/form")
                browser.wait_for_heading("Elsewhere")
                browser.driver.find_element(By.TAG_NAME, "button").click()
                browser.until(lambda: "invalid_request" in browser.driver.page_source, "the form refused")
                assert browser.status("POST", "/token") == 400
                assert json.loads(browser.driver.find_element(By.TAG_NAME, "body").text)["error"] == "invalid_request"

                assert s.family(cookie) == {"generation": 0, "revoked_reason": None}  # nothing spent
                assert browser.refresh_cookie()["value"] == cookie

                # The app itself, opened again, resumes its session through the very same cookie.
                browser.open(s.spa + "/")
                browser.wait_for_state("signed-in")
                return cookie

        cookie = await in_browser(walk)
        assert await _family(admin, cookie) == {"generation": 1, "revoked_reason": None}


async def test_an_old_cookie_replayed_from_outside_ends_the_apps_session(env, clock, admin, tmp_path):
    async with stage(env, clock, admin) as s:

        def walk() -> None:
            with app_browser(tmp_path / "profile", s.tessera) as browser:
                browser.sign_in_to_the_app(s.spa)
                browser.click_refresh()
                stolen = browser.refresh_cookie()["value"]  # what malware reading the cookie store gets
                browser.click_refresh()
                current = browser.refresh_cookie()["value"]
                assert current != stolen and browser.app_state() == "signed-in"

                status, body = s.replay(stolen)
                assert (status, body["error"]) == (400, "invalid_grant")
                assert s.family(current) == {"generation": 2, "revoked_reason": "refresh_reuse"}

                browser.click_refresh()  # the app's own, newest cookie no longer works
                browser.wait_for_state("signed-out")
                assert "session has ended" in browser.driver.find_element(By.ID, "problem").text
                assert not browser.driver.find_element(By.ID, "sign-in").get_attribute("hidden")

        await in_browser(walk)


async def _family(admin: Any, token: str) -> dict[str, Any]:
    """The generation and revocation of ``token``'s family, as the database has them."""
    parsed = parse_refresh_token(token)
    assert parsed is not None
    row = await admin.pool.fetchrow(
        "SELECT generation, revoked_reason FROM refresh_families WHERE family_id = $1", parsed.family_id
    )
    return dict(row)
