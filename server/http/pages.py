"""The pages a person sees: /authorize, /login, /consent and /logout, as HTML.

Each view parses, asks ``tessera.server.oauth.sign_in`` what to do, and renders a template; the
rules live there. What every page has (OWASP's clickjacking and CSRF cheat sheets, RFC 9700
section 4.16):
- a strict Content-Security-Policy: no script at all, styles only from /static, forms posting only
  here or to the one redirect URI of the request, no framing (``frame-ancestors 'none'`` and
  ``X-Frame-Options: DENY``), ``Referrer-Policy: no-referrer``, ``Cache-Control: no-store``;
- on every form a CSRF token bound to the browser that loaded it: an HttpOnly cookie
  (``__Host-tessera_browser``) names the browser, and the token is a MAC of it under a secret
  every instance shares; the authorization request the form continues travels with it, sealed
  under the same secret and bound to the same browser, for ``INTERACTION_SECONDS``.
Templates are Jinja2 with autoescaping; TESSERA_TEMPLATES_DIR replaces any of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from tessera.server.http.forms import parse_form, read_form
from tessera.server.http.limits import client_address
from tessera.server.oauth.authorization import (
    AuthorizationPageError,
    AuthorizationRedirectError,
    AuthorizationRequest,
    check_authorization_request,
)
from tessera.server.oauth.errors import InvalidGrant, InvalidRequest, TemporarilyUnavailable, TooManyAttempts
from tessera.server.oauth.sign_in import Decision, Redirect, ShowConsent, ShowLogin, SignIn
from tessera.server.store.db import DATABASE_UNAVAILABLE
from tessera.server.store.sign_in import LoginSession

# A page says so in HTML, where an endpoint would answer 503 JSON.
_UNAVAILABLE: tuple[type[BaseException], ...] = (TemporarilyUnavailable, *DATABASE_UNAVAILABLE)
SESSION_COOKIE = "__Host-tessera_session"
BROWSER_COOKIE = "__Host-tessera_browser"
INTERACTION_SECONDS = 1800
# This browser's id for the request being answered (its cookie, or a new one that _render sets).
BROWSER = web.RequestKey("tessera_browser", str)
TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
SCOPE_DESCRIPTIONS = {
    "openid": "know who you are here",
    "profile": "see your username",
    "offline_access": "stay signed in for you",
}


@dataclass(frozen=True, slots=True)
class PageSettings:
    issuer: str
    max_body_bytes: int
    trusted_proxies: tuple[Any, ...]
    session_ttl: int
    templates_dir: Path | None


class Seal:
    """MACs under the sign-in pages' secret: CSRF tokens and sealed authorization requests."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock

    def _mac(self, purpose: bytes, browser: str, payload: bytes) -> bytes:
        message = purpose + b"\x00" + browser.encode("ascii", "replace") + b"\x00" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def csrf_token(self, browser: str) -> str:
        return base64.urlsafe_b64encode(self._mac(b"csrf", browser, b"")).rstrip(b"=").decode()

    def csrf_valid(self, browser: str | None, token: str | None) -> bool:
        if not browser or token is None:
            return False
        # As bytes: compare_digest refuses str with non-ASCII characters, and a token is anything sent.
        return hmac.compare_digest(self.csrf_token(browser).encode(), token.encode("utf-8", "replace"))

    def seal(self, parameters: dict[str, str], browser: str) -> str:
        payload = json.dumps({"p": parameters, "exp": int(self._clock()) + INTERACTION_SECONDS}).encode()
        mac = self._mac(b"interaction", browser, payload)
        return f"{_b64(payload)}.{_b64(mac)}"

    def open(self, sealed: str | None, browser: str | None) -> dict[str, str] | None:
        if not sealed or not browser or sealed.count(".") != 1:
            return None
        payload_text, mac_text = sealed.split(".")
        try:
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except ValueError:
            return None
        if not hmac.compare_digest(self._mac(b"interaction", browser, payload), mac):
            return None
        opened = json.loads(payload)
        if opened["exp"] < self._clock():
            return None
        parameters: dict[str, str] = opened["p"]
        return parameters


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


