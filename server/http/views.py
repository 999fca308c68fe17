"""HTTP endpoints. A token request reads top to bottom: parse the form, authenticate the client,
pick the grant, validate, issue."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from tessera.server.ops import events
from tessera.server.oauth.client_assertions import ASSERTION_ALGORITHMS
from tessera.server.oauth.client_auth import AUTH_METHODS
from tessera.server.oauth.errors import InvalidRequest, UnauthorizedClient, UnsupportedGrantType
from tessera.server.http.forms import read_form
from tessera.server.oauth.grants import TokenRequest
from tessera.server.ops.metrics import CONTENT_TYPE, METRICS, Metrics
from tessera.server.http.limits import Handler, client_address, with_deadline
from tessera.server.http.cors import (
    CLIENT_PATHS, REGISTERED_ORIGINS, RegisteredOrigins, for_registered_origins, preflight_answer, registered_preflight,
)
from tessera.server.http.browser_cookie import REFRESH_COOKIES, RefreshCookies, cleared, cookie_refresh_token
from tessera.server.http.answering import LOG_FIELDS, NO_STORE, answering, json_response
from tessera.server.oauth.userinfo import BearerError
from tessera.server.services import SERVICES
from tessera.server.store import Client, ClientStore
from tessera.server.store.families import FamilyStore

OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")


def _authorization(request: web.Request) -> str | None:
    values = request.headers.getall("Authorization", [])
    if len(values) > 1:
        raise InvalidRequest("more than one Authorization header")
    return values[0] if values else None


async def token(request: web.Request) -> web.Response:
    """RFC 6749 section 3.2: the token endpoint."""
    services = request.app[SERVICES]
    form = await read_form(request, services.settings.max_body_bytes)
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required")
    grant = services.grants.get(grant_type)
    if grant is None:
        raise UnsupportedGrantType("this server does not support that grant_type")
    request[LOG_FIELDS]["grant_type"] = grant_type
    remote = client_address(request, services.settings.trusted_proxies)
    client = await services.authenticator.authenticate(_authorization(request), form, remote=remote)
    request[LOG_FIELDS]["client_id"] = client.client_id
    if grant_type not in client.grant_types:
        raise UnauthorizedClient("this client may not use this grant type")
    if client.refresh_token_cookie and grant_type == "refresh_token" and "refresh_token" not in form:
        from_cookie = cookie_refresh_token(request, client)  # tessera.server.http.browser_cookie
        if from_cookie is not None:
            form["refresh_token"] = from_cookie
    context = TokenRequest(form, client, remote)
    validated = await grant.validate(context)
    body = await grant.issue(context, validated)
    events.token_issued(grant_type, client.client_id)
    if client.refresh_token_cookie and "refresh_token" in body:
        return await request.app[REFRESH_COOKIES].answer(body)
    return json_response(body)


async def _token_form(request: web.Request) -> tuple[str, Client]:
    """The ``token`` parameter of an authenticated revocation or introspection request."""
    form, client = await _authenticated_form(request)
    token = form.get("token")
    if token is None:
        raise InvalidRequest("token is required")
    return token, client


async def _authenticated_form(request: web.Request) -> tuple[dict[str, str], Client]:
    services = request.app[SERVICES]
    form = await read_form(request, services.settings.max_body_bytes)
    remote = client_address(request, services.settings.trusted_proxies)
    client = await services.authenticator.authenticate(
        _authorization(request), form, remote=remote, endpoint=request.path
    )
    request[LOG_FIELDS]["client_id"] = client.client_id
    return form, client


async def revoke(request: web.Request) -> web.StreamResponse:
    """RFC 7009 section 2: the revocation endpoint; 200 whether or not the token was known.
    A browser app's sign-out sends no token: its refresh-token cookie is revoked, and cleared."""
    form, client = await _authenticated_form(request)
    revocation = request.app[SERVICES].revocation
    if "token" not in form and client.refresh_token_cookie:
        from_cookie = cookie_refresh_token(request, client)  # tessera.server.http.browser_cookie
        if from_cookie is not None:
            await revocation.revoke(client, from_cookie)
        return cleared(web.Response(status=200, headers=NO_STORE))
    token = form.get("token")
    if token is None:
        raise InvalidRequest("token is required")
    await revocation.revoke(client, token)
    return web.Response(status=200, headers=NO_STORE)


