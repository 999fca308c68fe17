"""RFC 6749 section 4.4: the client acts on its own behalf; no refresh token (section 4.4.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera.server.oauth.grants.base import TokenRequest, granted_scopes, parse_scope, resolve_audience, token_response
from tessera.server.oauth.tokens import AccessTokenIssuer


@dataclass(frozen=True, slots=True)
class ClientCredentialsRequest:
    scopes: tuple[str, ...]
    audience: str


class ClientCredentialsGrant:
    grant_type = "client_credentials"

    def __init__(self, tokens: AccessTokenIssuer) -> None:
        self._tokens = tokens

    async def validate(self, request: TokenRequest) -> ClientCredentialsRequest:
        scopes = granted_scopes(parse_scope(request.form.get("scope")), request.client.scopes)
        return ClientCredentialsRequest(scopes, resolve_audience(request.form, request.client))

    async def issue(self, request: TokenRequest, validated: ClientCredentialsRequest) -> dict[str, Any]:
        client = request.client
        access = await self._tokens.issue(
            subject=client.client_id,
            client_id=client.client_id,
            audience=validated.audience,
            scopes=validated.scopes,
        )
        return token_response(access, validated.scopes)
