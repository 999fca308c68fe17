"""Server-side secrets shared by every instance, sealed under the KEK."""

from __future__ import annotations

import secrets
import asyncpg

from tessera.keys import kek as kek_box


async def server_secret(
    db: asyncpg.Pool | asyncpg.Connection, kek: bytes | kek_box.KekRing, name: str, size: int = 32
) -> bytes:
    """The secret called ``name``: made once (whichever instance comes first), the same for all.

    Pass the process's ``KekRing`` (``Database.keks``) so that the secret still opens while the
    key-encryption key is being changed (``tessera keys rewrap``).
    """
    ring = kek if isinstance(kek, kek_box.KekRing) else kek_box.KekRing(kek)
    candidate = ring.seal(secrets.token_bytes(size), name.encode())
    await db.execute(
        "INSERT INTO server_secrets (name, sealed) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, candidate
    )
    sealed = await db.fetchval("SELECT sealed FROM server_secrets WHERE name = $1", name)
    return ring.unseal(bytes(sealed), name.encode())