async def introspect(request: web.Request) -> web.Response:
    """RFC 7662 section 2: the introspection endpoint."""
    token, client = await _token_form(request)
    return json_response(await request.app[SERVICES].introspection.introspect(client, token))


@functools.lru_cache(maxsize=8)
def _jwks_headers(etag: str, max_age: int) -> tuple[CIMultiDict[str], CIMultiDict[str]]:
    """The JWKS answer's headers, the 200's and the 304's, made once per key set (its ETag) rather
    than per request; web.Response copies them for each answer."""
    common = {"Cache-Control": f"public, max-age={max_age}", "ETag": etag}
    return CIMultiDict({**common, "Content-Type": "application/jwk-set+json"}), CIMultiDict(common)


async def jwks(request: web.Request) -> web.Response:
    """The key set, from memory: public members only, with a strong ETag."""
    services = request.app[SERVICES]
    snapshot = services.keyring.snapshot
    headers, not_modified = _jwks_headers(snapshot.etag, services.settings.jwks_max_age)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip() for tag in if_none_match.split(",")}
        if snapshot.etag in tags or "*" in tags:
            return web.Response(status=304, headers=not_modified)
    return web.Response(body=snapshot.jwks_body, headers=headers)


async def metadata(request: web.Request) -> web.Response:
    """RFC 8414 authorization server metadata."""
    services = request.app[SERVICES]
    return web.Response(
        body=services.metadata_body,
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=3600"},
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and an active key is loaded (and we are not shutting down)."""
    services = request.app[SERVICES]
    problems = []
    if services.shutting_down:
        problems.append("shutting down")
    if not services.keyring.loaded:
        problems.append("no active key loaded")
    try:
        async with asyncio.timeout(2.0):
            await services.pool.fetchval("SELECT 1")
    except Exception:  # any failure to answer means "not ready"; the reason is not the client's business
        problems.append("database unreachable")
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, 503, {"Retry-After": "5"})
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; with several workers, the sum over all of them."""
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


def metadata_document(issuer: str, grant_types: list[str], extra: dict[str, object]) -> bytes:
    document: dict[str, object] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "grant_types_supported": grant_types,
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
    }
    document.update(extra)
    return json.dumps(document, separators=(",", ":")).encode()


