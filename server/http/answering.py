"""Turns every outcome into a proper answer and one log line.

``OAuthError`` becomes an RFC 6749 section 5.2 body; a database that cannot be reached becomes 503
``temporarily_unavailable``; anything unexpected becomes a bare ``server_error`` for the client and
a full log line (with traceback) for the operator. Nothing internal reaches a response.

Most answers are the routes' (``answering``). The rest aiohttp would write itself, as text, before
or around any route: requests its HTTP parser refuses, and the few a route can never take.
``AnsweringConnection`` answers those the same way (``AnsweringRunner`` serves an app with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web, web_response
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, HttpProcessingError, InvalidURLError, LineTooLong
from multidict import CIMultiDict

from tessera.keys import compact_json
from tessera.server.store.db import DATABASE_UNAVAILABLE
from tessera.server.oauth.errors import (
    InvalidRequest, MethodNotAllowed, NotFound, OAuthError, RequestTooLarge, ServerError, TemporarilyUnavailable,
)
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


def _request_id(request: web.BaseRequest) -> str:
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
    """Keep versions out of every answer's ``Server`` header.

    aiohttp's default names the aiohttp and Python versions: a free fingerprint for anyone
    sending garbage, because it is also on the answers to requests the parser refuses, made
    before any handler, middleware or signal runs (``AnsweringConnection`` makes those JSON, but
    an app served by a plain ``web.AppRunner``, as in the in-process tests, still has aiohttp's).
    The module constant is aiohttp's only knob for it; this sets it, process-wide, to the same name.
    """
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]


# --- what aiohttp would otherwise answer itself -------------------------------------------------

# A refused request is counted under this endpoint label, with the method "other": the parser
# stopped before either could be trusted.
UNPARSED = "unparsed"

# What the client is told, by the parser's error class (the first that matches). Never the parser's
# own message: it quotes the refused bytes, an Authorization header or a password in a URL included.
_REFUSALS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "the request line or a header line is too long"),
    (BadHttpMethod, "the request method is not valid"),
    (BadStatusLine, "the request line is not valid HTTP/1.1"),
    (InvalidURLError, "the request target is not valid"),
    (HttpProcessingError, "the request is not valid HTTP/1.1"),
)


def _refusal(exc: HttpProcessingError) -> OAuthError:
    """RFC 6749's ``invalid_request`` (400) for any request the parser refuses: an oversized line
    too, rather than 414 or 431, because the parser's error does not tell a request line from a
    header line without quoting it, and every client library reads the 400 body."""
    return InvalidRequest(next(text for kind, text in _REFUSALS if isinstance(exc, kind)))


class AnsweringConnection(web.RequestHandler):
    """aiohttp's HTTP/1 connection (one per client connection), answering what aiohttp would
    answer itself as the application answers everything else: the RFC 6749 JSON body with
    ``Cache-Control: no-store``, ``X-Request-Id`` and ``nosniff``, one log line and a count.

    - A request the HTTP parser refuses (a control character in a header, an oversized line, a
      malformed request line, TLS on the plain port) reaches ``handle_error``, where aiohttp
      would answer the parser's message as text (it quotes the refused bytes) and log it with a
      traceback at ERROR. Here: ``invalid_request``, and one INFO line naming the error class
      and nothing the client sent.
    - An answer aiohttp makes from an ``HTTPException`` of its own, outside every route (the
      router's 404 for ``OPTIONS *``, 417 for an ``Expect`` it does not know), passes through
      ``finish_response`` as that exception; it becomes the JSON answer of ``answering``.
    - During shutdown the request being handled still receives its body (``data_received``).

    aiohttp has no setting for any of these (aio-libs/aiohttp#3287 asks for one), so this
    overrides the three methods of ``web.RequestHandler`` where they happen.
    """

    __slots__ = ("_series", "_request_log")

    def __init__(self, manager: web.Server, *, series: Metrics, request_log: RequestLog, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._series = series
        self._request_log = request_log

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer under way cannot be replaced
            raise ConnectionError("an answer was already being sent")
        started = time.perf_counter()
        request_id = _new_request_id()
        series = self._series
        series.request_started()
        if isinstance(exc, HttpProcessingError):
            error = _refusal(exc)
            log.info("request refused by the parser", extra={
                "request_id": request_id, "status": error.status, "error_class": type(exc).__name__,
                "error": error.error, "remote": request.remote,
            })
            endpoint, method = UNPARSED, "other"
        else:
            # An exception no route answered (``answering`` catches them all), or a handler that
            # timed out: a bug, so the operator gets the traceback.
            error = ServerError("internal error")
            log.error("unhandled error", exc_info=exc, extra={"request_id": request_id, "status": status})
            endpoint, method = "unmatched", _metric_method(request.method)
        response = error_response(error)
        response.headers["X-Request-Id"] = request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.force_close()
        series.request_done(endpoint, method, error.status, time.perf_counter() - started, error.error)
        return response

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # The routes answer with responses, never with an exception of 400 or more (``answering``
        # turns those into JSON), so such an exception here is aiohttp's own answer.
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            resp = self._answer_outside_the_routes(request, resp)
        return await super().finish_response(request, resp, start_time)

    def _answer_outside_the_routes(self, request: web.BaseRequest, exc: web.HTTPException) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        self._series.request_started()
        error = _from_http_exception(exc)
        response = error_response(error)
        response.headers["X-Request-Id"] = request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        if exc.keep_alive is False:
            response.force_close()
        seconds = time.perf_counter() - started
        self._series.request_done("unmatched", _metric_method(request.method), error.status, seconds, error.error)
        self._request_log.write(
            request_id, request.method, request.path[:_LOGGED_PATH_MAX], error.status, seconds, request.remote,
            {"error": error.error},
        )
        return response

    def data_received(self, data: bytes) -> None:
        # On shutdown aiohttp stops reading every connection (``close``, then ``shutdown`` sets
        # ``_force_close``) and only then waits for the requests being handled: one whose body was
        # still arriving would wait for it until it was cancelled, unanswered. So a request being
        # handled (or parsed and about to be) keeps receiving its body; a request after it on the
        # connection is not read.
        if (self._close or self._force_close) and (self._request_in_progress or self._messages):
            parser = self._parser
            if parser is not None and self._payload_parser is None and not self._upgraded:
                with contextlib.suppress(HttpProcessingError):
                    parser.feed_data(data)
            return
        super().data_received(data)


def _metric_method(method: str) -> str:
    return method if method in _METHODS else "other"


class AnsweringServer(web.Server):
    """aiohttp's low-level server (``web.Server``), making an ``AnsweringConnection`` per connection."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        series: Metrics,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        **connection_kwargs: Any,
    ) -> None:
        super().__init__(
            handler, request_factory=request_factory, handler_cancellation=handler_cancellation, loop=loop,
            **connection_kwargs,
        )
        self._connection_loop = loop or asyncio.get_running_loop()
        self._connection_kwargs = connection_kwargs
        self._series = series
        self._request_log = RequestLog(log)

    def __call__(self) -> web.RequestHandler:
        return AnsweringConnection(
            self, loop=self._connection_loop, series=self._series, request_log=self._request_log,
            **self._connection_kwargs,
        )


class AnsweringRunner(web.AppRunner):
    """``web.AppRunner`` whose server makes ``AnsweringConnection``s; ``series`` counts their answers.

    aiohttp makes the app's ``web.Server`` in ``AppRunner._make_server`` (after the app's startup),
    with the handler arguments merged from the runner and the app's ``handler_args``; this takes
    that server's handler, request factory and arguments over into an ``AnsweringServer``.
    """

    __slots__ = ("_series",)

    def __init__(self, app: web.Application, *, series: Metrics, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._series = series

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return AnsweringServer(
            made.request_handler,
            series=self._series,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
