"""Private keys at rest: AES-256-GCM under the key-encryption key (KEK).

A sealed blob is ``version (1 byte) || nonce (12 bytes) || ciphertext+tag``. The associated data
binds the blob to its row (the ``kid``), so a sealed key copied onto another row does not open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class UnsealError(Exception):
    """The blob was not sealed with this key-encryption key for this purpose (or is corrupt)."""


def seal(kek: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    nonce = os.urandom(12)
    return _VERSION + nonce + AESGCM(kek).encrypt(nonce, plaintext, _VERSION + associated_data)


def unseal(kek: bytes, blob: bytes, associated_data: bytes) -> bytes:
    if len(blob) < 1 + 12 + 16 or blob[:1] != _VERSION:
        raise UnsealError("unknown sealed-key format")
    try:
        return AESGCM(kek).decrypt(blob[1:13], blob[13:], _VERSION + associated_data)
    except InvalidTag:
        raise UnsealError("the key-encryption key does not open this key") from None


class KekRing:
    """The key-encryption keys one process holds: the current one and, while the KEK is being
    changed, the new one beside it (``tessera keys rewrap`` moves every blob from one to the other).

    Opening tries the new KEK first, then the current one, so a process keeps working on either
    side of the rewrap. New secrets are sealed under the current KEK; new signing keys follow the
    active key (see ``tessera.keys.lifecycle``), so after a rewrap they are made under the new one.
    """

    def __init__(self, current: bytes, new: bytes | None = None) -> None:
        self.current = current
        self.new = new if new != current else None

    @property
    def keys(self) -> tuple[bytes, ...]:
        return (self.new, self.current) if self.new is not None else (self.current,)

    def open(self, blob: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        """The plaintext of ``blob`` and the KEK it was sealed under."""
        for kek in self.keys:
            try:
                return unseal(kek, blob, associated_data), kek
            except UnsealError:
                continue
        raise UnsealError("no configured key-encryption key opens this blob")

    def unseal(self, blob: bytes, associated_data: bytes) -> bytes:
        return self.open(blob, associated_data)[0]

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        return seal(self.current, plaintext, associated_data)


def reseal(old: bytes, new: bytes, blob: bytes, associated_data: bytes) -> bytes | None:
    """``blob`` sealed under ``new``; None when it already is (so a rewrap can run twice)."""
    try:
        unseal(new, blob, associated_data)
    except UnsealError:
        return seal(new, unseal(old, blob, associated_data), associated_data)
    return None
