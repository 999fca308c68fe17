"""tessera.keys.signer.der_to_jose: the R || S of RFC 7518 section 3.4, read from OpenSSL's DER by slicing,
equals what decode_dss_signature gives, for every length R and S can have."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from tessera.keys.signer import der_to_jose


def _reference(der: bytes, size: int) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


@pytest.mark.parametrize(("curve", "hash_", "size"), [(ec.SECP256R1(), hashes.SHA256(), 32), (ec.SECP384R1(), hashes.SHA384(), 48)])
def test_openssl_signatures(curve, hash_, size):
    key = ec.generate_private_key(curve)
    lengths = set()
    for n in range(1500):
        der = key.sign(b"message %d" % n, ec.ECDSA(hash_))
        lengths.add(der[3])
        assert der_to_jose(der, size) == _reference(der, size)
    # Both a leading zero byte (top bit set) and a shorter R came up, not only the common length.
    assert {size, size + 1} <= lengths


@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("r", [1, 255, 256, 2**255, 2**256 - 1, 2**200 + 12345])
def test_every_integer_length(size, r):
    r %= 2 ** (8 * size)
    for s in (1, 2**(8 * size) - 1, 2**(8 * size - 1), 0x80):
        der = encode_dss_signature(r, s)
        assert der_to_jose(der, size) == _reference(der, size)


def test_anything_else_goes_through_decode_dss_signature():
    der = encode_dss_signature(5, 7)
    for broken in (der[:-1], der + b"\0", b"\x31" + der[1:], der[:2] + b"\x03" + der[3:], b"", b"\x30\x00"):
        with pytest.raises(ValueError):
            der_to_jose(broken, 32)
