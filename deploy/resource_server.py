"""An example resource server that accepts Tessera's access tokens: an in-memory order book.

    TESSERA_ISSUER=http://127.0.0.1:8080 RESOURCE_AUDIENCE=https://orders.example \\
        python deploy/resource_server.py

Routes:
    GET  /health   public liveness check
    GET  /me       any valid token: who is calling, with which scopes
    GET  /orders   scope orders.read: the caller's orders
    POST /orders   scope orders.write: place an order, JSON {"item": str, "quantity": int}

With SPA_CLIENT_ID set it also serves the example browser app (deploy/spa/, docs/browser-apps.md)
on its own origin, under a strict Content-Security-Policy, so the app calls /me without CORS:
    GET  /, /callback   the app's page (the second is its redirect URI)
    GET  /app.js, /app.css, /config.json   its script, its stylesheet, and where Tessera is

Settings (environment variables):
    TESSERA_ISSUER      required: Tessera's issuer URL (the `iss` of its tokens)
    RESOURCE_AUDIENCE   required: this server's identifier (the `aud` its tokens must carry)
    RESOURCE_HOST       listen address, default 127.0.0.1
    RESOURCE_PORT       listen port, default 8081 (0 picks a free one)
    ALGORITHMS          accepted JWS algorithms, comma- or space-separated, default ES256
    TESSERA_JWKS_URL    optional: the JWKS URL, instead of discovering it from the issuer
    SPA_CLIENT_ID       optional: serve the example browser app, signing in as this client
    SPA_TESSERA_URL     optional: where browsers reach Tessera, default TESSERA_ISSUER
    SPA_SCOPE           optional: the scope the app asks for, default "openid"

A bad setting stops the start with one line naming the variable. The bound address is printed on
stdout as "listening on http://HOST:PORT" once requests can be served. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from tessera.keys import JWKSUnavailable, Verifier
from tessera.keys.aiohttp_auth import bearer_auth_middleware, get_claims, require_scopes
from tessera.keys.jwks_cache import ASYMMETRIC_ALGORITHMS

log = logging.getLogger("resource_server")


# The example browser app (SPA_CLIENT_ID), served from deploy/spa/.
SPA_DIR = Path(__file__).resolve().with_name("spa")
SPA_FILES = {"/": "index.html", "/callback": "index.html", "/app.js": "app.js", "/app.css": "app.css"}
SPA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SPA_PATHS = frozenset({*SPA_FILES, "/config.json"})  # they need no token


@dataclass(frozen=True)
class Settings:
    issuer: str
    audience: str
    host: str
    port: int
    algorithms: tuple[str, ...]
    jwks_url: str | None
    spa_client_id: str | None = None
    spa_tessera_url: str = ""
    spa_scope: str = "openid"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read the settings; raise ValueError naming the variable on the first bad one."""

        def required(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                raise ValueError(f"{name} is required")
            return value

        issuer = required("TESSERA_ISSUER")
        if not issuer.startswith(("https://", "http://")):
            raise ValueError("TESSERA_ISSUER must be an http(s) URL")
        port_text = environ.get("RESOURCE_PORT", "8081").strip()
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"RESOURCE_PORT must be a port number, not {port_text!r}")
        algorithms = tuple(environ.get("ALGORITHMS", "ES256").replace(",", " ").split())
        refused = [alg for alg in algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if refused or not algorithms:
            raise ValueError(f"ALGORITHMS must name public-key algorithms ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})")
        spa_client_id = environ.get("SPA_CLIENT_ID", "").strip() or None
        if spa_client_id is not None and not all((SPA_DIR / name).is_file() for name in SPA_FILES.values()):
            raise ValueError(f"SPA_CLIENT_ID is set, but the example app is not in {SPA_DIR}")
        tessera_url = environ.get("SPA_TESSERA_URL", "").strip().rstrip("/") or issuer
        if not tessera_url.startswith(("https://", "http://")):
            raise ValueError("SPA_TESSERA_URL must be an http(s) URL")
        return cls(
            issuer=issuer,
            audience=required("RESOURCE_AUDIENCE"),
            host=environ.get("RESOURCE_HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=int(port_text),
            algorithms=algorithms,
            jwks_url=environ.get("TESSERA_JWKS_URL", "").strip() or None,
            spa_client_id=spa_client_id,
            spa_tessera_url=tessera_url,
            spa_scope=" ".join(environ.get("SPA_SCOPE", "openid").split()) or "openid",
        )


VERIFIER_KEY = web.AppKey("verifier", Verifier)
ORDERS_KEY = web.AppKey("orders", dict)  # sub -> list of orders


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def me(request: web.Request) -> web.Response:
    claims = get_claims(request)
    return web.json_response({"sub": claims.sub, "client_id": claims.client_id, "scopes": sorted(claims.scopes)})


@require_scopes("orders.read")
async def list_orders(request: web.Request) -> web.Response:
    orders: list[dict[str, Any]] = request.app[ORDERS_KEY].get(get_claims(request).sub, [])
    return web.json_response({"orders": orders})


@require_scopes("orders.write")
async def place_order(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "invalid_request"}', content_type="application/json") from None
    item, quantity = (body.get("item"), body.get("quantity", 1)) if isinstance(body, dict) else (None, None)
    if not isinstance(item, str) or not item or type(quantity) is not int or not 0 < quantity <= 1000:
        raise web.HTTPBadRequest(text='{"error": "invalid_request"}', content_type="application/json")
    claims = get_claims(request)
    order = {"id": uuid.uuid4().hex, "item": item, "quantity": quantity, "placed_by": claims.client_id}
    request.app[ORDERS_KEY].setdefault(claims.sub, []).append(order)
    return web.json_response(order, status=201)


def add_spa_routes(app: web.Application, settings: Settings) -> None:
    """Serve the example browser app (SPA_PATHS)."""
    tessera = urlsplit(settings.spa_tessera_url)
    headers = {
        # Its own script and stylesheet only, and fetch() to itself and to Tessera; nothing inline.
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src 'self' {tessera.scheme}://{tessera.netloc}; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ),
        # /callback carries the authorization code in its address: never in a Referer.
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }
    config = {
        "issuer": settings.issuer, "tessera": settings.spa_tessera_url, "client_id": settings.spa_client_id,
        "scope": settings.spa_scope,
    }

    def static(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        body = (SPA_DIR / name).read_bytes()
        content_type = SPA_TYPES[Path(name).suffix]

        async def serve_file(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

        return serve_file

    async def serve_config(request: web.Request) -> web.Response:
        return web.json_response(config, headers=headers)

    for path, name in SPA_FILES.items():
        app.router.add_get(path, static(name))
    app.router.add_get("/config.json", serve_config)


def create_app(settings: Settings) -> web.Application:
    verifier = Verifier(
        issuer=settings.issuer,
        audience=settings.audience,
        algorithms=settings.algorithms,
        jwks_url=settings.jwks_url,
    )
    spa = settings.spa_client_id is not None
    public_paths = {"/health", *(SPA_PATHS if spa else ())}
    app = web.Application(middlewares=[bearer_auth_middleware(verifier, realm="orders", public_paths=public_paths)])
    if spa:
        add_spa_routes(app, settings)
    app[VERIFIER_KEY] = verifier
    app[ORDERS_KEY] = {}
    app.router.add_get("/health", health)
    app.router.add_get("/me", me)
    app.router.add_get("/orders", list_orders)
    app.router.add_post("/orders", place_order)

    async def verifier_lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            await verifier.prefetch()
        except JWKSUnavailable as err:
            # Not fatal: the verifier keeps trying on each request, so start anyway.
            log.warning("issuer keys not available yet: %s", err)
        yield
        await verifier.close()

    app.cleanup_ctx.append(verifier_lifecycle)
    return app


async def serve(settings: Settings) -> None:
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_environ(os.environ)
    except ValueError as err:
        print(f"resource_server: {err}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
