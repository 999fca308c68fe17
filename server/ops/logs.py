"""Structured logs: one JSON object per line on stderr.

Only fields passed on purpose reach a line (``extra={...}``); request bodies, headers and tokens
never do, so no secret can leak through a log. As a second line of defence, anything shaped like
a credential that still reaches a line (a token pasted into a URL path, a DSN in an exception
message) is masked: JWTs, Tessera's ``tsr_``/``tsc_`` tokens, and a password inside a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from typing import Any

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


_second: tuple[int, str] = (-1, "")  # one tuple, so a thread never sees one half of an update
_millisecond: tuple[int, str] = (-1, "")


def _timestamp(now: float) -> str:
    """``2026-11-28T09:06:32.123Z``; made once a millisecond (the lines of one turn of the loop
    share it), the part to the second once a second."""
    global _second, _millisecond
    ms = int(now * 1000)
    last, text = _millisecond
    if ms == last:
        return text
    whole, second = _second
    if ms // 1000 != whole:
        whole = ms // 1000
        second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, second)
    text = f"{second}.{ms % 1000:03d}Z"
    _millisecond = (ms, text)
    return text


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
        return redact(json.dumps(entry, default=str, separators=(",", ":")))


_quote = json.encoder.encode_basestring_ascii  # what json.dumps does to a str (ensure_ascii)

# os.getpid() is a system call each time; a worker forked from this process gets its own.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()
    _heads.clear()


# What a request line has after its timestamp up to its request id, by logger: the same each time.
_heads: dict[str, str] = {}
# Strings as they appear in a line, quoted and redacted: a request line repeats its method, path,
# address and field values from one request to the next. Bounded, so random paths cannot grow it.
_quoted: dict[str, str] = {}
QUOTED_REMEMBERED = 1024


def _quote_redacted(text: str) -> str:
    """``text`` as a JSON string, with any credential in it masked. Masking each value by itself is
    masking the line: no credential pattern matches across a quote (tessera.server.ops.logs._CREDENTIALS)."""
    quoted = _quoted.get(text)
    if quoted is None:
        if len(_quoted) >= QUOTED_REMEMBERED:
            _quoted.clear()
        quoted = _quoted[text] = redact(_quote(text))
    return quoted


def _quote_id(request_id: str) -> str:
    """A request id as a JSON string: the ids Tessera makes are hex, so most need no escaping."""
    if request_id.isascii() and request_id.isalnum():
        return f'"{request_id}"'  # letters and digits only: nothing to escape, nothing to mask
    return redact(_quote(request_id))


def _head(logger: str) -> str:
    head = _heads.get(logger)
    if head is None:
        head = _heads[logger] = f'"level":"info","logger":{_quote(logger)},"pid":{_pid},"msg":"request","request_id":'
    return head


os.register_at_fork(after_in_child=_forked)


def _json_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _quote_redacted(value)
    if kind is int or kind is float:
        return repr(value)
    return json.dumps(value, default=str, separators=(",", ":"))


# Request lines wait in memory at most this long, or until this many characters wait, before they
# are written (JsonLineHandler): a kill -9 can lose that much, a clean stop nothing.
LOG_FLUSH_SECONDS = 0.02
LOG_BUFFER_CHARS = 64 * 1024


class JsonLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs, with a shortcut for the one line every request writes.

    ``write_request`` makes the same JSON object ``JsonFormatter`` would (same keys, same redaction)
    without a ``LogRecord`` (its frame lookup and two dozen attributes cost about a tenth of a
    cached token request), assembles it field by field rather than through a dict and
    ``json.dumps``. Inside an event loop the lines are put together at the end of each turn of
    the loop, all at once, from the values noted per request: formatting them in a run, like
    signing in a run (tessera.server.oauth.tokens), keeps the code warm in the CPU's caches. They are then
    written in one ``write`` per ``LOG_FLUSH_SECONDS`` or per ``LOG_BUFFER_CHARS``, whichever
    comes first, as nginx's ``access_log ... buffer= flush=`` does: a system call per request was
    a tenth of a JWKS request, and one per turn of the loop still about 2% of a token request
    (docs/performance.md, session 6). Any other record, and ``flush`` (at exit, logging.shutdown
    calls it), writes them first, so lines keep their order and a clean stop loses none.
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

    def _request_line(
        self, now: float, logger: str, request_id: str, method: str, path: str, status: int, duration_ms: float,
        remote: str | None, fields: dict[str, Any],
    ) -> str:
        """The fields every request has, then ``fields``: each value quoted and masked by itself,
        the ones that repeat (method, path, address, field values) from a small cache."""
        line = (
            f'{{"ts":"{_timestamp(now)}",{_head(logger)}{_quote_id(request_id)},"method":{_quote_redacted(method)},'
            f'"path":{_quote_redacted(path)},"status":{status},"duration_ms":{duration_ms:.2f},'
            f'"remote":{"null" if remote is None else _quote_redacted(remote)}'
        )
        if fields:
            line += "".join([f",{_quote_redacted(key)}:{_json_value(value)}" for key, value in fields.items()])
        return line + "}" + self.terminator

    def _format_lines(self, pending: list[tuple[Any, ...]]) -> None:
        """At the end of a turn of the loop (under ``self.lock``): the turn's lines, into the buffer."""
        if pending:
            line = self._request_line
            text = "".join([line(*values) for values in pending])
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


def fast_line_handler(logger: logging.Logger) -> JsonLineHandler | None:
    """The handler ``write_request`` may use for an INFO line of ``logger``, if nothing else (a test's
    capture, an operator's extra handler or filter) would see the record: else None, and log it."""
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
    handler = JsonLineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by one line per request from ``tessera.server.http.answering``.
    logging.getLogger("aiohttp.access").disabled = True
    # pgserver narrates every start of the embedded database at INFO; its warnings still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
