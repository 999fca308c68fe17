"""RFC 7662 token introspection, and reading this server's own access tokens back.

Who may introspect what (RFC 7662 section 2.1 asks the server to decide, against token scanning):

- only confidential clients, authenticated with their secret (a public client proves nothing);
- a refresh token: only the client it was issued to; refresh tokens never leave their client;
- an access token: the client it was issued to, or a client that may itself request tokens for
  the token's audience (a resource server registered as a client with that audience).

Everything else, whether unknown, expired, revoked, forged or someone else's, is exactly
``{"active": false}``, so the answer says nothing about tokens a caller may not see.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

from keys.keyring import Keyring, Snapshot
from server.errors import InvalidClient
from server.refresh import RefreshFamilies, parse_refresh_token
from server.store import Client

INACTIVE: dict[str, Any] = {"active": False}
# Instances' clocks differ a little; a token issued by another one may look a few seconds early.
NBF_LEEWAY = 30


class AccessTokenReader:
    """Checks an access token the way a resource server would: signature against the published
    keys (active, next and retired), ``typ``, ``iss``, ``exp`` and ``nbf``, with this server's clock."""

    def __init__(self, keyring: Keyring, *, issuer: str, clock: Callable[[], float]) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._key_set = KeySet([])
        self._algorithms: list[str] = []

    def _keys(self) -> KeySet:
        snapshot = self._keyring.snapshot
        if snapshot is not self._snapshot:
            published = [k for k in snapshot.keys if k.state in ("next", "active", "retired")]
            self._key_set = KeySet.import_key_set({"keys": [k.public_jwk for k in published]})
            self._algorithms = sorted({k.alg for k in published})
            self._snapshot = snapshot
        return self._key_set

    def read(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid, unexpired access token issued by this server, else None."""
        key_set = self._keys()
        try:
            with warnings.catch_warnings():
                # joserfc flags "EdDSA" as deprecated by RFC 9864; the contract names it.
                warnings.simplefilter("ignore", SecurityWarning)
                decoded = jwt.decode(token, key_set, algorithms=self._algorithms)
        except (JoseError, ValueError):
            return None
        claims = dict(decoded.claims)
        now = self._clock()
        if decoded.header.get("typ") != "at+jwt" or claims.get("iss") != self._issuer:
            return None
        if not all(isinstance(claims.get(name), str) for name in ("sub", "aud", "client_id", "scope")):
            return None
        if not all(isinstance(claims.get(name), int) for name in ("exp", "iat", "nbf")):
            return None
        if claims["exp"] <= now or claims["nbf"] > now + NBF_LEEWAY:
            return None
        return claims


def session_of(claims: dict[str, Any]) -> uuid.UUID | None:
    """The refresh-token family an access token came from (its ``sid``), if any."""
    sid = claims.get("sid")
    if not isinstance(sid, str):
        return None
    try:
        return uuid.UUID(sid)
    except ValueError:
        return None


class Introspection:
    def __init__(self, families: RefreshFamilies, reader: AccessTokenReader) -> None:
        self._families = families
        self._reader = reader

    async def introspect(self, client: Client, token: str) -> dict[str, Any]:
        """RFC 7662 section 2.2: the token's state as ``client`` may see it."""
        if client.is_public:
            raise InvalidClient("introspection requires client authentication")
        refresh = parse_refresh_token(token)
        if refresh is not None:
            family = await self._families.current(refresh, client.client_id)
            if family is None:
                return INACTIVE
            return {
                "active": True,
                "scope": " ".join(family.scopes),
                "client_id": family.client_id,
                "sub": str(family.user_id),
                "aud": family.audience,
                "exp": int(family.token_expires_at.timestamp()),
                "iat": int(family.last_rotated_at.timestamp()),
                "token_type": "refresh_token",
            }
        claims = self._reader.read(token)
        if claims is None:
            return INACTIVE
        if claims["client_id"] != client.client_id and claims["aud"] not in client.audiences:
            return INACTIVE
        session = session_of(claims)
        if "sid" in claims and (session is None or await self._families.session_revoked(session)):
            return INACTIVE
        return {
            "active": True,
            "scope": claims["scope"],
            "client_id": claims["client_id"],
            "sub": claims["sub"],
            "aud": claims["aud"],
            "exp": claims["exp"],
            "iat": claims["iat"],
            "token_type": "access_token",
        }
