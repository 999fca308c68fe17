"""RFC 6749 section 6: refreshing an access token, with rotation (RFC 9700 section 4.14.2).

``validate`` only reads the request; ``issue`` rotates the token in one conditional UPDATE (sent
together with concurrent rotations of other families, ``tessera.server.store.rotation_batch``) and signs
the access token, and an ID token when the scope has ``openid``. Everything the tokens say (user,
audience, ``auth_time``, ``sid``) comes from the family, fixed at login.
"""

from __future__ import annotations

from typing import Any

from tessera.server.oauth.errors import InvalidGrant, InvalidRequest
from tessera.server.oauth.grants.base import TokenRequest, parse_scope, resolve_audience, token_response
from tessera.server.oauth.families import RefreshFamilies, RefreshRequest, parse_refresh_token
from tessera.server.oauth.tokens import AccessTokenIssuer


class RefreshTokenGrant:
    grant_type = "refresh_token"

    def __init__(self, families: RefreshFamilies, tokens: AccessTokenIssuer) -> None:
        self._families = families
        self._tokens = tokens

    async def validate(self, request: TokenRequest) -> RefreshRequest:
        raw = request.form.get("refresh_token")
        if raw is None:
            raise InvalidRequest("refresh_token is required")
        token = parse_refresh_token(raw)
        if token is None:
            raise InvalidGrant("invalid refresh token")
        scopes = parse_scope(request.form.get("scope"))
        wants_audience = "resource" in request.form or "audience" in request.form
        audience = resolve_audience(request.form, request.client) if wants_audience else None
        return RefreshRequest(token, request.client.client_id, scopes, audience, request.remote)

    async def issue(self, request: TokenRequest, validated: RefreshRequest) -> dict[str, Any]:
        refreshed = await self._families.refresh(validated)
        family = refreshed.family
        # Section 6: the new access token may have a narrower scope; the family keeps the original.
        scopes = validated.scopes if validated.scopes is not None else family.scopes
        access = await self._tokens.issue(
            subject=str(family.user_id),
            client_id=family.client_id,
            audience=family.audience,
            scopes=scopes,
            auth_time=int(family.auth_time.timestamp()),
            session_id=str(family.family_id),
        )
        body = token_response(access, scopes, refreshed.refresh_token)
        if "openid" in scopes:
            # OpenID Connect Core section 12.2: a new ID token about the same sign-in (the same
            # sub, aud, sid and auth_time), issued now, bound to the new access token, and without
            # the nonce, which belonged to the authentication request.
            body["id_token"] = await self._tokens.issue_id_token(
                subject=str(family.user_id),
                client_id=family.client_id,
                auth_time=int(family.auth_time.timestamp()),
                session_id=str(family.family_id),
                nonce=None,
                access_token=access.token,
            )
        return body
