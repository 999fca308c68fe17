"""Time limits on a request, and who sent it.

Two clocks run for every request (docs/hardening.md):

- the client's: once the headers are in, the whole body must arrive within the client timeout
  (``TESSERA_CLIENT_TIMEOUT``), or the answer is 408 and the connection closes. The headers
  themselves are bounded by aiohttp's keep-alive timer, set to the same value in ``tessera.server.app``:
  it closes a connection on which no complete request has arrived in that time;
- the server's: once the body is in, the answer must be ready within the database statement
  timeout plus ``ANSWER_MARGIN_SECONDS``, or it is 503 ``temporarily_unavailable``. This
  covers what the statement timeout alone cannot: waiting for a pool connection while every
  connection hangs on a database that accepts connections but never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tessera.server.oauth.errors import RequestTimeout
from tessera.server.settings import Settings
from tessera.server.store.db import REQUEST_GIVES_UP

log = logging.getLogger("tessera")


@dataclass(slots=True)
class RequestClock:
    deadline: Deadline
    client_timeout: float
    answer_within: float


class Deadline:
    """When the handling of one request must end: ``reschedule(None)`` stops the clock,
    ``reschedule(t)`` sets it to loop time ``t`` (``asyncio.Timeout``'s two uses here)."""

    __slots__ = ("when", "expired", "task", "cancelling")

    def __init__(self, when: float, task: asyncio.Task[Any]) -> None:
        self.when: float | None = when
        self.expired = False
        self.task = task
        self.cancelling = task.cancelling()

    def reschedule(self, when: float | None) -> None:
        self.when = when


# How often the deadlines of the requests in flight are looked at: a deadline fires up to this late.
DEADLINE_TICK_SECONDS = 0.25


class Deadlines:
    """``asyncio.timeout``'s contract for the endpoints (``TimeoutError`` once the deadline has
    passed), with one timer for all the requests in flight instead of one armed and cancelled per
    request, which cost more than all the rest of the deadline handling. The timer runs only while
    some request is in flight and fires every ``DEADLINE_TICK_SECONDS``; the deadlines are seconds
    long (the statement timeout plus ``ANSWER_MARGIN_SECONDS``), so firing up to a tick late is
    immaterial.
    """

    def __init__(self, client_timeout: float, answer_within: float) -> None:
        self.client_timeout = client_timeout
        self.answer_within = answer_within
        self._running: dict[Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task[Any]) -> Deadline:
        loop = task.get_loop()
        deadline = Deadline(loop.time() + self.answer_within, task)
        self._running[deadline] = None
        if self._timer is None:
            self._timer = loop.call_later(DEADLINE_TICK_SECONDS, self._expire_overdue, loop)
        return deadline

    def end(self, deadline: Deadline) -> None:
        del self._running[deadline]

    def _expire_overdue(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for deadline in self._running:
            if not deadline.expired and deadline.when is not None and deadline.when <= now:
                deadline.expired = True
                deadline.task.cancel()
        if self._running:
            self._timer = loop.call_later(DEADLINE_TICK_SECONDS, self._expire_overdue, loop)


REQUEST_CLOCK = web.RequestKey("request_clock", RequestClock)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Past the statement timeout: room for a pool connection to be made and the answer written.
ANSWER_MARGIN_SECONDS = 2.0
# HTTP/1 limits: a request line or header line over 8 KiB, or over 64 header lines, is a 400.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 64
# How long a refused request's unread body is drained so the client can read the refusal.
LINGER_SECONDS = 2.0


def connection_limits(settings: Settings) -> dict[str, Any]:
    """aiohttp's per-connection limits (``handler_args``).

    aiohttp (3.14.4 and later) arms its keep-alive timer when a connection opens and closes the
    connection when it fires while no complete request has arrived: with the client timeout as
    the keep-alive timeout, that is the header timeout against a slow-loris, and idle
    connections go after the same time.
    """
    return {
        "max_line_size": MAX_LINE_BYTES,
        "max_field_size": MAX_LINE_BYTES,
        "max_headers": MAX_HEADERS,
        "keepalive_timeout": settings.client_timeout,
        "lingering_time": LINGER_SECONDS,
    }


DEADLINES = web.AppKey("deadlines", Deadlines)


def deadlines(settings: Settings) -> Deadlines:
    return Deadlines(settings.client_timeout, settings.db_statement_timeout + ANSWER_MARGIN_SECONDS)


def with_deadline(handler: Handler) -> Handler:
    """Bounds an endpoint's handling; a ``TimeoutError`` leaves it for ``tessera.server.http.answering.answering`` (503).

    Only the endpoints that take a body (the POST ones) get a clock: the GET endpoints answer from
    memory (the JWKS, metadata, health) or bound their one query themselves (/readyz), and anything
    else is a 404 or 405. A wrapper on those endpoints, not a middleware, so the others do not pay
    for a layer that does nothing for them.

    The deadline is also the request's ``REQUEST_GIVES_UP``: the store hands it to every write the
    request makes, which the database then refuses to commit once the answer may have gone.
    """

    @functools.wraps(handler)
    async def bounded(request: web.Request) -> web.StreamResponse:
        limits = request.app[DEADLINES]
        task = asyncio.current_task()
        assert task is not None
        deadline = limits.start(task)
        request[REQUEST_CLOCK] = RequestClock(deadline, limits.client_timeout, limits.answer_within)
        gives_up = REQUEST_GIVES_UP.set(deadline)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            # As asyncio.timeout does: our own cancellation becomes TimeoutError; anyone else's
            # (the client went away, shutdown) stays a cancellation.
            if deadline.expired and task.uncancel() <= deadline.cancelling:
                raise TimeoutError("the answer was not ready in time") from None
            raise
        finally:
            REQUEST_GIVES_UP.reset(gives_up)
            limits.end(deadline)

    return bounded


@contextlib.asynccontextmanager
async def receiving_body(request: web.Request) -> AsyncIterator[None]:
    """Time the body read by the client's clock, then start the server's clock afresh."""
    clock = request.get(REQUEST_CLOCK)
    if clock is None:
        yield
        return
    loop = asyncio.get_running_loop()
    clock.deadline.reschedule(None)
    try:
        async with asyncio.timeout(clock.client_timeout):
            yield
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    finally:
        clock.deadline.reschedule(loop.time() + clock.answer_within)


def client_address(request: web.Request, trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """The address a request came from: the peer, or behind trusted proxies the nearest address
    in ``X-Forwarded-For`` that is not one of them (the only one nobody else could have forged).

    ``X-Forwarded-For`` from any other peer is ignored (anyone can send it), with a warning the
    first time: behind a proxy that is not trusted, every caller has the proxy's address, and
    the throttle counts them all as one.
    """
    peer = request.remote
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        if not _FORWARDED_FOR_WARNED.is_set() and "X-Forwarded-For" in request.headers:
            _warn_forwarded_for_ignored(peer)
        return peer
    forwarded = [item.strip() for value in request.headers.getall("X-Forwarded-For", []) for item in value.split(",")]
    for hop in reversed(forwarded):
        if not _is_trusted(hop, trusted_proxies):
            return hop if _is_address(hop) else peer
    return peer


# Once per process: one line shows the operator the proxy to trust; one per request would let any
# client fill the logs.
_FORWARDED_FOR_WARNED = threading.Event()


def _warn_forwarded_for_ignored(peer: str | None) -> None:
    _FORWARDED_FOR_WARNED.set()
    log.warning(
        "X-Forwarded-For ignored: the peer is not in TESSERA_TRUSTED_PROXIES. If it is a proxy or load"
        " balancer of yours, add its address there; until then every caller behind it has its address,"
        " and a username throttled for one caller is throttled for all of them. Logged once.",
        extra={"event": "forwarded_for_ignored", "peer": peer},
    )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_trusted(address: str | None, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if address is None:
        return False
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


__all__ = ["DEADLINES", "REQUEST_CLOCK", "client_address", "connection_limits", "deadlines", "receiving_body", "with_deadline"]
