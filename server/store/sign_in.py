"""Sign-in on PostgreSQL: the login page's sessions, remembered consents and authorization codes.

Secrets handed to a browser or a client (the session cookie, the code) are kept only as SHA-256
hashes: a copy of the table lets nobody sign in or redeem a code.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tessera.server.store.db import fetchrow_before_deadline, fetchval_before_deadline


@dataclass(frozen=True, slots=True)
class LoginSession:
    session_id: uuid.UUID
    user_id: uuid.UUID
    username: str
    auth_time: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    client_id: str
    user_id: uuid.UUID
    session_id: uuid.UUID
    redirect_uri: str | None
    code_challenge: str
    scopes: tuple[str, ...]
    audience: str
    nonce: str | None
    auth_time: datetime
    expires_at: datetime
    redeemed_at: datetime | None
    family_id: uuid.UUID | None


# A code is redeemed only while the sign-in it came from lasts: after /logout it is worth nothing.
_SESSION_LIVE = (
    " AND EXISTS (SELECT 1 FROM login_sessions s WHERE s.session_id = c.session_id AND s.ended_at IS NULL)"
)


# A code's redemption: the checks a token request makes of it, the spending and the family, one
# statement and one round trip. $6..$9 are the family's (all NULL for a client without refresh tokens).
_REDEEM_SQL = (
    "WITH code AS ("
    " UPDATE authorization_codes c SET redeemed_at = $2, family_id = $6::uuid"
    "   FROM users u"
    "  WHERE c.code_hash = $1 AND c.redeemed_at IS NULL AND c.expires_at > $2"
    "    AND c.client_id = $3 AND c.redirect_uri IS NOT DISTINCT FROM $4::text AND c.code_challenge = $5"
    "    AND u.user_id = c.user_id AND NOT u.disabled" + _SESSION_LIVE +
    "  RETURNING c.client_id, c.user_id, c.session_id, c.scopes, c.audience, c.nonce, c.auth_time),"
    " family AS ("
    " INSERT INTO refresh_families (family_id, client_id, user_id, scopes, audience, auth_time,"
    "  created_at, expires_at, generation, current_hash, last_rotated_at, idle_expires_at, login_session_id)"
    " SELECT $6::uuid, client_id, user_id, scopes, audience, auth_time, $2, $7::timestamptz, 0, $8::bytea, $2,"
    "  $9::timestamptz, session_id FROM code WHERE $6::uuid IS NOT NULL"
    " RETURNING 1)"
    " SELECT user_id, session_id, scopes, audience, nonce, auth_time, (SELECT count(*) FROM family) AS families,"
    "  tessera_before_deadline($10) AS in_time FROM code"
)


@dataclass(frozen=True, slots=True)
class RedeemedCode:
    """What a spent code said: who signed in, for which scopes and audience, and when."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    scopes: tuple[str, ...]
    audience: str
    nonce: str | None
    auth_time: datetime


