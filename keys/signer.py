"""JWS compact serialization (RFC 7515 section 7.1) of access tokens, signed with ``cryptography``.

The header of a key never changes, so its encoded form is made once; a signature is then one
JSON encoding (``tessera.keys.compact_json``), two base64url encodings and the primitive. joserfc checks every token this produces
in the test suite, as any JOSE library would.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tessera.keys import compact_json


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_dumps = compact_json.dumps


def der_to_jose(der: bytes, size: int) -> bytes:
    """An ECDSA signature as JWS wants it (RFC 7518 section 3.4: R || S, each left-padded to the
    curve's size) from the DER ``SEQUENCE { INTEGER r, INTEGER s }`` that OpenSSL makes.

    For P-256 and P-384 every length in it fits one byte, so R and S are read by slicing, in a
    quarter of the time ``decode_dss_signature`` and two ``int.to_bytes`` take (tests/test_signer.py
    checks both agree). A DER integer has a leading zero byte when its top bit is set, hence ``[-size:]``.
    Anything not of that shape goes through ``decode_dss_signature``.
    """
    end = len(der)
    if end > 8 and der[0] == 0x30 and der[1] == end - 2 and der[2] == 0x02:
        s_at = 4 + der[3]
        if s_at + 2 < end and der[s_at] == 0x02 and s_at + 2 + der[s_at + 1] == end:
            r, s = der[4:s_at], der[s_at + 2:]
            if len(r) <= size + 1 and len(s) <= size + 1:
                return r[-size:].rjust(size, b"\0") + s[-size:].rjust(size, b"\0")
    r_int, s_int = decode_dss_signature(der)
    return r_int.to_bytes(size, "big") + s_int.to_bytes(size, "big")


class Signer:
    """Signs RFC 9068 access tokens (and OpenID Connect ID tokens) with one private key."""

    def __init__(self, alg: str, kid: str, private_key: Any) -> None:
        self.alg = alg
        self.kid = kid
        # RFC 9068 section 2.1: typ "at+jwt" so that an access token cannot pass for an ID token.
        header = {"alg": alg, "kid": kid, "typ": "at+jwt"}
        self._header_b64 = b64url(_dumps(header)) + b"."
        # OpenID Connect ID tokens: typ "JWT" (RFC 7519 section 5.1), so neither passes for the other.
        self._id_header_b64 = b64url(_dumps({"alg": alg, "kid": kid, "typ": "JWT"})) + b"."
        self._sign = self._primitive(alg, private_key)
        # RSA takes milliseconds per signature: the caller runs it off the event loop.
        self.blocking = alg in ("RS256", "PS256")

    @staticmethod
    def _primitive(alg: str, key: Any) -> Any:
        if alg in ("ES256", "ES384"):
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            ecdsa = ec.ECDSA(hashes.SHA256() if alg == "ES256" else hashes.SHA384())
            size = (key.curve.key_size + 7) // 8

            def sign_ec(data: bytes) -> bytes:
                return der_to_jose(key.sign(data, ecdsa), size)

            return sign_ec
        if alg == "EdDSA":
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            return key.sign
        if alg == "RS256":
            assert isinstance(key, rsa.RSAPrivateKey)
            return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if alg == "PS256":
            assert isinstance(key, rsa.RSAPrivateKey)
            # RFC 7518 section 3.5: MGF1 with SHA-256 and a salt as long as the hash.
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return lambda data: key.sign(data, pss, hashes.SHA256())
        raise ValueError(f"unsupported signing algorithm {alg!r}")

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = self._header_b64 + b64url(_dumps(claims))
        return (signing_input + b"." + b64url(self._sign(signing_input))).decode("ascii")

    def sign_id_token(self, claims: dict[str, Any]) -> str:
        signing_input = self._id_header_b64 + b64url(_dumps(claims))
        return (signing_input + b"." + b64url(self._sign(signing_input))).decode("ascii")
