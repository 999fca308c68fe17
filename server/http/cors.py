"""CORS for browser clients: off unless ``TESSERA_CORS_ORIGINS`` names exact origins.

Only the endpoints a browser client needs take part: the token, revocation and introspection
endpoints (POST) and the ``/.well-known/`` documents (GET). An allowed origin is echoed back,
never ``*``, and ``Access-Control-Allow-Credentials`` is never sent: Tessera uses no cookies, and
a browser client authenticates with its ``client_id`` in the body (a public client) or an
explicit ``Authorization`` header, both of which work without credentialed CORS.
"""

from __future__ import annotations

from aiohttp import web

POST_PATHS = frozenset({"/token", "/revoke", "/introspect"})
WELL_KNOWN = "/.well-known/"
PREFLIGHT_MAX_AGE = 600
ALLOWED_HEADERS = "Authorization, Content-Type"
# So a browser client can read why it was refused and when to come back.
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate"

def _method_for(path: str) -> str | None:
    if path in POST_PATHS:
        return "POST"
    if path.startswith(WELL_KNOWN):
        return "GET"
    return None


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
        # Answers differ by Origin, so shared caches must keep them apart (the JWKS is cacheable).
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS

    app.on_response_prepare.append(label)


__all__ = ["install_cors", "preflight_answer"]
