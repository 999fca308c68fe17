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
