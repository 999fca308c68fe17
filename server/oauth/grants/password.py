"""RFC 6749 section 4.3: resource owner password credentials.

Every failure (unknown user, wrong password, disabled user) is the same ``invalid_grant`` after
the same argon2 work, so neither the answer nor its timing says whether a username exists. Each
attempt is charged to the login throttle (per username and address, and per address) before the
user is even looked up, so a throttled attempt costs one query and never reaches argon2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.server.oauth.errors import InvalidGrant, InvalidRequest
from tessera.server.oauth.families import RefreshFamilies
from tessera.server.oauth.grants.base import TokenRequest, granted_scopes, parse_scope, resolve_audience, token_response
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.oauth.throttle import LoginThrottle
from tessera.server.oauth.tokens import AccessTokenIssuer
from tessera.server.ops import events
from tessera.server.store import User, UserStore

MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class PasswordRequest:
    user: User
    scopes: tuple[str, ...]
    audience: str


class PasswordGrant:
    grant_type = "password"

    def __init__(
        self,
        users: UserStore,
        hasher: SecretHasher,
        throttle: LoginThrottle,
        families: RefreshFamilies,
        tokens: AccessTokenIssuer,
        clock: Callable[[], float],
    ) -> None:
        self._users = users
        self._hasher = hasher
        self._throttle = throttle
        self._families = families
        self._tokens = tokens
        self._clock = clock

    async def validate(self, request: TokenRequest) -> PasswordRequest:
        form = request.form
        username, password = form.get("username"), form.get("password")
        if username is None or password is None:
            raise InvalidRequest("username and password are required")
        if len(password) > MAX_PASSWORD_LENGTH or len(username) > 256:
            raise InvalidGrant("invalid username or password")
        scopes = granted_scopes(parse_scope(form.get("scope")), request.client.scopes)
        audience = resolve_audience(form, request.client)

        async def check() -> User | None:
            found = await self._users.by_username(username)
            matched = await self._hasher.verify(found.password_hash if found else None, password)
            return found if found is not None and matched and not found.disabled else None

        self._hasher.refuse_if_full()
        attempt = self._throttle.attempt("user", username, request.remote)
        user = await self._throttle.attempt_once(attempt, password, check, succeeded=lambda found: found is not None)
        if user is None:
            events.login_failed("user", username, request.remote)
            raise InvalidGrant("invalid username or password")
        if self._hasher.needs_rehash(user.password_hash):
            await self._users.rehash_password(user.user_id, user.password_hash, await self._hasher.hash(password))
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
