"""Everything a request handler may use, built once per process and held under one ``AppKey``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

from keys.keyring import Keyring
from server.client_auth import ClientAuthenticator
from server.grants import Grant, GrantServices
from server.passwords import SecretHasher
from server.settings import Settings
from server.store import ClientStore, UserStore


@dataclass(slots=True)
class Services:
    settings: Settings
    clock: Callable[[], float]
    pool: asyncpg.Pool
    keyring: Keyring
    hasher: SecretHasher
    clients: ClientStore
    users: UserStore
    authenticator: ClientAuthenticator
    grants: dict[str, Grant]
    grant_services: GrantServices
    metadata_body: bytes
    shutting_down: bool = False
    extras: dict[str, object] = field(default_factory=dict)


SERVICES = web.AppKey("services", Services)
