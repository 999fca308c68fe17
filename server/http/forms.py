"""Strict parsing of form-encoded request bodies (RFC 6749 section 3.2 and appendix B).

Every endpoint that takes a form goes through ``read_form``: the body is bounded, must be
``application/x-www-form-urlencoded`` UTF-8, may not repeat a parameter, and may not carry NUL or
other control characters. Anything else is ``invalid_request`` before any handler sees it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from aiohttp import web

from tessera.server.oauth.errors import InvalidRequest, RequestTooLarge
from tessera.server.oauth.parameters import printable
from tessera.server.http.limits import receiving_body

MAX_PARAMETERS = 32
MAX_VALUE_LENGTH = 4096
_ENCODED_CONTROL = re.compile("%(?:[01][0-9A-Fa-f]|7[Ff])")
#: Parameters whose values come from a short list (never a credential): each encoded spelling is
#: decoded once. client_assertion_type's URN has six "%3A"s, 2.7 us to decode every time.
_VOCABULARY = frozenset({
    "grant_type", "client_assertion_type", "scope", "token_type_hint", "subject_token_type",
    "actor_token_type", "requested_token_type", "response_type",
})
_DECODED: dict[str, str] = {}
_DECODED_MAX = 256


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes, within the client timeout (``tessera.server.http.limits``).

    A declared length over the limit is refused before a byte of the body is read.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"the request body is larger than {limit} bytes")
    content = request.content
    if content.is_eof() and content.exception() is None:
        # The whole body came with the headers (a token request almost always does): nothing to
        # wait for, so neither clock needs touching.
        whole = content.read_nowait(limit + 1)
        if len(whole) > limit:
            raise RequestTooLarge(f"the request body is larger than {limit} bytes")
        return bytes(whole)
    body = bytearray()
    async with receiving_body(request):
        # A body may come in several pieces; read() returns what has arrived so far.
        while len(body) <= limit:
            chunk = await request.content.read(limit + 1 - len(body))
            if not chunk:
                break
            body += chunk
    if len(body) > limit:
        raise RequestTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


def _check_content_type(request: web.Request) -> None:
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise InvalidRequest("the body must be encoded in UTF-8")


def _pairs(text: str) -> list[tuple[str, str]]:
    """``urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMETERS,
    errors="strict")``, pair for pair (tests/test_parsing_properties.py checks it against
    parse_qsl), but without its per-parameter work where there is nothing to decode: with it,
    ``parse_form`` took 10 us for a client_credentials body; with this, 4.9 us.

    Raises ValueError past MAX_PARAMETERS and UnicodeDecodeError for percent-encoding that is
    not UTF-8, as parse_qsl does.
    """
    if text.count("&") + 1 > MAX_PARAMETERS:
        raise ValueError("too many fields")
    pairs = []
    for piece in text.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        # Only what has something to decode is decoded: a client assertion (several hundred
        # characters of base64url) usually has nothing, while its type next to it has "%3A"s.
        if "%" in name or "+" in name:
            name = unquote_plus(name, errors="strict")
        if "%" in value or "+" in value:
            value = _decoded(value) if name in _VOCABULARY else unquote_plus(value, errors="strict")
        pairs.append((name, value))
    return pairs


def _decoded(value: str) -> str:
    decoded = _DECODED.get(value)
    if decoded is None:
        decoded = unquote_plus(value, errors="strict")
        if len(value) <= 200:
            if len(_DECODED) >= _DECODED_MAX:
                _DECODED.clear()
            _DECODED[value] = decoded
    return decoded


def parse_form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        # Appendix B: non-ASCII characters travel percent-encoded, never raw.
        raise InvalidRequest("the body must be ASCII with UTF-8 percent-encoding") from None
    try:
        pairs = _pairs(text)
    except UnicodeDecodeError:
        raise InvalidRequest("a parameter is not valid UTF-8") from None
    except ValueError:
        raise InvalidRequest(f"too many parameters (at most {MAX_PARAMETERS})") from None
    # A control character in a name or value is in the text raw or percent-encoded ("%00" to "%1F",
    # "%7F": UTF-8 encodes them as one byte, and a longer form does not decode). When the text has
    # neither, no parameter has one. The text is ASCII here, where isprintable() is exactly "no C0
    # control and no DEL", in a tenth of the time of a regex scan.
    checked = text.isprintable() and ("%" not in text or _ENCODED_CONTROL.search(text) is None)
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"parameter {name!r} is repeated" if printable(name) else "a parameter is repeated")
        if len(value) > MAX_VALUE_LENGTH or len(name) > 64:
            raise InvalidRequest("a parameter is too long")
        if not checked and (not printable(name) or not printable(value)):
            raise InvalidRequest("parameters may not contain control characters")
        form[name] = value
    # Section 3.2: parameters sent without a value are treated as omitted.
    return {name: value for name, value in form.items() if value != ""}


async def read_form(request: web.Request, limit: int) -> dict[str, str]:
    if request.query_string and request.method == "POST":
        # Credentials in the URL end up in access logs; RFC 6749 section 3.2 wants POST bodies.
        raise InvalidRequest("parameters must be sent in the request body, not the query string")
    _check_content_type(request)
    return parse_form(await read_body(request, limit))
