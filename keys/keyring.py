"""The keyring: what one server process holds in memory about the key set.

It serves the JWKS without touching the database (the body and its strong ETag are made once per
change) and keeps the active key's signer, unsealed once. ``reload`` swaps in a new snapshot
atomically; readers never see half a key set.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tessera.keys import kek as kek_box
from tessera.keys import material
from tessera.keys.signer import Signer
from tessera.keys.store import KeyStore, StoredKey


class NoActiveKey(Exception):
    """The store holds no active key (yet), or this process cannot open it."""


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


class Keyring:
    def __init__(
        self, store: KeyStore, keks: kek_box.KekRing | bytes, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._keks = keks if isinstance(keks, kek_box.KekRing) else kek_box.KekRing(keks)
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._signers: dict[str, Signer] = {}
        self.problem: str | None = None

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise NoActiveKey("the keyring has not been loaded")
        return self._snapshot

    @property
    def loaded(self) -> bool:
        """Ready to sign with the current active key (False while a reload keeps failing to open it)."""
        return self._snapshot is not None and self.problem is None

    async def reload(self) -> Snapshot:
        """Reload the key set. Retired keys past their expiry leave it here, so call this now and
        then even without a change. If the active key cannot be opened (a wrong KEK), the old
        snapshot stays in place, ``problem`` says why, ``loaded`` turns False, and this raises."""
        keys = tuple(await self._store.published_keys(datetime.fromtimestamp(self._clock(), UTC)))
        current = self._snapshot
        if current is not None and current.keys == keys:
            self.problem = None
            return current
        active = [k for k in keys if k.state == "active"]
        if not active:
            raise NoActiveKey("no active signing key in the store")
        try:
            signer = self._signer_for(active[0])
        except (kek_box.UnsealError, ValueError) as exc:
            self.problem = f"cannot open the active key {active[0].kid}: {exc}"
            raise NoActiveKey(self.problem) from None
        body = jwks_document(keys)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self._snapshot = Snapshot(keys, signer, body, etag)
        self.problem = None
        return self._snapshot

    def _signer_for(self, key: StoredKey) -> Signer:
        signer = self._signers.get(key.kid)
        if signer is None:
            private = self._keks.unseal(key.private_sealed, key.kid.encode())
            signer = material.signer_from_private_jwk(key.alg, key.kid, private)
            self._signers = {key.kid: signer}  # only the active key ever signs
        return signer
