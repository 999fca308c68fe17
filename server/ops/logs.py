"""Structured logs: one JSON object per line on stderr.

Only fields passed on purpose reach a line (``extra={...}``); request bodies, headers and tokens
never do, so no secret can leak through a log. As a second line of defence, anything shaped like
a credential that still reaches a line (a token pasted into a URL path, a DSN in an exception
message) is masked: JWTs, Tessera's ``tsr_``/``tsc_`` tokens, and a password inside a URL.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
import time
from typing import Any

import orjson

from tessera.server.ops.end_of_turn import EndOfTurn

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_CREDENTIALS = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*"  # a JWS, whole or cut short: its header always starts {"
    r"|\bts[rc]_[A-Za-z0-9_-]{8,}"  # refresh tokens and client secrets, prefixed for secret scanners
)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s\"]*:)[^@\s\"]+@")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    # Plain substring tests first: almost no line has any of these, and the regexes cost more.
    if "eyJ" in text or "tsr_" in text or "tsc_" in text:
        text = _CREDENTIALS.sub(REDACTED, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
    return text


def _timestamp(now: float) -> str:
    """``2026-11-28T09:06:32.123Z``."""
    ms = int(now * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ms // 1000))}.{ms % 1000:03d}Z"


class _Timestamps:
    """``_timestamp`` for the lines of one turn of the loop, which mostly share their second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, now: float) -> str:
        ms = int(now * 1000)
        if ms // 1000 != self._second:
            self._second = ms // 1000
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self._second))
        return f"{self._text}.{ms % 1000:03d}Z"


def line(entry: dict[str, Any]) -> str:
    """The one serializer of log lines: ``entry`` as compact JSON (anything not JSON as its
    ``str``), with any credential in it masked."""
    try:
        text = orjson.dumps(entry, default=str).decode()
    except TypeError:  # what orjson refuses (an integer past 64 bits, a non-string key)
        text = json.dumps(entry, default=str, separators=(",", ":"))
    return redact(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return line(entry)


# Request lines wait in memory at most this long, or until this many characters wait, before they
# are written (JsonLineHandler): a kill -9 can lose that much, a clean stop nothing.
LOG_FLUSH_SECONDS = 0.02
LOG_BUFFER_CHARS = 64 * 1024


class JsonLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs. Besides ordinary records it takes request lines from
    ``RequestLog`` as plain values, noted during a turn of the event loop and turned into lines all
    together at its end, by the same serializer as ``JsonFormatter`` (``line``), without the
    ``LogRecord`` a record costs. The lines are then written in one ``write`` per
    ``LOG_FLUSH_SECONDS`` or per ``LOG_BUFFER_CHARS``, whichever comes first, as nginx's
    ``access_log ... buffer= flush=`` does. Any other record, and ``flush`` (at exit,
    logging.shutdown calls it), writes them first, so lines keep their order and a clean stop
    loses none.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        # The values of the request lines still to be formatted; any thread may flush them.
        self._pending: EndOfTurn[tuple[Any, ...]] = EndOfTurn(self._format_lines, lock=self.lock)
        # Formatted lines not yet written (under ``self.lock``), and the timer that writes them.
        self._buffer: list[str] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def write_request(
        self, logger: str, request_id: str, method: str, path: str, status: int, duration_ms: float,
        remote: str | None, fields: dict[str, Any],
    ) -> None:
        """The INFO line ``request`` with these fields and then ``fields``, as ``JsonFormatter``
        would write it (``duration_ms`` to two decimals), timed now and formatted at the end of
        this turn of the loop (so ``fields`` must not change after this call)."""
        self._pending.add((time.time(), logger, request_id, method, path, status, duration_ms, remote, fields))

    def _format_lines(self, pending: list[tuple[Any, ...]]) -> None:
        """At the end of a turn of the loop (under ``self.lock``): the turn's lines, into the buffer."""
        if pending:
            pid, stamp = os.getpid(), _Timestamps()
            text = "".join([
                line({
                    "ts": stamp(now), "level": "info", "logger": logger, "pid": pid, "msg": "request",
                    "request_id": request_id, "method": method, "path": path, "status": status,
                    "duration_ms": round(duration_ms, 2), "remote": remote, **fields,
                }) + self.terminator
                for now, logger, request_id, method, path, status, duration_ms, remote, fields in pending
            ])
            self._buffer.append(text)
            self._buffered += len(text)
        if not self._buffer:
            return
        if self._buffered >= LOG_BUFFER_CHARS:
            self._write_buffer()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not in an event loop (a thread, a CLI command): at once
            self._write_buffer()
            return
        if self._timer is None or self._timer_loop is not loop:
            self._timer = loop.call_later(LOG_FLUSH_SECONDS, self._flush_on_time)
            self._timer_loop = loop

    def _flush_on_time(self) -> None:
        self._timer = None
        self.flush()

    def _write_buffer(self) -> None:
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            self.stream.write(text)
            super().flush()

    def flush(self) -> None:
        self._pending.flush()
        assert self.lock is not None  # made by logging.Handler.__init__
        with self.lock:
            self._write_buffer()

    def emit(self, record: logging.LogRecord) -> None:
        self.flush()
        super().emit(record)


class RequestLog:
    """The one INFO line ``request`` that every answer writes, to ``logger``.

    When the process logs as ``configure`` set it up (one ``JsonLineHandler`` at the root and
    nothing else that would see the record: no test capture, no operator's handler or filter), the
    values go to that handler directly and become the same line ``JsonFormatter`` would write.
    Otherwise they go through ``logging`` as an ordinary record. Which of the two is decided once,
    when the application's routes are made (after ``configure``).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._direct = _only_handler(logger)

    def write(
        self, request_id: str, method: str, path: str, status: int, seconds: float, remote: str | None,
        fields: dict[str, Any],
    ) -> None:
        if self._direct is not None:
            self._direct.write_request(self._logger.name, request_id, method, path, status, seconds * 1000, remote, fields)
        else:
            self._logger.info("request", extra={
                "request_id": request_id, "method": method, "path": path, "status": status,
                "duration_ms": round(seconds * 1000, 2), "remote": remote, **fields,
            })


def _only_handler(logger: logging.Logger) -> JsonLineHandler | None:
    """The root's ``JsonLineHandler`` if it alone would see an INFO record of ``logger``."""
    if not logger.isEnabledFor(logging.INFO) or logger.filters:
        return None
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or not node.propagate:
            return None
        node = node.parent
    handlers = logging.root.handlers
    if len(handlers) != 1 or type(handlers[0]) is not JsonLineHandler or handlers[0].filters:
        return None
    if handlers[0].level > logging.INFO:
        return None
    return handlers[0]


def configure(level: str = "INFO") -> None:
    # A line is UTF-8 JSON; on a stream that cannot encode a character, an escape rather than a
    # lost line.
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="backslashreplace")
    handler = JsonLineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by one line per request from ``tessera.server.http.answering``.
    logging.getLogger("aiohttp.access").disabled = True
    # pgserver narrates every start of the embedded database at INFO; its warnings still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