def _redirect_source(uri: str) -> str:
    """The CSP source that lets a form's answer redirect to ``uri`` (Chrome checks form-action on
    redirects after a form is sent): its origin, any port for a loopback one, its scheme for a
    native app's private-use scheme (RFC 8252 section 7.1)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        host = parts.netloc.rsplit("@", 1)[-1]
        if parts.scheme == "http":
            host = host.rsplit(":", 1)[0] + ":*" if not host.endswith("]") else host + ":*"
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}:"


class Pages:
    def __init__(self, sign_in: SignIn, seal: Seal, settings: PageSettings) -> None:
        self._sign_in = sign_in
        self._seal = seal
        self._settings = settings
        loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(str(TEMPLATES))]
        if settings.templates_dir is not None:
            loaders.insert(0, jinja2.FileSystemLoader(str(settings.templates_dir)))
        self._templates = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self._issuer_name = urlsplit(settings.issuer).netloc or settings.issuer
        self._stylesheet = (STATIC / "tessera.css").read_bytes()

    # --- rendering ----------------------------------------------------------------------------

    def _render(
        self, request: web.Request, template: str, status: int = 200, *, redirect_to: str | None = None, **values: Any
    ) -> web.Response:
        browser = self._browser(request)
        body = self._templates.get_template(template).render(
            issuer_name=self._issuer_name, csrf_token=self._seal.csrf_token(browser), **values
        )
        form_action = "'self'" + (f" {_redirect_source(redirect_to)}" if redirect_to else "")
        response = web.Response(status=status, text=body, content_type="text/html", charset="utf-8")
        response.headers.update({
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
                f"form-action {form_action}; frame-ancestors 'none'"
            ),
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
        })
        if request.cookies.get(BROWSER_COOKIE) != browser:
            self._set_cookie(response, BROWSER_COOKIE, browser, max_age=None, same_site="Lax")
        return response

    def _browser(self, request: web.Request) -> str:
        """This browser's id: its cookie, or a new one (set by ``_render``), kept on the request."""
        known: str | None = request.get(BROWSER)
        if known is not None:
            return known
        cookie = request.cookies.get(BROWSER_COOKIE)
        browser = cookie if cookie and 20 <= len(cookie) <= 64 and cookie.isascii() else secrets.token_urlsafe(24)
        request[BROWSER] = browser
        return browser

    @staticmethod
    def _set_cookie(response: web.StreamResponse, name: str, value: str, *, max_age: int | None, same_site: str) -> None:
        # The __Host- prefix: Secure, Path=/, no Domain, so no other host or path can set or read it.
        response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite=same_site)

    def _error_page(self, request: web.Request, heading: str, message: str, status: int = 400) -> web.Response:
        return self._render(request, "error.html", status, heading=heading, message=message)

    def _redirect(self, location: str) -> web.Response:
        return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})

    async def _show(
        self, request: web.Request, decision: Decision, *, error: str | None = None, status: int = 200,
        username: str = "",
    ) -> web.Response:
        if isinstance(decision, Redirect):
            return self._redirect(decision.location)
        auth = decision.request
        sealed = self._seal.seal(auth.as_parameters(), self._browser(request))
        client_name = auth.client.client_id
        if isinstance(decision, ShowLogin):
            return self._render(
                request, "login.html", status, redirect_to=auth.redirect_uri, interaction=sealed,
                client_name=client_name, error=error, username=username or (auth.login_hint or "")[:256],
            )
        assert isinstance(decision, ShowConsent)
        return self._render(
            request, "consent.html", status, redirect_to=auth.redirect_uri, interaction=sealed,
            client_name=client_name, username=decision.session.username, scopes=auth.scopes,
            scope_descriptions=SCOPE_DESCRIPTIONS,
        )

    # --- the views ----------------------------------------------------------------------------

    def guarded(self, view: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A page's own answers to what would otherwise be JSON: bad input, a database away."""

        async def page(request: web.Request) -> web.StreamResponse:
            try:
                return await view(request)
            except InvalidRequest as exc:
                return self._error_page(request, "This request cannot be handled", exc.description)
            except _UNAVAILABLE:
                response = self._error_page(
                    request, "Please try again", "The sign-in service is briefly unavailable. Try again in a moment.", 503
                )
                response.headers["Retry-After"] = "5"
                return response

        return page

    async def _parameters(self, request: web.Request) -> dict[str, str]:
        if request.method == "POST":
            return await read_form(request, self._settings.max_body_bytes)
        return parse_form(request.rel_url.raw_query_string.encode("ascii", "replace"))

    async def _session(self, request: web.Request) -> LoginSession | None:
        return await self._sign_in.session(request.cookies.get(SESSION_COOKIE))

    async def _checked(self, parameters: dict[str, str]) -> AuthorizationRequest:
        return await check_authorization_request(parameters, self._sign_in.client)

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        """RFC 6749 section 4.1.1 (GET) and OpenID Connect Core section 3.1.2.1 (also POST)."""
        parameters = await self._parameters(request)
        try:
            auth = await self._checked(parameters)
        except AuthorizationPageError as exc:
            return self._error_page(request, "This sign-in link is not valid", str(exc))
        except AuthorizationRedirectError as exc:
            return self._refused(exc)
        # TESSERA_LOGIN_SESSION_TTL=0: a sign-in is never remembered, so every request asks again.
        session = await self._session(request) if self._settings.session_ttl else None
        return await self._show(request, await self._sign_in.decide(auth, session))

    def _refused(self, exc: AuthorizationRedirectError) -> web.Response:
        return self._redirect(self._sign_in.error_to(exc.redirect_uri, exc.state, exc.error, exc.description).location)

    async def _continued(self, request: web.Request, form: dict[str, str]) -> AuthorizationRequest | web.Response:
        """The authorization request a login or consent form continues, if this browser sent it."""
        browser = request.cookies.get(BROWSER_COOKIE)
        if not self._seal.csrf_valid(browser, form.get("csrf_token")):
            return self._error_page(
                request, "This form has expired",
                "The form was not sent from the page this browser loaded. Go back to the application and sign in again.",
                403,
            )
        parameters = self._seal.open(form.get("interaction"), browser)
        if parameters is None:
            return self._error_page(
                request, "This form has expired", "Go back to the application and sign in again.", 403
            )
        try:
            return await self._checked(parameters)
        except AuthorizationPageError as exc:
            return self._error_page(request, "This sign-in link is not valid", str(exc))
        except AuthorizationRedirectError as exc:
            return self._refused(exc)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(request, self._settings.max_body_bytes)
        auth = await self._continued(request, form)
        if isinstance(auth, web.Response):
            return auth
        username, password = form.get("username", ""), form.get("password", "")
        remote = client_address(request, self._settings.trusted_proxies)
        try:
            if not username or not password:
                raise InvalidGrant("missing")
            signed_in = await self._sign_in.sign_in(username, password, remote)
        except InvalidGrant:
            # The same words for an unknown username and a wrong password (and a disabled user).
            return await self._show(
                request, ShowLogin(auth), error="The username or password is not right.", status=400, username=username
            )
        except TooManyAttempts as exc:
            response = await self._show(
                request, ShowLogin(auth), status=429, username=username,
                error=f"Too many attempts. Try again in {max(1, (exc.retry_after + 59) // 60)} minutes.",
            )
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        decision = await self._sign_in.decide(auth, signed_in.session, signed_in_now=True)
        response = await self._show(request, decision)
        ttl = self._settings.session_ttl
        self._set_cookie(response, SESSION_COOKIE, signed_in.cookie, max_age=ttl or None, same_site="Lax")
        return response

    async def consent(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(request, self._settings.max_body_bytes)
        auth = await self._continued(request, form)
        if isinstance(auth, web.Response):
            return auth
        session = await self._session(request)
        if session is None:
            return await self._show(request, ShowLogin(auth))
        decision = form.get("decision")
        if decision not in ("allow", "deny"):
            return self._error_page(request, "This request cannot be handled", "Choose Allow or Deny.")
        return await self._show(request, await self._sign_in.consent(auth, session, decision == "allow"))

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """OpenID Connect RP-Initiated Logout 1.0. With a valid id_token_hint for this browser's
        session it signs out at once; otherwise the person confirms (a form with a CSRF token), so
        a link on another site cannot sign anybody out."""
        parameters = await self._parameters(request)
        session = await self._session(request)
        if request.method == "POST" and parameters.get("decision") == "logout":
            sealed = self._seal.open(parameters.get("interaction"), request.cookies.get(BROWSER_COOKIE))
            if sealed is None or not self._seal.csrf_valid(request.cookies.get(BROWSER_COOKIE), parameters.get("csrf_token")):
                return self._error_page(request, "This form has expired", "Sign out again from the application.", 403)
            parameters = sealed
            confirmed = True
        else:
            confirmed = False
        hinted = await self._sign_in.logout_request(
            parameters.get("id_token_hint"), parameters.get("post_logout_redirect_uri"), parameters.get("state"),
            parameters.get("client_id"),
        )
        if session is not None and not confirmed and hinted.session_id != session.session_id:
            kept = {
                k: v for k, v in parameters.items()
                if k in ("id_token_hint", "post_logout_redirect_uri", "state", "client_id")
            }
            return self._render(
                request, "logout.html", username=session.username, redirect_to=hinted.redirect,
                interaction=self._seal.seal(kept, self._browser(request)),
            )
        if session is not None:
            await self._sign_in.logout(session)
        response: web.Response = (
            self._redirect(hinted.redirect) if hinted.redirect is not None
            else self._render(request, "logged_out.html")
        )
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        return response

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._stylesheet, content_type="text/css", charset="utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )
