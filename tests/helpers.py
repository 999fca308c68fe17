"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp.test_utils import TestClient
from joserfc import jws, jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet

FORM = "application/x-www-form-urlencoded"


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def within_notification(check: Any, deadline: float = 2.0) -> Any:
    """``check()`` again until it is truthy, for up to ``deadline`` seconds; its last result.

    For changes made behind the server's back (another pool, the CLI): the server learns of them
    from a PostgreSQL notification, milliseconds after the commit (docs/performance.md)."""
    import asyncio

    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while True:
        result = await check()
        if result or loop.time() >= give_up:
            return result
        await asyncio.sleep(0.005)


async def post_token(http: TestClient[Any, Any], data: dict[str, str] | str | bytes, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    response = await http.post("/token", data=data, **kwargs)
    body = await response.json(content_type=None)
    return response.status, body, response


async def fetch_jwks(http: TestClient[Any, Any]) -> KeySet:
    response = await http.get("/.well-known/jwks.json")
    assert response.status == 200
    return KeySet.import_key_set(await response.json(content_type=None))


def decode_segment(segment: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def verify_with_joserfc(token: str, key_set: KeySet, algorithms: list[str] | None = None) -> jwt.Token:
    """Verify the way any resource server would: signature via the JWKS, kid from the header."""
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864 (in favour of "Ed25519"); the contract
        # names EdDSA, which every JOSE library still accepts.
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.decode(token, key_set, algorithms=algorithms or ["ES256", "ES384", "EdDSA", "RS256", "PS256"])


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


__all__ = ["FORM", "basic", "decode_segment", "fetch_jwks", "jws", "post_token", "verify_with_joserfc", "with_database"]
