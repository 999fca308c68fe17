"""RFC 7636: Proof Key for Code Exchange, S256 only (RFC 9700 section 2.1.1: ``plain`` is refused)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

# Section 4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
# A challenge is BASE64URL(SHA-256(verifier)) without padding: 43 characters.
CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def s256(verifier: str) -> str:
    """Section 4.2: the S256 challenge of ``verifier``."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def well_formed_verifier(verifier: str) -> bool:
    return _VERIFIER.match(verifier) is not None


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Section 4.6."""
    return well_formed_verifier(verifier) and hmac.compare_digest(s256(verifier), challenge)
