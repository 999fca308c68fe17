"""``json.dumps(value, separators=(",", ":"))``, without its per-call setup for flat objects.

``json.dumps`` builds an encoder (and, inside ``encode``, a C encoder object) on every call: for
the small flat objects a token server writes all the time (JWT claims, token answers, errors)
that setup costs more than the encoding. A flat object of strings and integers is written here
directly, with the same C string escaping; anything else goes to the ``json`` module. The output
is byte for byte what ``json.dumps`` makes (ASCII, escaped as it escapes).
"""

from __future__ import annotations

import json
from typing import Any

_encode = json.JSONEncoder(separators=(",", ":")).encode
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def dumps(value: Any) -> str:
    if type(value) is dict:
        parts = []
        for key, item in value.items():
            kind = type(item)
            if type(key) is not str or (kind is not str and kind is not int):
                return _encode(value)
            parts.append(f"{_quote(key)}:{_quote(item) if kind is str else int.__repr__(item)}")
        return "{" + ",".join(parts) + "}"
    return _encode(value)


__all__ = ["dumps"]
