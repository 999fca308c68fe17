"""Server secrets: made once, shared by every instance, sealed under the KEK."""

from __future__ import annotations

import asyncio
import base64

import pytest

from tessera.keys import kek as kek_box
from tessera.server.store.secrets import server_secret


async def test_concurrent_first_uses_agree_on_one_sealed_secret(db_conn, clean_database, kek):
    import asyncpg

    key = base64.urlsafe_b64decode(kek + "=")
    connections = [await asyncpg.connect(clean_database) for _ in range(4)]
    try:
        values = await asyncio.gather(*(server_secret(c, key, "chain") for c in connections))
    finally:
        for c in connections:
            await c.close()
    assert len(set(values)) == 1 and len(values[0]) == 32
    sealed = bytes(await db_conn.fetchval("SELECT sealed FROM server_secrets WHERE name = 'chain'"))
    assert values[0] not in sealed
    with pytest.raises(kek_box.UnsealError):
        kek_box.unseal(b"\x01" * 32, sealed, b"chain")
