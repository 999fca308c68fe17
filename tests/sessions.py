"""Helpers for the refresh-token, revocation and introspection tests."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from tessera.server.oauth.families import parse_refresh_token
from tests.helpers import PASSWORD, SECRET, basic, post_token, tessera_server

# Older names, still imported by some test modules: the one server helper, the one set of credentials.
server_with = tessera_server

APP_GRANTS = ("password", "refresh_token")


async def login(http: TestClient[Any, Any], username: str = "alice", client_id: str = "app", **extra: str) -> dict[str, Any]:
    form = {"grant_type": "password", "username": username, "password": PASSWORD, **extra}
    status, body, _ = await post_token(http, form, headers=basic(client_id, SECRET))
    assert status == 200, body
    assert body["refresh_token"].startswith("tsr_")
    return body


async def refresh(
    http: TestClient[Any, Any], token: str, client_id: str = "app", secret: str | None = SECRET, **extra: str
) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    if secret is None:
        form["client_id"] = client_id
        status, body, _ = await post_token(http, form)
    else:
        status, body, _ = await post_token(http, form, headers=basic(client_id, secret))
    return status, body


async def call(
    http: TestClient[Any, Any], path: str, token: str, client_id: str = "app", secret: str | None = SECRET, **extra: str
) -> tuple[int, Any]:
    """POST /revoke or /introspect with ``token``, authenticated as ``client_id``."""
    form = {"token": token, **extra}
    headers = {}
    if secret is None:
        form["client_id"] = client_id
    else:
        headers = basic(client_id, secret)
    response = await http.post(path, data=form, headers=headers)
    text = await response.text()
    return response.status, (await response.json(content_type=None)) if text else None


def family_id_of(refresh_token: str) -> uuid.UUID:
    parsed = parse_refresh_token(refresh_token)
    assert parsed is not None
    return parsed.family_id


async def family_row(db: Any, refresh_token: str) -> Any:
    return await db.fetchrow("SELECT * FROM refresh_families WHERE family_id = $1", family_id_of(refresh_token))


__all__ = ["APP_GRANTS", "PASSWORD", "SECRET", "call", "family_id_of", "family_row", "login", "refresh", "server_with"]
