"""The keyring: what one server process holds in memory about the key set.

It serves the JWKS without touching the database (the body and its strong ETag are made once per
change) and keeps the active key's signer, unsealed once. ``refresh`` swaps in a new snapshot
atomically; readers never see half a key set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

from keys import kek as kek_box
from keys import material
from keys.signer import Signer
from keys.store import KeyStore, NewKey, StoredKey


class NoActiveKey(Exception):
    """The store holds no active key (yet)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    keys: tuple[StoredKey, ...]
    signer: Signer
    jwks_body: bytes
    etag: str


def jwks_document(keys: tuple[StoredKey, ...]) -> bytes:
    # Active first, then next, then retired: clients that take "the first key" get the signing one.
    order = {"active": 0, "next": 1, "retired": 2}
    published = sorted((k for k in keys if k.state in order), key=lambda k: (order[k.state], k.kid))
    return json.dumps({"keys": [k.public_jwk for k in published]}, separators=(",", ":")).encode()


def seal_new(alg: str, kek: bytes) -> NewKey:
    made = material.generate(alg)
    sealed = kek_box.seal(kek, made.private_jwk_json, made.kid.encode())
    return NewKey(made.kid, made.alg, made.public_jwk, sealed)


class Keyring:
    def __init__(self, store: KeyStore, kek: bytes) -> None:
        self._store = store
        self._kek = kek
        self._snapshot: Snapshot | None = None
        self._signers: dict[str, Signer] = {}

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise NoActiveKey("the keyring has not been loaded")
        return self._snapshot

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    async def ensure_initial_keys(self, alg: str) -> None:
        """First start: make an active key and a pre-published next key (once, whoever races)."""
        if any(k.state == "active" for k in await self._store.published_keys()):
            return
        loop = asyncio.get_running_loop()
        active = await loop.run_in_executor(None, seal_new, alg, self._kek)
        next_key = await loop.run_in_executor(None, seal_new, alg, self._kek)
        await self._store.create_initial_keys(active, next_key)

    async def refresh(self) -> Snapshot:
        keys = tuple(await self._store.published_keys())
        current = self._snapshot
        if current is not None and current.keys == keys:
            return current
        active = [k for k in keys if k.state == "active"]
        if not active:
            raise NoActiveKey("no active signing key in the store")
        signer = self._signer_for(active[0])
        body = jwks_document(keys)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self._snapshot = Snapshot(keys, signer, body, etag)
        return self._snapshot

    def _signer_for(self, key: StoredKey) -> Signer:
        signer = self._signers.get(key.kid)
        if signer is None:
            private = kek_box.unseal(self._kek, key.private_sealed, key.kid.encode())
            signer = material.signer_from_private_jwk(key.alg, key.kid, private)
            self._signers = {key.kid: signer}  # only the active key ever signs
        return signer
