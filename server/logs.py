"""Structured logs: one JSON object per line on stderr.

Only fields passed on purpose reach a line (``extra={...}``); request bodies, headers and tokens
never do, so no secret can leak through a log. As a second line of defence, anything shaped like
a credential that still reaches a line (a token pasted into a URL path, a DSN in an exception
message) is masked: JWTs, Tessera's ``tsr_``/``tsc_`` tokens, and a password inside a URL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

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


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by one line per request from ``server.middleware``.
    logging.getLogger("aiohttp.access").disabled = True
    # pgserver narrates every start of the embedded database at INFO; its warnings still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
