"""Tessera's keys: the signing-key lifecycle used by the server, and the offline verifier
that resource servers import (``from tessera.keys import Verifier, InvalidToken``).

Nothing in this package imports ``server`` or asyncpg.
"""

from .jwks_cache import CachePolicy, JWKSCache
from .verifier import (
    AccessTokenClaims,
    BadSignature,
    Expired,
    InsufficientScope,
    InvalidClaim,
    InvalidToken,
    InvalidTokenType,
    JWKSUnavailable,
    KeyAlgorithmMismatch,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
    UnsupportedHeader,
    Verifier,
    WrongAudience,
    WrongIssuer,
)

__all__ = [
    "AccessTokenClaims",
    "BadSignature",
    "CachePolicy",
    "Expired",
    "InsufficientScope",
    "InvalidClaim",
    "InvalidToken",
    "InvalidTokenType",
    "JWKSCache",
    "JWKSUnavailable",
    "KeyAlgorithmMismatch",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "UnknownKey",
    "UnsupportedAlgorithm",
    "UnsupportedHeader",
    "Verifier",
    "WrongAudience",
    "WrongIssuer",
]
