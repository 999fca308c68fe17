"""Resource owners (users) for the password grant.

Usernames are kept in Unicode Normalization Form C (``canonical_username``): ``create`` stores
that form and ``by_username`` (the login's lookup) looks it up, so ``josé`` typed as one code
point or as ``e`` plus a combining accent is one user, not two; the CLI hands the other methods
names in that form. A new username must also be one someone can type and read back
(``check_new_username``): no leading or trailing space, no control, format or unassigned
characters, which would make users that look alike and are not.
"""

from __future__ import annotations

import contextlib
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import asyncpg

from tessera.server.ops import events
from tessera.server.store.families import FamilyStore


@dataclass(frozen=True, slots=True)
class User:
    user_id: uuid.UUID
    username: str
    password_hash: str
    disabled: bool
    created_at: datetime
    # When the password was last set: its version, which a rehash to new argon2 parameters keeps.
    # A sign-in makes its family only while it is still the one it checked (FamilyStore.create).
    password_changed_at: datetime

    def as_public_dict(self) -> dict[str, object]:
        return {
            "user_id": str(self.user_id),
            "username": self.username,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
        }


_COLUMNS = "user_id, username, password_hash, disabled, created_at, password_changed_at"
MAX_USERNAME_LENGTH = 256  # the column's CHECK (migration 0001)


class InvalidUsername(ValueError):
    """A username that may not be created; the message says why."""


def canonical_username(raw: str) -> str:
    """The form a username is stored, looked up and throttled under: NFC (Unicode UAX #15)."""
    return raw if unicodedata.is_normalized("NFC", raw) else unicodedata.normalize("NFC", raw)


def check_new_username(raw: str) -> str:
    """The canonical form of a username about to be created, or ``InvalidUsername``."""
    username = canonical_username(raw)
    if not 1 <= len(username) <= MAX_USERNAME_LENGTH:
        raise InvalidUsername(f"1-{MAX_USERNAME_LENGTH} characters")
    if username != username.strip():
        raise InvalidUsername("no leading or trailing space")
    # Cc controls, Cf format (zero-width and bidi marks), Cs, Co, Cn; Zl and Zp break lines.
    if any(unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp") for ch in username):
        raise InvalidUsername("no control, format or line-breaking characters")
    return username


def _user(row: asyncpg.Record) -> User:
    return User(
        row["user_id"], row["username"], row["password_hash"], row["disabled"], row["created_at"],
        row["password_changed_at"],
    )


class UserExists(Exception):
    pass


class UserStore:
    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    async def by_username(self, username: str) -> User | None:
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM users WHERE username = $1", canonical_username(username)
        )
        return _user(row) if row else None

    async def get(self, user_id: uuid.UUID) -> User | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE user_id = $1", user_id)
        return _user(row) if row else None

    async def create(self, username: str, password_hash: str) -> User:
        """``InvalidUsername`` for a name ``check_new_username`` refuses; ``UserExists`` for a taken one."""
        username = check_new_username(username)
        try:
            row = await self._db.fetchrow(
                f"INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING {_COLUMNS}",
                username,
                password_hash,
            )
        except asyncpg.UniqueViolationError:
            raise UserExists(username) from None
        assert row is not None
        return _user(row)

    async def list(self) -> list[User]:
        return [_user(r) for r in await self._db.fetch(f"SELECT {_COLUMNS} FROM users ORDER BY username")]

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as connection, connection.transaction():
                yield cast(asyncpg.Connection, connection)  # a pool's proxy stands in for its connection
        else:
            async with self._db.transaction():
                yield self._db

    async def set_password(self, username: str, password_hash: str) -> User | None:
        """A new password ends every session of the old one, in the same transaction."""
        async with self._transaction() as connection:
            row = await connection.fetchrow(
                f"UPDATE users SET password_hash = $2, password_changed_at = now() WHERE username = $1"
                f" RETURNING {_COLUMNS}",
                username,
                password_hash,
            )
            revoked = 0
            if row:
                revoked = await FamilyStore(connection).revoke_user_families(row["user_id"], "password_changed")
        events.families_revoked("password_changed", revoked)
        return _user(row) if row else None

    async def set_disabled(self, username: str, disabled: bool) -> User | None:
        """Disabling a user revokes their refresh-token families in the same transaction."""
        async with self._transaction() as connection:
            row = await connection.fetchrow(
                f"UPDATE users SET disabled = $2 WHERE username = $1 RETURNING {_COLUMNS}", username, disabled
            )
            revoked = 0
            if row and disabled:
                revoked = await FamilyStore(connection).revoke_user_families(row["user_id"], "user_disabled")
        events.families_revoked("user_disabled", revoked)
        return _user(row) if row else None

    async def delete(self, username: str) -> User | None:
        row = await self._db.fetchrow(f"DELETE FROM users WHERE username = $1 RETURNING {_COLUMNS}", username)
        return _user(row) if row else None

    async def rehash_password(self, user_id: uuid.UUID, old_hash: str, new_hash: str) -> None:
        """Upgrade a hash to new parameters, unless the password changed in the meantime. The
        password stays the same, and so does ``password_changed_at``."""
        await self._db.execute(
            "UPDATE users SET password_hash = $3 WHERE user_id = $1 AND password_hash = $2",
            user_id,
            old_hash,
            new_hash,
        )
