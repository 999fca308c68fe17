"""Sign-in on PostgreSQL: the login page's sessions, remembered consents and authorization codes.

Secrets handed to a browser or a client (the session cookie, the code) are kept only as SHA-256
hashes: a copy of the table lets nobody sign in or redeem a code.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from tessera.server.store.batching import StatementBatcher
from tessera.server.store.db import (
    fetchrow_before_deadline,
    fetchval_before_deadline,
    fetchval_committed_locally,
    request_gives_up,
)


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
    # Redeemed, but the request that redeemed it was answered with an error (migration 0017).
    unanswered: bool = False


# A code's redemption: the checks a token request makes of it, the spending and the family, one
# statement and one round trip for every code redeemed at the same moment (group commit,
# tessera.server.store.batching; the rule is migration 0015's, where a code is redeemed only while
# the sign-in it came from lasts: after /logout it is worth nothing). A batch gives up on a locked
# code past its lock_timeout; a row sent alone waits for its lock.
_BATCH_REDEEM_SQL = "SELECT * FROM tessera_redeem_codes_before($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_WAITING_REDEEM_SQL = "SELECT * FROM tessera_redeem_codes_waiting_before($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


@dataclass(frozen=True, slots=True)
class _Redemption:
    """One redemption's inputs, as the functions of migration 0015 take them."""

    code_hash: bytes
    now: datetime
    client_id: str
    redirect_uri: str | None
    code_challenge: str
    family: NewFamily | None


def _redeem_args(rows: Sequence[_Redemption], deadlines: Sequence[datetime | None]) -> tuple[list[Any], ...]:
    return (
        [r.code_hash for r in rows], [r.now for r in rows], [r.client_id for r in rows],
        [r.redirect_uri for r in rows], [r.code_challenge for r in rows],
        [r.family.family_id if r.family else None for r in rows],
        [r.family.expires_at if r.family else None for r in rows],
        [r.family.current_hash if r.family else None for r in rows],
        [r.family.idle_expires_at if r.family else None for r in rows],
        list(deadlines),
    )


class _Redemptions:
    """The redemption functions as a ``BatchStatement``: at most one row per code in a batch, so two
    copies of a code never share one (the later finds it spent: a replay)."""

    def key(self, row: _Redemption) -> Hashable:
        return row.code_hash

    async def many(
        self, connection: asyncpg.Connection, rows: Sequence[_Redemption], deadlines: Sequence[datetime | None]
    ) -> list[asyncpg.Record | None]:
        records = await connection.fetch(_BATCH_REDEEM_SQL, *_redeem_args(rows, deadlines))
        found = {bytes(record["code_hash"]): record for record in records}
        return [found.get(row.code_hash) for row in rows]

    async def one(
        self, connection: asyncpg.Connection, row: _Redemption, deadline: datetime | None
    ) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await connection.fetchrow(
            _WAITING_REDEEM_SQL, *_redeem_args([row], [deadline])
        )
        return record


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
        # On a pool, concurrent redemptions share statements and commits (group commit); on a single
        # connection, in a caller's transaction, each runs alone.
        self._redemptions: StatementBatcher[_Redemption, asyncpg.Record | None] = StatementBatcher(db, _Redemptions())

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
            " auth_time, expires_at, redeemed_at, family_id, unanswered FROM authorization_codes WHERE code_hash = $1",
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
        redemption = _Redemption(code_hash, now, client_id, redirect_uri, code_challenge, family)
        row = await self._redemptions.submit(redemption, request_gives_up())
        if row is None:
            return None
        return RedeemedCode(
            row["user_id"], row["session_id"], tuple(row["scopes"]), row["audience"], row["nonce"], row["auth_time"]
        )

    async def mark_unanswered(self, code_hash: bytes, family_id: uuid.UUID) -> bool:
        """Say that the redemption which started ``family_id`` was answered with an error, if it
        committed; True if it did (``fetchval_committed_locally``)."""
        marked = await fetchval_committed_locally(
            self._db,
            "UPDATE authorization_codes SET unanswered = true"
            " WHERE code_hash = $1 AND family_id = $2 AND redeemed_at IS NOT NULL RETURNING true",
            code_hash, family_id,
        )
        return bool(marked)

    async def redeem_again(
        self, *, code_hash: bytes, unanswered_family: uuid.UUID, client_id: str, redirect_uri: str | None,
        code_challenge: str, now: datetime, family: NewFamily,
    ) -> RedeemedCode | None:
        """The retry of a redemption that was answered with an error: with the same bindings as the
        first (client, redirect URI, challenge, an enabled user, a sign-in not ended) and no later
        than five minutes past the code's lifetime, the family nobody received is revoked and
        ``family`` started in its place, in one statement, once. None if any of that fails."""
        row = await fetchrow_before_deadline(
            self._db,
            "WITH again AS ("
            "  UPDATE authorization_codes AS c SET family_id = $7, unanswered = false FROM users AS u"
            "   WHERE c.code_hash = $1 AND c.unanswered AND c.family_id = $2 AND c.client_id = $3"
            "     AND c.redirect_uri IS NOT DISTINCT FROM $4 AND c.code_challenge = $5"
            "     AND c.expires_at + interval '5 minutes' > $6"
            "     AND u.user_id = c.user_id AND NOT u.disabled"
            "     AND EXISTS (SELECT 1 FROM login_sessions AS s WHERE s.session_id = c.session_id AND s.ended_at IS NULL)"
            "  RETURNING c.client_id, c.user_id, c.session_id, c.scopes, c.audience, c.nonce, c.auth_time),"
            " unanswered AS ("
            "  UPDATE refresh_families SET revoked_at = $6, revoked_reason = 'redemption_unanswered'"
            "   WHERE family_id = $2 AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM again) RETURNING 1),"
            " started AS ("
            "  INSERT INTO refresh_families (family_id, client_id, user_id, scopes, audience, auth_time, created_at,"
            "                                expires_at, generation, current_hash, last_rotated_at, idle_expires_at,"
            "                                login_session_id)"
            "  SELECT $7, again.client_id, again.user_id, again.scopes, again.audience, again.auth_time, $6,"
            "         $8, 0, $9, $6, $10, again.session_id FROM again RETURNING 1)"
            " SELECT user_id, session_id, scopes, audience, nonce, auth_time FROM again"
            " WHERE tessera_before_deadline($11)",
            code_hash, unanswered_family, client_id, redirect_uri, code_challenge, now,
            family.family_id, family.expires_at, family.current_hash, family.idle_expires_at,
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
