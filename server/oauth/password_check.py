"""A username and password, checked one way for the password grant and the login page.

Every failure (unknown user, wrong password, disabled user) is the same ``invalid_grant`` after
the same argon2 work, so neither the answer nor its timing says whether a username exists. Each
attempt is charged to the login throttle (per username and address) before the user is even
looked up, so a throttled attempt costs one query and never reaches argon2.
"""

from __future__ import annotations

from tessera.server.oauth.errors import InvalidGrant
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.oauth.throttle import LoginThrottle
from tessera.server.ops import events
from tessera.server.store import User, UserStore

MAX_PASSWORD_LENGTH = 1024
MAX_USERNAME_LENGTH = 256


class PasswordCheck:
    def __init__(self, users: UserStore, hasher: SecretHasher, throttle: LoginThrottle) -> None:
        self._users = users
        self._hasher = hasher
        self._throttle = throttle

    async def check(self, username: str, password: str, remote: str | None) -> User:
        if len(password) > MAX_PASSWORD_LENGTH or len(username) > MAX_USERNAME_LENGTH:
            raise InvalidGrant("invalid username or password")

        async def verify() -> User | None:
            found = await self._users.by_username(username)
            matched = await self._hasher.verify(found.password_hash if found else None, password)
            return found if found is not None and matched and not found.disabled else None

        self._hasher.refuse_if_full()
        attempt = self._throttle.attempt("user", username, remote)
        user = await self._throttle.attempt_once(attempt, password, verify, succeeded=lambda found: found is not None)
        if user is None:
            events.login_failed("user", username, remote)
            raise InvalidGrant("invalid username or password")
        if self._hasher.needs_rehash(user.password_hash):
            await self._users.rehash_password(user.user_id, user.password_hash, await self._hasher.hash(password))
        return user
