"""JWS compact serialization (RFC 7515 section 7.1) of access tokens, signed with ``cryptography``.

The header of a key never changes, so its encoded form is made once; a signature is then one
JSON encoding (``keys.compact_json``), two base64url encodings and the primitive. joserfc checks every token this produces
in the test suite, as any JOSE library would.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from keys import compact_json


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_dumps = compact_json.dumps


class Signer:
    """Signs RFC 9068 access tokens with one private key."""

    def __init__(self, alg: str, kid: str, private_key: Any) -> None:
        self.alg = alg
        self.kid = kid
        # RFC 9068 section 2.1: typ "at+jwt" so that an access token cannot pass for an ID token.
        header = {"alg": alg, "kid": kid, "typ": "at+jwt"}
        self._header_b64 = b64url(_dumps(header)) + b"."
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
                # RFC 7518 section 3.4: the signature is R || S, each left-padded to the curve size.
                r, s = decode_dss_signature(key.sign(data, ecdsa))
                return r.to_bytes(size, "big") + s.to_bytes(size, "big")

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
