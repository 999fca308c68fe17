"""RFC 6749 section 4.3: resource owner password credentials.

RFC 9700 section 2.4: it MUST NOT be used; it stays for first-party clients that already have it
(new apps sign people in with the authorization code flow). The username and password are checked
exactly as the login page checks them (``tessera.server.oauth.password_check``).

The user is read before argon2 runs, so ``issue`` hands the family the rows that were checked: it
is made only if the user is still enabled with that password and the client still exists with that
secret (``FamilyStore.create``), so a ``users disable`` or ``set-password``, a deletion or a secret
rotation that lands while the password is checked stops the sign-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.server.oauth.errors import InvalidRequest
from tessera.server.oauth.families import RefreshFamilies
from tessera.server.oauth.grants.base import TokenRequest, granted_scopes, parse_scope, resolve_audience, token_response
from tessera.server.oauth.password_check import PasswordCheck
from tessera.server.oauth.tokens import AccessTokenIssuer
from tessera.server.store import User


@dataclass(frozen=True, slots=True)
class PasswordRequest:
    user: User
    scopes: tuple[str, ...]
    audience: str


class PasswordGrant:
    grant_type = "password"

    def __init__(
        self, passwords: PasswordCheck, families: RefreshFamilies, tokens: AccessTokenIssuer, clock: Callable[[], float]
    ) -> None:
        self._passwords = passwords
        self._families = families
        self._tokens = tokens
        self._clock = clock

    async def validate(self, request: TokenRequest) -> PasswordRequest:
        form = request.form
        username, password = form.get("username"), form.get("password")
        if username is None or password is None:
            raise InvalidRequest("username and password are required")
        scopes = granted_scopes(parse_scope(form.get("scope")), request.client.scopes)
        audience = resolve_audience(form, request.client)
        user = await self._passwords.check(username, password, request.remote)
        return PasswordRequest(user, scopes, audience)
    async def issue(self, request: TokenRequest, validated: PasswordRequest) -> dict[str, Any]:
        auth_time = int(self._clock())
        refresh_token = None
        session_id = None
        if "refresh_token" in request.client.grant_types:
            refresh_token, session_id = await self._families.start(
                client=request.client,
                user=validated.user,
                scopes=validated.scopes,
                audience=validated.audience,
                auth_time=auth_time,
            )
        access = await self._tokens.issue(
            subject=str(validated.user.user_id),
            client_id=request.client.client_id,
            audience=validated.audience,
            scopes=validated.scopes,
            auth_time=auth_time,
            session_id=session_id,
        )
        return token_response(access, validated.scopes, refresh_token)
