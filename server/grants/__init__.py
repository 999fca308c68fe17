"""The grant registry: one module per grant, registered by its ``grant_type`` string."""

from __future__ import annotations

from server.grants.base import Grant, GrantServices, TokenRequest
from server.grants.client_credentials import ClientCredentialsGrant
from server.grants.password import PasswordGrant
from server.grants.refresh_token import RefreshTokenGrant


def default_grants() -> dict[str, Grant]:
    grants: list[Grant] = [ClientCredentialsGrant(), PasswordGrant(), RefreshTokenGrant()]
    return {grant.grant_type: grant for grant in grants}


__all__ = ["Grant", "GrantServices", "TokenRequest", "default_grants"]
