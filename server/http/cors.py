"""CORS for browser clients, for two kinds of origin, each echoed back exactly (never ``*``):

- **Configured** (``TESSERA_CORS_ORIGINS``, off when empty): the token, revocation and
  introspection endpoints (POST) and the ``/.well-known/`` documents (GET), without credentials:
  such a client authenticates with its ``client_id`` in the body (a public client) or an explicit
  ``Authorization`` header, both of which work without credentialed CORS.
- **Registered with a client** (``clients create --allowed-origins``): /token and /revoke (POST)
  and /userinfo (GET, POST). ``Access-Control-Allow-Credentials`` only for an origin of a client
  with the refresh-token cookie (tessera.server.http.browser_cookie), whose requests carry it;
  their preflight allows the ``Tessera-CSRF`` header those requests must send.

Nowhere else: not at /authorize or the pages (RFC 9700 section 2.1.1: no CORS at the authorization
endpoint), not at /introspect for a registered origin. A request without ``Origin`` (every
server-side client) costs nothing here but one header lookup.

The registered origins are held in memory per process (``RegisteredOrigins``), kept current the
way the client rows are (tessera.server.store.caches): dropped at every change to any client,
which every instance hears of through LISTEN within milliseconds of the commit, and read again
from the database while nobody listens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from tessera.server.http.limits import Handler
from tessera.server.oauth.authorization import LOOPBACK_HOSTS
from tessera.server.store import ClientStore
from tessera.server.store.caches import CLIENT_CACHE_TTL, ClientCache
from tessera.server.store.db import DATABASE_UNAVAILABLE

POST_PATHS = frozenset({"/token", "/revoke", "/introspect"})
WELL_KNOWN = "/.well-known/"
PREFLIGHT_MAX_AGE = 600
ALLOWED_HEADERS = "Authorization, Content-Type"
# So a browser client can read why it was refused and when to come back.
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate"

# Where an origin registered with a client is answered, and the methods there.
CLIENT_PATHS = {"/token": "POST", "/revoke": "POST", "/userinfo": "GET, POST"}
# The header a request relying on the refresh-token cookie must carry (browser_cookie).
CSRF_HEADER = "Tessera-CSRF"
BROWSER_APP_HEADERS = f"Authorization, Content-Type, {CSRF_HEADER}"


def _method_for(path: str) -> str | None:
    if path in POST_PATHS:
        return "POST"
    if path.startswith(WELL_KNOWN):
        return "GET"
    return None


def _vary_origin(headers: CIMultiDict[str]) -> None:
    """Answers differ by Origin, so shared caches must keep them apart (the JWKS is cacheable)."""
    if "Origin" not in headers.getall("Vary", ()):
        headers.add("Vary", "Origin")


def preflight_answer(request: web.Request, origins: frozenset[str]) -> web.Response | None:
    """The answer to a CORS preflight from one of ``origins`` for an endpoint that takes part; None
    for any other request. Asked by the route that takes what no endpoint does (tessera.server.http.views)."""
    if request.method != "OPTIONS" or not origins:
        return None
    method = _method_for(request.path)
    if (
        method is not None
        and request.headers.get("Origin") in origins
        and request.headers.get("Access-Control-Request-Method") == method
    ):
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": method,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
            },
        )
    return None


def install_cors(app: web.Application, origins: frozenset[str]) -> None:
    """Label responses for ``origins``; with none, do nothing at all. (Preflights are answered by
    ``preflight_answer``, from the route that takes OPTIONS.)"""
    if not origins:
        return

    async def label(request: web.Request, response: web.StreamResponse) -> None:
        if _method_for(request.path) is None:
            return
        _vary_origin(response.headers)
        origin = request.headers.get("Origin")
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS

    app.on_response_prepare.append(label)


# --- origins registered with clients ------------------------------------------------------------


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` cannot be registered for a client, or None. It must be spelled as a browser
    sends it in ``Origin`` (scheme://host[:port], lowercase, no default port, no path), since it is
    compared as a string; https, or http on a loopback host only (as redirect URIs)."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return "is not an origin like https://spa.example"
    if origin == "*" or parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an origin like https://spa.example (scheme://host[:port])"
    if origin != f"{parts.scheme}://{parts.netloc}" or parts.username is not None or parts.password is not None:
        return "must be scheme://host[:port] alone: no path, no trailing slash, no credentials"
    if origin != origin.lower():
        return "must be in lowercase, as browsers send it"
    if port == {"http": 80, "https": 443}[parts.scheme] or parts.netloc.endswith(":"):
        return "must leave out the default port, as browsers do"
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        return "may use http only for a loopback host (127.0.0.1, [::1], localhost)"
    return None


class RegisteredOrigins:
    """Every origin registered with a client, and whether it may receive credentials, in memory.

    Trusted only while nothing changed since it was read: ``changes`` is the client-row cache, whose
    generation moves with every change notification and whenever LISTEN is lost or back, and which
    is usable only while LISTEN is up. Otherwise the table is read again, once per lookup while
    nobody listens. ``ttl`` bounds how long a read is kept if a notification were ever lost.
    """

    def __init__(
        self, clients: ClientStore, changes: ClientCache, *, ttl: float = CLIENT_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._changes = changes
        self._ttl = ttl
        self._clock = clock
        self._origins: dict[str, bool] = {}
        self._generation = -1
        self._until = 0.0

    async def credentials(self, origin: str) -> bool | None:
        """None if no client has ``origin``; otherwise whether a client with the refresh-token
        cookie has it (then its answers carry ``Access-Control-Allow-Credentials``)."""
        changes = self._changes
        if changes.usable and self._generation == changes.generation and self._clock() < self._until:
            return self._origins.get(origin)
        generation = changes.generation
        origins = await self._clients.allowed_origins()
        # A change announced while the table was read may be newer than what was read.
        if changes.usable and generation == changes.generation:
            self._origins, self._generation, self._until = origins, generation, self._clock() + self._ttl
        return origins.get(origin)


REGISTERED_ORIGINS = web.AppKey("registered_origins", RegisteredOrigins)


def for_registered_origins(answered: Handler) -> Handler:
    """``answered`` (an endpoint as ``answering`` made it) with its answers labelled, whatever they
    are (a token, an error, a 503), for an origin registered with a client. Without ``Origin``,
    one header lookup. The lookup runs outside ``answering``, so when the database cannot be read
    it labels nothing (the browser then reads nothing), and the endpoint answers as it would."""

    async def labelled(request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await answered(request)
        try:
            credentials = await request.app[REGISTERED_ORIGINS].credentials(origin)
        except DATABASE_UNAVAILABLE:
            credentials = None
        response = await answered(request)
        headers = response.headers
        _vary_origin(headers)
        if credentials is not None:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            if credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return labelled


async def registered_preflight(request: web.Request) -> web.Response | None:
    """The answer to a CORS preflight for /token, /revoke or /userinfo from an origin registered
    with a client; None for any other request."""
    if request.method != "OPTIONS":
        return None
    methods = CLIENT_PATHS.get(request.path)
    origin = request.headers.get("Origin")
    if methods is None or origin is None:
        return None
    if request.headers.get("Access-Control-Request-Method") not in methods.split(", "):
        return None
    credentials = await request.app[REGISTERED_ORIGINS].credentials(origin)
    if credentials is None:
        return None
    headers = CIMultiDict({
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": BROWSER_APP_HEADERS,
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        "Vary": "Origin",
    })
    if credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return web.Response(status=204, headers=headers)


__all__ = [
    "CLIENT_PATHS", "CSRF_HEADER", "REGISTERED_ORIGINS", "RegisteredOrigins", "for_registered_origins", "install_cors",
    "origin_problem", "preflight_answer", "registered_preflight",
]
