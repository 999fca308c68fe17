"""What refresh-token sessions add to a server process: the families service (used by the
password and refresh_token grants), revocation, introspection and the background janitor."""

from __future__ import annotations

from keys.kek import KekRing

from collections.abc import Callable

import asyncpg

from keys.keyring import Keyring
from server.introspection import AccessTokenReader, Introspection
from server.janitor import Janitor
from server.refresh import RefreshFamilies
from server.revocation import Revocation
from server.settings import Settings


async def open_sessions(
    pool: asyncpg.Pool,
    kek: bytes | KekRing,
    settings: Settings,
    keyring: Keyring,
    clock: Callable[[], float],
    extras: dict[str, object],
) -> Janitor:
    """Register the session services in ``extras``; returns the janitor, not yet started."""
    families = await RefreshFamilies.open(
        pool,
        kek,
        refresh_token_ttl=settings.refresh_token_ttl,
        session_ttl=settings.session_ttl,
        reuse_grace=settings.refresh_reuse_grace,
        clock=clock,
    )
    reader = AccessTokenReader(keyring, issuer=settings.issuer, clock=clock)
    extras["refresh_families"] = families
    extras["revocation"] = Revocation(families, reader)
    extras["introspection"] = Introspection(families, reader)
    return Janitor(pool, clock)