def openapi_view(document: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The OpenAPI 3.1 description of this HTTP API (server/openapi.json), read once."""

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json", headers={"Cache-Control": "public, max-age=3600"})

    return openapi


def _not_routed(endpoints: dict[str, tuple[str, ...]], cors_origins: frozenset[str]) -> Handler:
    """What answers a request no endpoint takes: a CORS preflight (from an origin registered with a
    client, or configured), 405 with ``Allow`` on a known path, 404 anywhere else."""

    async def not_routed(request: web.Request) -> web.StreamResponse:
        preflight = await registered_preflight(request)
        if preflight is None:
            preflight = preflight_answer(request, cors_origins)
        if preflight is not None:
            return preflight
        allowed = endpoints.get(request.path)
        if allowed is not None:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    return not_routed


def _page(name: str) -> Handler:
    """The page view ``name`` of ``Pages``, bounded by the request deadline inside the page's own
    error handling, so that a deadline, too, is answered as an HTML page."""

    async def page(request: web.Request) -> web.StreamResponse:
        pages = request.app[SERVICES].pages
        return await pages.guarded(with_deadline(getattr(pages, name)))(request)

    return page


authorize, login, consent, logout = (_page(name) for name in ("authorize", "login", "consent", "logout"))


async def stylesheet(request: web.Request) -> web.StreamResponse:
    return await request.app[SERVICES].pages.stylesheet(request)


async def userinfo(request: web.Request) -> web.StreamResponse:
    """OpenID Connect Core section 5.3; RFC 6750 errors with WWW-Authenticate."""
    try:
        try:
            authorization = _authorization(request)
        except InvalidRequest as exc:  # two Authorization headers
            raise BearerError("invalid_request", 400, exc.description) from None
        claims = await request.app[SERVICES].userinfo.claims(authorization)
    except BearerError as exc:
        body = {"error": exc.error or "invalid_request", "error_description": exc.description}
        return json_response(body, status=exc.status, headers={"WWW-Authenticate": exc.challenge()})
    return json_response(claims)


def add_routes(app: web.Application, series: Metrics, cors_origins: frozenset[str] = frozenset()) -> None:
    """Each endpoint wrapped by ``answering`` (its answer, request id, log line and metrics), then a
    route on each path for the methods it does not take and a catch-all for every other path, so
    that every request the application sees is answered the same way."""
    routes: dict[str, dict[str, Handler]] = {
        "/token": {"POST": with_deadline(token)},
        "/revoke": {"POST": with_deadline(revoke)},
        "/introspect": {"POST": with_deadline(introspect)},
        "/.well-known/jwks.json": {"GET": jwks},
        "/.well-known/oauth-authorization-server": {"GET": metadata},
        "/.well-known/openid-configuration": {"GET": metadata},
        "/healthz": {"GET": healthz},
        "/readyz": {"GET": readyz},
        "/metrics": {"GET": metrics},
        "/openapi.json": {"GET": openapi_view(OPENAPI_DOCUMENT.read_bytes())},
        # Sign-in for people: HTML pages (tessera.server.http.pages), and UserInfo.
        # The pages bound themselves inside their own error handling: a deadline is an HTML page.
        "/authorize": {"GET": authorize, "POST": authorize},
        "/login": {"POST": login},
        "/consent": {"POST": consent},
        "/logout": {"GET": logout, "POST": logout},
        "/userinfo": {"GET": with_deadline(userinfo), "POST": with_deadline(userinfo)},
        "/static/tessera.css": {"GET": stylesheet},
    }
    # A GET endpoint answers HEAD too, as aiohttp's add_get does.
    endpoints = {path: tuple(sorted({*methods, *(["HEAD"] if "GET" in methods else [])})) for path, methods in routes.items()}
    not_routed = answering("unmatched", _not_routed(endpoints, cors_origins), series)
    for path, methods in routes.items():
        resource = app.router.add_resource(path)
        for method, handler in methods.items():
            answered = answering(path, handler, series)
            if path in CLIENT_PATHS:  # CORS for the origins registered with clients (tessera.server.http.cors)
                answered = for_registered_origins(answered)
            resource.add_route(method, answered)
            if method == "GET":
                resource.add_route("HEAD", answered)
        resource.add_route("*", not_routed)
    # (?s): once decoded, a path may hold any character, a newline (%0A) too, and must still land here.
    app.router.add_route("*", "/{tail:(?s:.*)}", not_routed)
    app.on_startup.append(_open_browser_apps)


async def _open_browser_apps(app: web.Application) -> None:
    """What the browser-app endpoints keep per process, made from the services once they are open
    (aiohttp runs ``on_startup`` after every ``cleanup_ctx`` has started)."""
    services = app[SERVICES]
    app[REGISTERED_ORIGINS] = RegisteredOrigins(ClientStore(services.pool), services.authenticator.client_rows)
    app[REFRESH_COOKIES] = RefreshCookies(FamilyStore(services.pool), services.settings.refresh_reuse_grace)


__all__ = ["NO_STORE", "add_routes", "metadata_document"]
