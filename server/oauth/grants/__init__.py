"""The grant registry: one module per grant, registered by its ``grant_type`` string.

A new grant is a module here with a class that has ``grant_type``, ``validate`` and ``issue``
(``base.Grant``), taking what it uses in its constructor, and one line in ``build_grants``.
"""

from __future__ import annotations

from collections.abc import Callable

from tessera.server.oauth.families import RefreshFamilies
from tessera.server.oauth.grants.authorization_code import AuthorizationCodeGrant
from tessera.server.oauth.grants.base import Grant, TokenRequest
from tessera.server.oauth.grants.client_credentials import ClientCredentialsGrant
from tessera.server.oauth.grants.password import PasswordGrant
from tessera.server.oauth.grants.refresh_token import RefreshTokenGrant
from tessera.server.oauth.grants.token_exchange import TokenExchangeGrant
from tessera.server.oauth.introspection import AccessTokenReader
from tessera.server.oauth.password_check import PasswordCheck
from tessera.server.oauth.tokens import AccessTokenIssuer
from tessera.server.store.sign_in import SignInStore


def build_grants(
    *,
    tokens: AccessTokenIssuer,
    families: RefreshFamilies,
    passwords: PasswordCheck,
    codes: SignInStore,
    clock: Callable[[], float],
    reader: AccessTokenReader,
) -> dict[str, Grant]:
    grants: list[Grant] = [
        AuthorizationCodeGrant(codes, families, tokens, clock),
        ClientCredentialsGrant(tokens),
        PasswordGrant(passwords, families, tokens, clock),
        RefreshTokenGrant(families, tokens),
        TokenExchangeGrant(reader, families, tokens, clock),
    ]
    return {grant.grant_type: grant for grant in grants}


__all__ = ["Grant", "TokenRequest", "build_grants"]
