"""The sign-in pages in a real browser: a headless Chromium, driven by Selenium, signs a person in
the way a person does (fields found by their labels, buttons clicked), against a Tessera served in
this process and a small "app" on another 127.0.0.1 port (its redirect URI, and pages of another
origin). Tests what only a browser shows: the Content-Security-Policy as Chromium enforces it (no
violation on any page), the frame refusal, pages working with JavaScript off, the CSRF token bound
to the browser (the __Host- cookies, which Chromium keeps on http://127.0.0.1, a secure context).

The first test also writes the screenshots of docs/sign-in.md (docs/images/sign-in-*.png).

Needs selenium (the `test` extra), Chromium and its chromedriver (Debian: chromium,
chromium-driver; .ci/run installs them); without them every test here skips and says why.
Selenium blocks, so each browser walk runs in a worker thread while the servers' event loop runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from aiohttp import web

pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (it is in the `test` extra: pip install -e '.[test]')"
)
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException, TimeoutException, WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.helpers import PASSWORD, SECRET, basic, served, tessera_server  # noqa: E402

# While a page is being replaced, Chromium may report an element of the old one as stale, or as a
# bare "Node with given id does not belong to the document": both mean "not there any more".
GONE = (StaleElementReferenceException, WebDriverException)


def waiting(driver: Any) -> Any:
    return WebDriverWait(driver, WAIT, ignored_exceptions=GONE)


def replaced(element: Any) -> Any:
    """A wait condition: ``element``'s page has been replaced."""

    def check(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except GONE:
            return True
        return False

    return check
from tests.sign_in_helpers import pkce_pair  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
)

ISSUER = "https://tessera.test"  # conftest's TESSERA_ISSUER
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
# Registered without a port: a loopback redirect URI matches on any port (RFC 8252 section 7.3),
# so the app below can listen wherever the test server put it.
REGISTERED_REDIRECT_URI = "http://127.0.0.1/callback"
WIDTH, HEIGHT = 480, 720
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--no-proxy-server", "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}",
)
WAIT = 15  # seconds for any one page to appear


# --- the app: a redirect URI, and pages of another origin ---------------------------------------


