"""What the HTTP layer may use, built once per process by ``tessera.server.app`` and held under
one typed ``AppKey``. Everything below it (grants, stores, the throttle) is wired by constructor."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from tessera.keys.keyring import Keyring
from tessera.server.http.pages import Pages
from tessera.server.oauth.client_auth import ClientAuthenticator
from tessera.server.oauth.grants import Grant
from tessera.server.oauth.introspection import Introspection
from tessera.server.oauth.revocation import Revocation
from tessera.server.oauth.userinfo import UserInfo
from tessera.server.settings import Settings


@dataclass(slots=True)
class Services:
    settings: Settings
    pool: asyncpg.Pool  # /readyz asks it whether the database answers
    keyring: Keyring  # the JWKS, and /readyz
    authenticator: ClientAuthenticator
    grants: dict[str, Grant]
    revocation: Revocation
    introspection: Introspection
    pages: Pages  # /authorize, /login, /consent, /logout
    userinfo: UserInfo
    metadata_body: bytes
    shutting_down: bool = False


SERVICES = web.AppKey("services", Services)
