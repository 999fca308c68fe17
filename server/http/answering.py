"""Turns every outcome into a proper answer and one log line.

``OAuthError`` becomes an RFC 6749 section 5.2 body; a database that cannot be reached becomes 503
``temporarily_unavailable``; anything unexpected becomes a bare ``server_error`` for the client and
a full log line (with traceback) for the operator. Nothing internal reaches a response.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import secrets
import time

from aiohttp import web, web_response
from multidict import CIMultiDict

from tessera.keys import compact_json
from tessera.server.store.db import DATABASE_UNAVAILABLE
from tessera.server.oauth.errors import MethodNotAllowed, NotFound, OAuthError, RequestTooLarge, ServerError, TemporarilyUnavailable
from tessera.server.http.limits import Handler
from tessera.server.ops.logs import RequestLog
from tessera.server.ops.metrics import Metrics

log = logging.getLogger("tessera.http")

# The request's client and grant, for the log line; set by the endpoints that know them.
LOG_FIELDS = web.RequestKey("log_fields", dict)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# A request id set by the load balancer (nginx's $request_id) is kept, so one id follows the request
# through both logs; anything else is replaced, so a caller cannot write into the log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LOGGED_PATH_MAX = 200
SERVER_NAME = "tessera"


class _RequestIds:
    """Unique ids without a system call each: a random per-process prefix and a counter (an id
    names a request; it is not a secret, so it need not be unpredictable)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


_new_request_id = _RequestIds()


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.match(given):
        return given
    return _new_request_id()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# Every JSON answer's headers, made once; web.Response copies them into its own map (a C-level copy).
_JSON_HEADERS: CIMultiDict[str] = CIMultiDict({**NO_STORE, "Content-Type": "application/json"})


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    merged = _JSON_HEADERS
    if headers:
        merged = _JSON_HEADERS.copy()
        merged.update(headers)
    return web.Response(body=compact_json.dumps(body), status=status, headers=merged)


# RFC 6749 section 5.2: error_description is printable ASCII without '"' and '\\'.
_OUTSIDE_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def error_response(error: OAuthError) -> web.Response:
    """The section 5.2 body. A description may quote the request (a repeated parameter's name), so
    any character the section does not allow in it becomes ``?``."""
    description = _OUTSIDE_DESCRIPTION.sub("?", error.description)
    return json_response({"error": error.error, "error_description": description}, error.status, error.headers())


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


def answering(endpoint: str, handler: Handler, series: Metrics) -> Handler:
    """``handler`` as the application answers it: any outcome a proper answer, with its request id,
    one log line and its metrics. ``endpoint`` is the route's metric label (never the raw path, so
    random paths cannot make new series).

    A wrapper on each route (tessera.server.http.views.add_routes), not an aiohttp middleware: a middleware
    brings aiohttp's own layer with it (``_fix_request_current_app``) and a lookup of the chain per
    request, about 4% of a JWKS request under callgrind; requests no route takes reach the
    catch-all route, wrapped the same way, so every answer of the application passes here.
    """

    request_log = RequestLog(log)

    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        fields: dict[str, object] = {}
        request[LOG_FIELDS] = fields
        series.request_started()
        try:
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
            except Exception:
                fields["error"] = "server_error"
                log.exception("unhandled error", extra={"request_id": request_id, "path": request.path[:_LOGGED_PATH_MAX]})
                response = error_response(ServerError("internal error"))
        except BaseException:  # cancelled (the client left, a deadline, shutdown), or a redirect
            series.request_dropped()
            raise
        seconds = time.perf_counter() - started
        code = fields.get("error")
        method = request.method
        status = response.status
        series.request_done(endpoint, method if method in _METHODS else "other", status, seconds,
                            str(code) if code else None)
        headers = response.headers
        headers["X-Request-Id"] = request_id
        # Here rather than in an on_response_prepare signal: every answer of the application passes
        # this point, and a signal costs an awaited dispatch per response. (``Server`` is aiohttp's,
        # renamed by hide_server_version.)
        headers["X-Content-Type-Options"] = "nosniff"
        request_log.write(request_id, method, request.path[:_LOGGED_PATH_MAX], status, seconds, request.remote, fields)
        return response

    return functools.update_wrapper(answer, handler)


def hide_server_version() -> None:
    """Keep versions out of the answers aiohttp writes itself, to requests it cannot parse.

    Those (400 for a malformed or oversized request line or header) are made before any
    handler, middleware or signal runs, with aiohttp's default ``Server`` header, which names
    the aiohttp and Python versions: a free fingerprint for anyone sending garbage. The module
    constant is aiohttp's only knob for it; this sets it, process-wide, to the same name.
    """
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