class App:
    """Another site on 127.0.0.1: the client's redirect URI (/callback, which records what it got
    and answers with a page) and pages the test writes into ``pages`` (from the browser thread)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.returns: list[dict[str, str]] = []
        self.web = web.Application()
        self.web.router.add_get("/callback", self._callback)
        self.web.router.add_get("/signed-out", self._signed_out)
        self.web.router.add_get("/page/{name}", self._page)

    async def _callback(self, request: web.Request) -> web.Response:
        self.returns.append(dict(request.query))
        return web.Response(
            text="<!doctype html><title>Example app</title><h1>Back in the app</h1>", content_type="text/html"
        )

    async def _signed_out(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>Example app</title><h1>Signed out of the app</h1>", content_type="text/html"
        )

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.pages[request.match_info["name"]], content_type="text/html")


@dataclass
class Stage:
    http: Any  # the TestClient of Tessera
    base: str  # Tessera, http://127.0.0.1:PORT
    app: App
    app_base: str  # the app, http://127.0.0.1:OTHER_PORT

    @property
    def redirect_uri(self) -> str:
        return self.app_base + "/callback"

    def authorization(self, challenge: str, **extra: str) -> tuple[str, dict[str, str]]:
        """An authorization request as an app starts it: the URL to send the browser to."""
        parameters = {
            "response_type": "code", "client_id": "webapp", "redirect_uri": self.redirect_uri,
            "scope": "openid profile", "state": "st-" + challenge[:8], "nonce": "n-" + challenge[8:16],
            "code_challenge": challenge, "code_challenge_method": "S256", **extra,
        }
        return f"{self.base}/authorize?{urlencode(parameters)}", parameters

    async def redeem(self, code: str, verifier: str) -> dict[str, Any]:
        """What the app does with the code: the token request, with the PKCE verifier."""
        answer = await self.http.post("/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }, headers=basic("webapp", SECRET))
        body: dict[str, Any] = await answer.json()
        assert answer.status == 200, body
        return body


def _base(http: Any) -> str:
    return str(http.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def stage(env: dict[str, str], clock: Any, admin: Any) -> AsyncIterator[Stage]:
    """Tessera with a confidential client `webapp` (consent page shown: not first-party) and the
    user alice, and the app on another port."""
    app = App()
    async with served(app.web) as app_http:
        await admin.client(
            "webapp", grant_types=("authorization_code", "refresh_token"), scopes=("openid", "profile"),
            audiences=("https://api.example",),
            # the post_logout_redirect_uri too: compared exactly, port and all
            redirect_uris=(REGISTERED_REDIRECT_URI, _base(app_http) + "/signed-out"),
        )
        await admin.user("alice")
        async with tessera_server(env, clock) as http:
            yield Stage(http, _base(http), app, _base(app_http))


# --- the browser ----------------------------------------------------------------------------------


@dataclass
class Chromium:
    """One headless Chromium (its own profile: its own cookies), with what it logged kept."""

    driver: webdriver.Chrome
    tessera: str  # Tessera's base URL: pages there are checked for scripts and CSP violations
    console: list[dict[str, Any]] = field(default_factory=list)
    documents: list[tuple[str, str, int]] = field(default_factory=list)  # (method, url, status)
    _methods: dict[str, str] = field(default_factory=dict)

    def drain(self) -> None:
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent" and params.get("type") == "Document":
                self._methods[params["requestId"]] = params["request"]["method"]
            elif message["method"] == "Network.responseReceived" and params.get("type") == "Document":
                response = params["response"]
                method = self._methods.get(params["requestId"], "GET")
                self.documents.append((method, response["url"], response["status"]))

    def status(self, method: str, path: str) -> int:
        """The status of the last document answered for ``method`` ``path`` at Tessera."""
        self.drain()
        url = self.tessera + path
        found = [status for m, u, status in self.documents if m == method and u.split("?")[0] == url]
        assert found, (method, path, self.documents)
        return found[-1]

    def csp_violations(self) -> list[str]:
        self.drain()
        return [
            entry["message"] for entry in self.console
            if "Content Security Policy" in entry["message"] or "Content-Security-Policy" in entry["message"]
        ]

    def open(self, url: str) -> None:
        self.driver.get(url)

    def wait_for_heading(self, text: str) -> None:
        try:
            waiting(self.driver).until(
                lambda d: any(h.text == text for h in d.find_elements(By.TAG_NAME, "h1"))
            )
        except TimeoutException:
            page = self.driver.page_source
            raise AssertionError(f"no page headed {text!r}; at {self.driver.current_url}:\n{page}") from None
        if self.driver.current_url.startswith(self.tessera + "/"):
            self.check_page()

    def check_page(self) -> None:
        """A page of Tessera's: not one script element, nothing refused by its CSP, and its
        stylesheet applied (style-src 'self' lets /static/tessera.css in)."""
        assert self.driver.find_elements(By.TAG_NAME, "script") == []
        assert "<script" not in self.driver.page_source.lower()
        assert self.csp_violations() == []
        card = self.driver.find_element(By.CSS_SELECTOR, "main.card")
        assert card.value_of_css_property("border-radius") == "12px", "the stylesheet did not load"

    def field(self, label: str) -> WebElement:
        """The input a <label> names, through its for= attribute, as assistive technology finds it."""
        (tag,) = self.driver.find_elements(By.XPATH, f"//label[normalize-space()={json.dumps(label)}]")
        target = tag.get_attribute("for")
        assert target, f"the label {label!r} names no field"
        return self.driver.find_element(By.ID, target)

    def button(self, text: str) -> WebElement:
        (found,) = self.driver.find_elements(By.XPATH, f"//button[normalize-space()={json.dumps(text)}]")
        return found

    def press(self, button: str, then: str) -> None:
        """Click a button and wait for the next page (headed ``then``) to replace this one."""
        page = self.driver.find_element(By.TAG_NAME, "html")
        self.button(button).click()
        waiting(self.driver).until(replaced(page))
        self.wait_for_heading(then)

    def sign_in(self, username: str, password: str, then: str) -> None:
        user_field = self.field("Username")
        user_field.clear()
        user_field.send_keys(username)
        self.field("Password").send_keys(password)
        self.press("Sign in", then)

    def cookies(self) -> dict[str, str]:
        return {c["name"]: c["value"] for c in self.driver.get_cookies()}

    def screenshot(self, name: str) -> None:
        IMAGES.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(IMAGES / name))


@contextlib.contextmanager
def chromium(profile: Path, tessera: str, *, javascript: bool = True) -> Iterator[Chromium]:
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=subprocess.DEVNULL), options=options)
    try:
        # The viewport itself 480x720 (the window's size includes the browser's own frame).
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.set_page_load_timeout(WAIT)
        yield Chromium(driver, tessera)
    finally:
        driver.quit()


async def in_browser(walk: Callable[[], Any]) -> Any:
    """Selenium blocks: the walk runs in a thread, the servers keep answering on this loop."""
    return await asyncio.to_thread(walk)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- the tests ------------------------------------------------------------------------------------


async def test_a_person_signs_in_and_consents_like_a_person(env, clock, admin, tmp_path):
    async with stage(env, clock, admin) as s:
        verifier, challenge = pkce_pair()
        url, parameters = s.authorization(challenge)

        def walk() -> str:
            with chromium(tmp_path / "profile", s.base) as browser:
                browser.open(url)
                browser.wait_for_heading("Sign in")
                assert "webapp" in browser.driver.find_element(By.CLASS_NAME, "lead").text
                browser.screenshot("sign-in-login.png")

                browser.sign_in("alice", "not the password", then="Sign in")
                alert = browser.driver.find_element(By.CSS_SELECTOR, "[role=alert]")
                assert alert.text == "The username or password is not right."
                assert browser.status("POST", "/login") == 400
                assert browser.field("Username").get_attribute("value") == "alice"  # kept, password not
                assert browser.field("Password").get_attribute("value") == ""
                assert "__Host-tessera_session" not in browser.cookies()
                browser.screenshot("sign-in-login-error.png")

                browser.sign_in("alice", PASSWORD, then="Allow access?")
                listed = [c.text for c in browser.driver.find_elements(By.CSS_SELECTOR, "ul.scopes li code")]
                assert sorted(listed) == ["openid", "profile"]
                assert "alice" in browser.driver.find_element(By.CLASS_NAME, "lead").text
                assert "__Host-tessera_session" in browser.cookies()
                browser.screenshot("sign-in-consent.png")

                browser.press("Allow", then="Back in the app")
                assert browser.csp_violations() == []  # the redirect to the app passed form-action
                return browser.driver.current_url

        landed = await in_browser(walk)
        assert landed.startswith(s.redirect_uri + "?")
        answer = query_of(landed)
        assert set(answer) == {"code", "state", "iss"}
        assert answer["state"] == parameters["state"] and answer["iss"] == ISSUER
        assert s.app.returns == [answer]

        tokens = await s.redeem(answer["code"], verifier)
        assert {"access_token", "refresh_token", "id_token"} <= set(tokens)
        assert tokens["scope"] == "openid profile"
        info = await s.http.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert info.status == 200 and (await info.json())["preferred_username"] == "alice"
    for name in ("sign-in-login.png", "sign-in-login-error.png", "sign-in-consent.png"):
        assert (IMAGES / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_login_page_cannot_be_framed(env, clock, admin, tmp_path):
    async with stage(env, clock, admin) as s:
        _, challenge = pkce_pair()
        url, _ = s.authorization(challenge)
        s.app.pages["framing"] = (
            "<!doctype html><title>Another site</title><h1>Another site</h1>"
            f'<iframe id="victim" title="sign in" src="{html.escape(url)}" width="400" height="600"></iframe>'
        )

        def walk() -> None:
            with chromium(tmp_path / "profile", s.base) as browser:
                browser.open(s.app_base + "/page/framing")
                browser.wait_for_heading("Another site")
                # The server answers the frame's request; Chromium refuses to show the answer.
                try:
                    waiting(browser.driver).until(
                        lambda _: any("frame-ancestors 'none'" in m for m in browser.csp_violations())
                    )
                except TimeoutException:
                    raise AssertionError(f"no frame-ancestors refusal logged: {browser.console}") from None
                browser.driver.switch_to.frame(browser.driver.find_element(By.ID, "victim"))
                assert browser.driver.find_elements(By.ID, "username") == []
                assert browser.driver.find_elements(By.TAG_NAME, "form") == []
                browser.driver.switch_to.default_content()

                # The same address, opened as a page of its own, is the login form: the frame
                # was refused for being a frame, not for a bad request.
                browser.console.clear()
                browser.open(url)
                browser.wait_for_heading("Sign in")
                assert browser.field("Username").is_displayed()

        await in_browser(walk)


async def test_the_pages_work_without_javascript(env, clock, admin, tmp_path):
    async with stage(env, clock, admin) as s:
        verifier, challenge = pkce_pair()
        url, parameters = s.authorization(challenge)
        s.app.pages["probe"] = (
            '<!doctype html><title>no script ran</title><h1>Probe</h1><script>document.title = "a script ran"</script>'
        )

        def walk() -> str:
            with chromium(tmp_path / "profile", s.base, javascript=False) as browser:
                browser.open(s.app_base + "/page/probe")
                browser.wait_for_heading("Probe")
                assert browser.driver.title == "no script ran", "JavaScript is not off in this browser"

                browser.open(url)
                browser.wait_for_heading("Sign in")
                browser.sign_in("alice", PASSWORD, then="Allow access?")
                browser.press("Allow", then="Back in the app")
                return browser.driver.current_url

        answer = query_of(await in_browser(walk))
        assert answer["state"] == parameters["state"] and answer["iss"] == ISSUER
        assert "id_token" in await s.redeem(answer["code"], verifier)


async def test_a_login_form_from_another_browser_is_refused(env, clock, admin, tmp_path):
    """Login CSRF: a page elsewhere posts, in browser B, a login form (with the attacker's valid
    credentials) carrying the hidden fields of a page browser A loaded. B has a browser cookie of
    its own, so the only thing wrong is whose form it is."""
    async with stage(env, clock, admin) as s:
        _, challenge = pkce_pair()
        url, _ = s.authorization(challenge)

        def walk() -> None:
            with chromium(tmp_path / "a", s.base) as a, chromium(tmp_path / "b", s.base) as b:
                a.open(url)
                a.wait_for_heading("Sign in")
                taken = {
                    name: a.driver.find_element(By.NAME, name).get_attribute("value") or ""
                    for name in ("csrf_token", "interaction")
                }
                b.open(url)
                b.wait_for_heading("Sign in")
                b_cookie = b.cookies()["__Host-tessera_browser"]
                assert b_cookie != a.cookies()["__Host-tessera_browser"]

                hidden = "".join(
                    f'<input type="hidden" name="{name}" value="{html.escape(value)}">' for name, value in taken.items()
                )
                s.app.pages["forged"] = (
                    "<!doctype html><title>A prize for you</title><h1>A prize for you</h1>"
                    f'<form method="post" action="{s.base}/login">{hidden}'
                    '<input type="hidden" name="username" value="alice">'
                    f'<input type="hidden" name="password" value="{html.escape(PASSWORD)}">'
                    "<button>Claim</button></form>"
                )
                b.open(s.app_base + "/page/forged")
                b.wait_for_heading("A prize for you")
                b.press("Claim", then="This form has expired")
                assert b.status("POST", "/login") == 403
                assert "__Host-tessera_session" not in b.cookies()
                assert b.cookies()["__Host-tessera_browser"] == b_cookie

                # B's own form, from the page B loaded, still signs in: the refusal was the binding.
                b.open(url)
                b.wait_for_heading("Sign in")
                b.sign_in("alice", PASSWORD, then="Allow access?")
                assert "__Host-tessera_session" in b.cookies()
                assert "__Host-tessera_session" not in a.cookies()

        await in_browser(walk)


async def test_every_other_page_is_script_free_and_within_its_policy(env, clock, admin, tmp_path):
    """The pages the walks above do not reach: the error page (an unknown client, never redirected),
    the sign-out confirmation and the signed-out page; each checked by ``wait_for_heading``."""
    async with stage(env, clock, admin) as s:
        _, challenge = pkce_pair()
        url, _ = s.authorization(challenge)
        bad_url, _ = s.authorization(challenge, client_id="nobody")

        def walk() -> None:
            with chromium(tmp_path / "profile", s.base) as browser:
                browser.open(bad_url)
                browser.wait_for_heading("This sign-in link is not valid")
                assert browser.status("GET", "/authorize") == 400
                assert browser.driver.current_url.startswith(s.base + "/authorize?")

                browser.open(url)
                browser.wait_for_heading("Sign in")
                browser.sign_in("alice", PASSWORD, then="Allow access?")

                browser.open(s.base + "/logout")  # no id_token_hint: the person confirms
                browser.wait_for_heading("Sign out?")
                browser.press("Sign out", then="Signed out")
                assert "__Host-tessera_session" not in browser.cookies()

        await in_browser(walk)


async def test_signing_out_after_confirming_returns_to_the_app(env, clock, admin, tmp_path):
    """RP-initiated logout with an id_token_hint of an earlier sign-in (the person signed in again
    since, so the hint does not name this browser's session and the person confirms): the
    confirmation's form goes on to the app's post_logout_redirect_uri."""
    async with stage(env, clock, admin) as s:
        loop = asyncio.get_running_loop()
        verifier, challenge = pkce_pair()
        url, _ = s.authorization(challenge)
        _, challenge_again = pkce_pair()
        url_again, _ = s.authorization(challenge_again, prompt="login")

        def walk() -> str:
            with chromium(tmp_path / "profile", s.base) as browser:
                browser.open(url)
                browser.wait_for_heading("Sign in")
                browser.sign_in("alice", PASSWORD, then="Allow access?")
                browser.press("Allow", then="Back in the app")
                code = query_of(browser.driver.current_url)["code"]
                tokens = asyncio.run_coroutine_threadsafe(s.redeem(code, verifier), loop).result(WAIT)

                browser.open(url_again)  # prompt=login: a new sign-in session in this browser
                browser.wait_for_heading("Sign in")
                browser.sign_in("alice", PASSWORD, then="Back in the app")  # consent remembered

                browser.open(s.base + "/logout?" + urlencode({
                    "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": s.app_base + "/signed-out",
                    "state": "bye",
                }))
                browser.wait_for_heading("Sign out?")
                browser.button("Sign out").click()
                waiting(browser.driver).until(
                    lambda d: d.current_url.startswith(s.app_base + "/") or browser.csp_violations()
                )
                assert browser.csp_violations() == []
                browser.wait_for_heading("Signed out of the app")
                assert "__Host-tessera_session" not in browser.cookies()
                return browser.driver.current_url

        assert await in_browser(walk) == s.app_base + "/signed-out?state=bye"
