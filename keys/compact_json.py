"""Compact JSON as UTF-8 bytes, for what the server writes all the time: JWT claims and JSON answers.

orjson (installed with the ``server`` extra) encodes a token's claims more than ten times faster
than ``json.dumps``, and a client_credentials request encodes twice; ``bench/run.py`` measures it.
Without orjson (the verifier's light install, which never signs) the ``json`` module does it all. The output is RFC 8259 JSON without whitespace, with
non-ASCII characters as UTF-8 (as JOSE, RFC 7515 section 2, and every JSON parser expect) rather
than ``\\u`` escapes; tests/test_compact_json.py checks it against ``json.dumps(...,
ensure_ascii=False)``. What orjson refuses (integers past 64 bits, non-string keys) is encoded by
the ``json`` module instead, so any JSON value still encodes.
"""

from __future__ import annotations

import json
from typing import Any

_fallback = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dumps_json(value: Any) -> bytes:
    return _fallback(value).encode()


try:
    import orjson
except ModuleNotFoundError:  # the light install: the verifier decodes, it never encodes hot
    dumps = _dumps_json
else:

    def dumps(value: Any) -> bytes:
        try:
            return orjson.dumps(value)
        except TypeError:
            return _dumps_json(value)


__all__ = ["dumps"]
