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

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from tessera.keys.keyring import Keyring, Snapshot
from tessera.keys.verifier import RFC9068_REQUIRED_CLAIMS, AccessTokenVerifier, FixedKeySet, InvalidToken
from tessera.server.oauth.errors import InvalidClient
from tessera.server.oauth.families import RefreshFamilies, parse_refresh_token
from tessera.server.store import Client

INACTIVE: dict[str, Any] = {"active": False}
# Instances' clocks differ a little; a token issued by another one may look a few seconds early.
NBF_LEEWAY = 30


class AccessTokenReader:
    """Checks an access token the way a resource server would, with the same core as
    :class:`keys.Verifier`, fed from this process's keyring instead of an HTTP JWKS cache: the keys
    this instance publishes (next, active, retired), ``typ``, ``iss``, ``exp`` by this server's
    clock (no leeway: the issuer decides) and ``nbf``/``iat`` with ``NBF_LEEWAY``. ``aud`` is left to
    the caller, which checks it against the client asking."""

    def __init__(self, keyring: Keyring, *, issuer: str, clock: Callable[[], float]) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._verifier: AccessTokenVerifier | None = None

    def _current_verifier(self) -> AccessTokenVerifier:
        snapshot = self._keyring.snapshot
        if self._verifier is None or snapshot is not self._snapshot:
            published = FixedKeySet(json.loads(snapshot.jwks_body))  # exactly the JWKS this instance serves
            self._verifier = AccessTokenVerifier(
                published,
                issuer=self._issuer,
                audience=None,
                algorithms=published.algorithms,
                leeway=NBF_LEEWAY,
                expiry_leeway=0,
                required_claims=(*RFC9068_REQUIRED_CLAIMS, "nbf", "scope"),
                clock=self._clock,
            )
            self._snapshot = snapshot
        return self._verifier

    async def read(self, token: str) -> Mapping[str, Any] | None:
        """The claims of a valid, unexpired access token issued by this server, else None."""
        try:
            return await self._current_verifier().verify(token)
        except InvalidToken:
            return None


def session_of(claims: Mapping[str, Any]) -> uuid.UUID | None:
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
        claims = await self._reader.read(token)
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