class SignInStore:
    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    # --- the login page's sessions ----------------------------------------------------------------

    async def start_session(
        self, *, session_id: uuid.UUID, cookie_hash: bytes, user_id: uuid.UUID, password_changed_at: datetime,
        auth_time: datetime, expires_at: datetime,
    ) -> bool:
        """A session for a sign-in that just checked the password as last set at
        ``password_changed_at``; False (nothing written) if the user was disabled, deleted or given
        another password meanwhile (the same rule as ``FamilyStore.create``)."""
        started = await fetchval_before_deadline(
            self._db,
            "WITH started AS ("
            " INSERT INTO login_sessions (session_id, cookie_hash, user_id, auth_time, expires_at)"
            " SELECT $1, $2, u.user_id, $4, $5 FROM users AS u"
            "  WHERE u.user_id = $3 AND NOT u.disabled AND u.password_changed_at = $6"
            "  FOR SHARE OF u"
            " RETURNING 1)"
            " SELECT tessera_before_deadline($7) FROM started",
            session_id, cookie_hash, user_id, auth_time, expires_at, password_changed_at,
        )
        return started is True

    async def session(self, cookie_hash: bytes, now: datetime) -> LoginSession | None:
        """The live session the cookie names, of a user still enabled; None otherwise."""
        row = await self._db.fetchrow(
            "SELECT s.session_id, s.user_id, u.username, s.auth_time, s.expires_at"
            "  FROM login_sessions s JOIN users u USING (user_id)"
            " WHERE s.cookie_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2 AND NOT u.disabled",
            cookie_hash, now,
        )
        return LoginSession(**dict(row)) if row else None

    async def end_session(self, session_id: uuid.UUID, now: datetime, reason: str) -> int:
        """End the session and revoke every refresh-token family made from it, in one statement;
        returns how many families were revoked."""
        revoked = await fetchval_before_deadline(
            self._db,
            "WITH ended AS ("
            "  UPDATE login_sessions SET ended_at = $2 WHERE session_id = $1 AND ended_at IS NULL RETURNING session_id),"
            " revoked AS ("
            "  UPDATE refresh_families SET revoked_at = $2, revoked_reason = $3"
            "   WHERE login_session_id = $1 AND revoked_at IS NULL RETURNING 1)"
            " SELECT (SELECT count(*) FROM revoked), tessera_before_deadline($4)",
            session_id, now, reason,
        )
        return int(revoked)

    async def login_session_of(self, sid: str) -> uuid.UUID | None:
        """The sign-in session an ID token's ``sid`` belongs to: the ``sid`` is the refresh-token
        family (as in the access tokens issued with it), or, for a client without refresh tokens,
        the sign-in session itself."""
        try:
            named = uuid.UUID(sid)
        except ValueError:
            return None
        found = await self._db.fetchval(
            "SELECT coalesce((SELECT login_session_id FROM refresh_families WHERE family_id = $1),"
            " (SELECT session_id FROM login_sessions WHERE session_id = $1))",
            named,
        )
        return found if isinstance(found, uuid.UUID) else None

    # --- consents ---------------------------------------------------------------------------------

    async def consented(self, user_id: uuid.UUID, client_id: str, scopes: Sequence[str]) -> bool:
        """True if the user already allowed this client these scopes (or more)."""
        found = await self._db.fetchval(
            "SELECT scopes @> $3::text[] FROM consents WHERE user_id = $1 AND client_id = $2",
            user_id, client_id, list(scopes),
        )
        return found is True

    async def remember_consent(self, user_id: uuid.UUID, client_id: str, scopes: Sequence[str], now: datetime) -> None:
        await self._db.execute(
            "INSERT INTO consents (user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (user_id, client_id) DO UPDATE"
            "   SET scopes = ARRAY(SELECT DISTINCT unnest(consents.scopes || EXCLUDED.scopes) ORDER BY 1),"
            "       granted_at = EXCLUDED.granted_at",
            user_id, client_id, sorted(set(scopes)), now,
        )

    # --- authorization codes ----------------------------------------------------------------------

    async def create_code(
        self, *, code_hash: bytes, client_id: str, user_id: uuid.UUID, session_id: uuid.UUID,
        redirect_uri: str | None, code_challenge: str, scopes: Sequence[str], audience: str, nonce: str | None,
        auth_time: datetime, expires_at: datetime,
    ) -> None:
        await fetchval_before_deadline(
            self._db,
            "WITH created AS ("
            " INSERT INTO authorization_codes (code_hash, client_id, user_id, session_id, redirect_uri,"
            " code_challenge, scopes, audience, nonce, auth_time, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING 1)"
            " SELECT tessera_before_deadline($12) FROM created",
            code_hash, client_id, user_id, session_id, redirect_uri, code_challenge, list(scopes), audience, nonce,
            auth_time, expires_at,
        )

    async def code(self, code_hash: bytes) -> AuthorizationCode | None:
        row = await self._db.fetchrow(
            "SELECT client_id, user_id, session_id, redirect_uri, code_challenge, scopes, audience, nonce,"
            " auth_time, expires_at, redeemed_at, family_id FROM authorization_codes WHERE code_hash = $1",
            code_hash,
        )
        if row is None:
            return None
        return AuthorizationCode(**{**dict(row), "scopes": tuple(row["scopes"])})

    async def redeem_code(
        self, *, code_hash: bytes, client_id: str, redirect_uri: str | None, code_challenge: str, now: datetime,
        family: NewFamily | None,
    ) -> RedeemedCode | None:
        """Spend the code and, when the client gets refresh tokens, start its family, in one statement
        (both or neither, before the request's deadline): only if the code is this client's, was
        asked for with this redirect URI and this challenge, has not expired nor been spent, its user
        is enabled and its sign-in has not ended. None otherwise, with nothing changed: ``code``
        says why."""
        row = await fetchrow_before_deadline(
            self._db, _REDEEM_SQL, code_hash, now, client_id, redirect_uri, code_challenge,
            family.family_id if family else None, family.expires_at if family else None,
            family.current_hash if family else None, family.idle_expires_at if family else None,
        )
        if row is None:
            return None
        return RedeemedCode(
            row["user_id"], row["session_id"], tuple(row["scopes"]), row["audience"], row["nonce"], row["auth_time"]
        )

    async def delete_expired(self, now: datetime, limit: int = 5000) -> int:
        """Codes past their lifetime and sessions that ended or expired (the janitor's work)."""
        codes = await self._db.fetchval(
            "WITH gone AS (DELETE FROM authorization_codes WHERE code_hash IN ("
            "  SELECT code_hash FROM authorization_codes WHERE expires_at < $1 - interval '1 day' LIMIT $2)"
            " RETURNING 1) SELECT count(*) FROM gone",
            now, limit,
        )
        sessions = await self._db.fetchval(
            "WITH gone AS (DELETE FROM login_sessions WHERE session_id IN ("
            "  SELECT session_id FROM login_sessions WHERE expires_at < $1 OR ended_at < $1 - interval '1 day' LIMIT $2)"
            " RETURNING 1) SELECT count(*) FROM gone",
            now, limit,
        )
        return int(codes) + int(sessions)


@dataclass(frozen=True, slots=True)
class NewFamily:
    """The refresh-token family a code's redemption starts (its first token made beforehand)."""

    family_id: uuid.UUID
    current_hash: bytes
    expires_at: datetime
    idle_expires_at: datetime
