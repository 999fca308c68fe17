"""Turns every outcome into a proper answer and one log line.

``OAuthError`` becomes an RFC 6749 section 5.2 body; a database that cannot be reached becomes 503
``temporarily_unavailable``; anything unexpected becomes a bare ``server_error`` for the client and
a full log line (with traceback) for the operator. Nothing internal reaches a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web, web_response

from server.errors import MethodNotAllowed, NotFound, OAuthError, RequestTooLarge, ServerError, TemporarilyUnavailable

log = logging.getLogger("tessera.http")

# The request's client and grant, for the log line; set by the endpoints that know them.
LOG_FIELDS = web.RequestKey("log_fields", dict)

DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    merged = dict(NO_STORE)
    if headers:
        merged.update(headers)
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=merged,
    )


def error_response(error: OAuthError) -> web.Response:
    return json_response(
        {"error": error.error, "error_description": error.description}, error.status, error.headers()
    )


def _from_http_exception(exc: web.HTTPException) -> OAuthError:
    if exc.status == 404:
        return NotFound("no such endpoint")
    if exc.status == 405:
        error = MethodNotAllowed("method not allowed")
        allowed = exc.headers.get("Allow", "")
        error.headers = lambda: {"Allow": allowed}  # type: ignore[method-assign]
        return error
    if exc.status == 413:
        return RequestTooLarge("the request body is too large")
    if 400 <= exc.status < 500:
        generic = OAuthError(exc.reason or "bad request")
        generic.status = exc.status
        return generic
    return ServerError("internal error")


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = secrets.token_hex(8)
    fields: dict[str, object] = {}
    request[LOG_FIELDS] = fields
    try:
        response = await handler(request)
    except OAuthError as exc:
        fields["error"] = exc.error
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http_exception(exc)
        fields["error"] = error.error
        response = error_response(error)
    except DATABASE_UNAVAILABLE as exc:
        fields["error"] = "temporarily_unavailable"
        log.warning("database unavailable", extra={"request_id": request_id, "cause": type(exc).__name__})
        response = error_response(TemporarilyUnavailable())
    except asyncio.CancelledError:
        raise
    except Exception:
        fields["error"] = "server_error"
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = error_response(ServerError("internal error"))
    response.headers["X-Request-Id"] = request_id
    log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "remote": request.remote,
            **fields,
        },
    )
    return response


SERVER_NAME = "tessera"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"
    # No version on the wire: aiohttp would otherwise announce itself and Python's.
    response.headers["Server"] = SERVER_NAME


def hide_server_version() -> None:
    """Keep versions out of the answers aiohttp writes itself, to requests it cannot parse.

    Those (400 for a malformed or oversized request line or header) are made before any
    handler, middleware or signal runs, with aiohttp's default ``Server`` header, which names
    the aiohttp and Python versions: a free fingerprint for anyone sending garbage. The module
    constant is aiohttp's only knob for it; this sets it, process-wide, to the same name.
    """
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
