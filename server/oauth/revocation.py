"""RFC 7009 token revocation.

- A refresh token, spent or live, revokes its whole family: every token of that login, the newest
  included, and, through ``sid``, the family's access tokens as introspection reports them.
- An access token that came from a family (it carries ``sid``) revokes that family the same way.
  An access token without one (client_credentials, or a login without refresh tokens) cannot be
  revoked: it is a self-contained JWT that lives at most TESSERA_ACCESS_TOKEN_TTL; that is
  ``unsupported_token_type`` (section 2.2.1), said only to the client the token was issued to.
- Unknown, malformed, expired or forged tokens, and tokens of another client, answer 200 and
  change nothing (section 2.1: a client may revoke only its own tokens; section 2.2: an invalid
  token is no error).
"""

from __future__ import annotations

from tessera.server.oauth.client_assertions import ASSERTION_ALGORITHMS
from tessera.server.oauth.client_auth import AUTH_METHODS
from tessera.server.oauth.errors import UnsupportedTokenType
from tessera.server.oauth.introspection import AccessTokenReader, session_of
from tessera.server.oauth.families import RefreshFamilies, parse_refresh_token
from tessera.server.store import Client


class Revocation:
    def __init__(self, families: RefreshFamilies, reader: AccessTokenReader) -> None:
        self._families = families
        self._reader = reader

    async def revoke(self, client: Client, token: str) -> None:
        refresh = parse_refresh_token(token)
        if refresh is not None:
            await self._families.revoke(refresh, client.client_id)
            return
        claims = await self._reader.read(token)
        if claims is None or claims["client_id"] != client.client_id:
            return
        session = session_of(claims)
        if session is None:
            raise UnsupportedTokenType("this access token is not revocable; it expires on its own")
        await self._families.revoke_session(session, client.client_id)


def endpoint_metadata(issuer: str) -> dict[str, object]:
    """RFC 8414 section 2: where the revocation and introspection endpoints are, and how to call them."""
    return {
        "revocation_endpoint": f"{issuer}/revoke",
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "introspection_endpoint": f"{issuer}/introspect",
        # Introspection answers confidential clients only (tessera.server.oauth.introspection).
        "introspection_endpoint_auth_methods_supported": [m for m in AUTH_METHODS if m != "none"],
        "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
    }
