"""Key material: generate signing keys and move them between JWK form and ``cryptography`` objects.

The ``kid`` is the RFC 7638 thumbprint of the public key, so it is stable and anyone holding the
JWK can recompute it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey

from tessera.keys.signer import Signer

RSA_BITS = 3072  # NIST SP 800-57: 128-bit security, matching P-256.

_CURVES = {"ES256": "P-256", "ES384": "P-384"}


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_jwk_json: bytes  # the whole private JWK; only ever stored sealed


def _joserfc_key(alg: str) -> ECKey | OKPKey | RSAKey:
    if alg in _CURVES:
        return ECKey.generate_key(_CURVES[alg], private=True)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True)
    if alg in ("RS256", "PS256"):
        return RSAKey.generate_key(RSA_BITS, private=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def generate(alg: str) -> KeyMaterial:
    """A new key pair for ``alg`` (RSA generation takes about a second: call it off the event loop)."""
    key = _joserfc_key(alg)
    kid = key.thumbprint()
    public = dict(key.as_dict(private=False))
    public.update({"kid": kid, "alg": alg, "use": "sig"})
    private = dict(key.as_dict(private=True))
    private.update({"kid": kid, "alg": alg})
    return KeyMaterial(kid, alg, public, json.dumps(private, separators=(",", ":")).encode())


def signer_from_private_jwk(alg: str, kid: str, private_jwk_json: bytes) -> Signer:
    data = json.loads(private_jwk_json)
    key: ECKey | OKPKey | RSAKey
    if data["kty"] == "EC":
        key = ECKey.import_key(data)
    elif data["kty"] == "OKP":
        key = OKPKey.import_key(data)
    elif data["kty"] == "RSA":
        key = RSAKey.import_key(data)
    else:
        raise ValueError(f"unsupported key type {data['kty']!r}")
    if key.thumbprint() != kid:
        raise ValueError(f"key {kid} does not match its thumbprint")
    return Signer(alg, kid, key.private_key)
