"""OpenID Connect Core section 5.3: the UserInfo endpoint, with RFC 6750 bearer-token errors.

The token comes in the Authorization header only (a token in a query string ends up in logs,
RFC 6750 section 2.3 and RFC 9700 section 4.3.2). It must be a live access token of this server
with the ``openid`` scope; one whose sign-in was ended (its refresh-token family revoked, at
/logout or by reuse detection) no longer answers, even before it expires.
"""

from __future__ import annotations

import uuid
from typing import Any

from tessera.server.oauth.families import RefreshFamilies
from tessera.server.oauth.introspection import AccessTokenReader, session_of
from tessera.server.store import UserStore


class BearerError(Exception):
    """RFC 6750 section 3.1: ``invalid_request`` 400, ``invalid_token`` 401, ``insufficient_scope`` 403."""

    def __init__(self, error: str | None, status: int, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.status = status
        self.description = description

    def challenge(self) -> str:
        if self.error is None:  # no credentials at all: section 3.1 says no error code
            return 'Bearer realm="tessera"'
        return f'Bearer realm="tessera", error="{self.error}", error_description="{self.description}"'


class UserInfo:
    def __init__(self, reader: AccessTokenReader, families: RefreshFamilies, users: UserStore) -> None:
        self._reader = reader
        self._families = families
        self._users = users

    async def claims(self, authorization: str | None) -> dict[str, Any]:
        if authorization is None:
            raise BearerError(None, 401, "an access token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or " " in token.strip():
            raise BearerError("invalid_request", 400, "use the Authorization header with the Bearer scheme")
        claims = await self._reader.read(token.strip())
        if claims is None:
            raise BearerError("invalid_token", 401, "the access token is not valid")
        if "openid" not in str(claims.get("scope", "")).split():
            raise BearerError("insufficient_scope", 403, "the access token lacks the openid scope")
        family = session_of(claims)
        if family is not None and await self._families.session_revoked(family):
            raise BearerError("invalid_token", 401, "the access token is not valid")
        try:
            user_id = uuid.UUID(str(claims.get("sub")))
        except ValueError:  # a client's own token (client_credentials) names no user
            raise BearerError("invalid_token", 401, "the access token is not a user's") from None
        user = await self._users.get(user_id)
        if user is None or user.disabled:
            raise BearerError("invalid_token", 401, "the access token is not valid")
        return {"sub": str(user.user_id), "preferred_username": user.username}
