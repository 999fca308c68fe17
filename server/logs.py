"""Structured logs: one JSON object per line on stderr.

Only fields passed on purpose reach a line (``extra={...}``); request bodies, headers and tokens
never do, so no secret can leak through a log. As a second line of defence, anything shaped like
a credential that still reaches a line (a token pasted into a URL path, a DSN in an exception
message) is masked: JWTs, Tessera's ``tsr_``/``tsc_`` tokens, and a password inside a URL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class JsonLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs, with a shortcut for the one line every request writes.

    ``write_line`` makes the same JSON object ``JsonFormatter`` would (same keys, same redaction)
    without a ``LogRecord``: building one, with its frame lookup and two dozen attributes, cost
    about a tenth of a cached token request.
    """

    def write_line(self, level: str, logger: str, message: str, fields: dict[str, Any]) -> None:
        entry: dict[str, Any] = {
            "ts": _timestamp(time.time()), "level": level, "logger": logger, "pid": os.getpid(), "msg": message,
        }
        entry.update(fields)
        line = redact(json.dumps(entry, default=str, separators=(",", ":"))) + self.terminator
        self.acquire()
        try:
            self.stream.write(line)
            self.flush()
        finally:
            self.release()


def fast_line_handler(logger: logging.Logger) -> JsonLineHandler | None:
    """The handler ``write_line`` may use for an INFO line of ``logger``, if nothing else (a test's
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
    # aiohttp's own access log is replaced by one line per request from ``server.middleware``.
    logging.getLogger("aiohttp.access").disabled = True
    # pgserver narrates every start of the embedded database at INFO; its warnings still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
