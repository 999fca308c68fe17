"""Refresh-token families: rotation, reuse detection and the retry grace (RFC 6749 section 6,
RFC 9700 section 4.14.2).

A refresh token is ``tsr_`` + base64url(family_id (16 bytes) || generation (uint32, big-endian) ||
secret (32 bytes)). Generation 0's secret is random; every successor is derived from its
predecessor with a server-side key K that all instances share (sealed under the KEK):

    secret[g+1] = HMAC-SHA256(K, "tessera-refresh/v1" || family_id || uint32(g+1) || secret[g])

The database keeps only SHA-256 of the current token. From any token a client may present, the
server can walk the chain forward to the current generation and compare hashes. That tells a
genuine spent token (reuse: revoke the family) from a forgery that merely names someone's family
(refuse, revoke nothing), and it recomputes the successor of the previous token for a retry
without ever having stored it. The walk is bounded (``MAX_CHAIN_WALK``).
"""

from __future__ import annotations

from tessera.keys.kek import KekRing

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from tessera.server.ops import events
from tessera.server.oauth.errors import InvalidGrant, InvalidScope, InvalidTarget
from tessera.server.oauth.unanswered import Settler
from tessera.server.store import Client, User
from tessera.server.store.families import Family, FamilyStore
from tessera.server.store.sign_in import NewFamily
from tessera.server.store.secrets import server_secret

PREFIX = "tsr_"
SECRET_NAME = "refresh-chain"
_LABEL = b"tessera-refresh/v1"
_PAYLOAD_LENGTH = 16 + 4 + 32
_TOKEN = re.compile(r"^tsr_[A-Za-z0-9_-]{70}$")
# A token further behind its family's current generation than this is not recognised (it is
# refused, nothing is revoked). At one refresh a minute that is 69 days of rotations; the walk
# costs about 1.6 microseconds per generation.
MAX_CHAIN_WALK = 100_000
# The generation column is a PostgreSQL integer; a token past this has no successor to store.
MAX_GENERATION = 2**31 - 2
# Longer walks run in a thread so a forged token naming a long-lived family cannot stall the loop.
_INLINE_WALK = 1_000


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A refresh token taken apart; only its SHA-256 is ever stored."""

    family_id: uuid.UUID
    generation: int
    secret: bytes

    @property
    def payload(self) -> bytes:
        return self.family_id.bytes + struct.pack(">I", self.generation) + self.secret

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.payload).digest()

    def __str__(self) -> str:
        return PREFIX + base64.urlsafe_b64encode(self.payload).rstrip(b"=").decode("ascii")

    def __repr__(self) -> str:  # never print the secret
        return f"RefreshToken(family_id={self.family_id}, generation={self.generation})"


def parse_refresh_token(text: str) -> RefreshToken | None:
    """The token's parts, or None unless ``text`` is exactly a token's canonical encoding."""
    if not _TOKEN.match(text):
        return None
    try:
        payload = base64.urlsafe_b64decode(text[len(PREFIX):] + "==")
    except (binascii.Error, ValueError):
        return None
    if len(payload) != _PAYLOAD_LENGTH:
        return None
    token = RefreshToken(uuid.UUID(bytes=payload[:16]), struct.unpack(">I", payload[16:20])[0], payload[20:])
    if token.generation > MAX_GENERATION:
        return None
    # Base64 has several spellings of the last character; only the canonical one is this token.
    return token if str(token) == text else None


class RefreshChain:
    """Derives successors with the server-side key; knows nothing of storage."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def first(self, family_id: uuid.UUID) -> RefreshToken:
        return RefreshToken(family_id, 0, secrets.token_bytes(32))

    def successor(self, token: RefreshToken) -> RefreshToken:
        generation = token.generation + 1
        message = _LABEL + token.family_id.bytes + struct.pack(">I", generation) + token.secret
        return RefreshToken(token.family_id, generation, hmac.digest(self._key, message, "sha256"))

    def walk(self, token: RefreshToken, generation: int, digest: bytes) -> RefreshToken | None:
        """The token of ``generation`` in ``token``'s chain if its SHA-256 is ``digest``, else None."""
        if not 0 <= generation - token.generation <= MAX_CHAIN_WALK:
            return None
        while token.generation < generation:
            token = self.successor(token)
        return token if hmac.compare_digest(token.digest, digest) else None

    async def walk_off_loop(self, token: RefreshToken, generation: int, digest: bytes) -> RefreshToken | None:
        if generation - token.generation <= _INLINE_WALK:
            return self.walk(token, generation, digest)
        return await asyncio.get_running_loop().run_in_executor(None, self.walk, token, generation, digest)


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """A refresh_token grant request, validated: the token, who presents it, what it asks for."""

    token: RefreshToken
    client_id: str
    scopes: tuple[str, ...] | None  # None: the family's whole scope
    audience: str | None  # None: the family's audience
    remote: str | None


@dataclass(frozen=True, slots=True)
class Refreshed:
    """A successful refresh: the refresh token to hand out and the family it belongs to."""

    refresh_token: str
    family: Family
    retry: bool


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class RefreshFamilies:
    """One family per login; the refresh_token grant, /revoke and /introspect go through here."""

    def __init__(
        self,
        store: FamilyStore,
        chain: RefreshChain,
        *,
        refresh_token_ttl: int,
        session_ttl: int,
        reuse_grace: int,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._chain = chain
        self._idle = timedelta(seconds=refresh_token_ttl)
        self._absolute = timedelta(seconds=session_ttl)
        self._grace = timedelta(seconds=reuse_grace)
        self._clock = clock
        self._settler = Settler()

    @classmethod
    async def open(
        cls, pool: asyncpg.Pool, kek: bytes | KekRing, *, refresh_token_ttl: int, session_ttl: int, reuse_grace: int,
        clock: Callable[[], float],
    ) -> RefreshFamilies:
        chain = RefreshChain(await server_secret(pool, kek, SECRET_NAME))
        return cls(
            FamilyStore(pool), chain, refresh_token_ttl=refresh_token_ttl, session_ttl=session_ttl,
            reuse_grace=reuse_grace, clock=clock,
        )

    def now(self) -> datetime:
        return _utc(self._clock())

    async def start(
        self, *, client: Client, user: User, scopes: Sequence[str], audience: str, auth_time: int
    ) -> tuple[str, str]:
        """A new family for a login; returns its first refresh token and the family id (``sid``).

        ``user`` and ``client`` are the rows the sign-in checked the password and the secret
        against: the family is made only if both still hold (``FamilyStore.create``)."""
        now = self.now()
        token = self._chain.first(uuid.uuid4())
        created = await self._store.create(
            family_id=token.family_id,
            client_id=client.client_id,
            user_id=user.user_id,
            scopes=scopes,
            audience=audience,
            auth_time=_utc(auth_time),
            now=now,
            expires_at=now + self._absolute,
            idle_expires_at=now + self._idle,
            current_hash=token.digest,
            password_changed_at=user.password_changed_at,
            secret_changed_at=client.secret_changed_at,
        )
        if not created:
            # Disabled, deleted or given another password or secret while the sign-in was checked.
            raise InvalidGrant("invalid username or password")
        return str(token), str(token.family_id)

    def prepare_family(self, now: datetime) -> tuple[str, NewFamily]:
        """A new family's first refresh token and the row to start it with, for a grant that writes
        the family in its own statement (the authorization code's redemption)."""
        token = self._chain.first(uuid.uuid4())
        return str(token), NewFamily(token.family_id, token.digest, now + self._absolute, now + self._idle)

    async def revoke_for_code_replay(self, family_id: uuid.UUID, presented_by: str, remote: str | None) -> None:
        """RFC 6749 section 4.1.2: a code presented again revokes what its first redemption issued."""
        if await self._store.revoke_for_theft(
            family_id, kind="code_replay", presented_by=presented_by, remote=remote, now=self.now()
        ):
            events.families_revoked("code_replay", 1)

    async def refresh(self, ask: RefreshRequest) -> Refreshed:
        """RFC 6749 section 6. Rotate, answer a retry, or refuse; refusals spend nothing."""
        now = self.now()
        presented = ask.token
        successor = self._chain.successor(presented)
        try:
            rotated = await self._store.rotate(
                family_id=presented.family_id,
                generation=presented.generation,
                current_hash=presented.digest,
                client_id=ask.client_id,
                successor_hash=successor.digest,
                now=now,
                idle_expires_at=now + self._idle,
                scopes=ask.scopes,
                audience=ask.audience,
            )
        except BaseException:
            # The request fails (the database away, a timeout, the request's deadline), but the
            # rotation may have committed all the same: its acknowledgement is what was lost. Find
            # out, and if it did, let the retry have its token (CONTRACT.md: an error answer
            # changes nothing, now or later).
            self._settle_unanswered(successor, ask.client_id)
            raise
        if rotated is not None:
            events.refresh_rotated(ask.client_id)
            return Refreshed(str(successor), rotated, retry=False)
        return await self._not_rotated(ask, now)

    async def _not_rotated(self, ask: RefreshRequest, now: datetime) -> Refreshed:
        """Why the rotation matched nothing, read after it (so a concurrent winner is visible)."""
        presented, client_id, remote = ask.token, ask.client_id, ask.remote
        family = await self._store.get(presented.family_id, now, scopes=ask.scopes, audience=ask.audience)
        current = await self._current_token(presented, family)
        if family is None or current is None:
            # Unknown family, or a token that is not of its chain: a forgery revokes nothing.
            raise InvalidGrant("invalid refresh token")
        if family.client_id != client_id:
            # A genuine token in the hands of another client has been stolen from its own.
            if family.live:
                await self._revoke_for_theft(family, "refresh_wrong_client", client_id, remote, now)
            raise InvalidGrant("invalid refresh token")
        if not family.live:
            raise InvalidGrant("refresh token expired or revoked")
        if presented.generation == family.generation or self._is_retry(presented, family, now):
            # Either the current token was refused for what the request asked, or this is a retry of
            # the previous token: say which limit was crossed, or answer the same successor.
            _explain_refusal(family)
            if presented.generation == family.generation:
                raise InvalidGrant("invalid refresh token")
            events.refresh_retry_answered(client_id)
            return Refreshed(str(current), family, retry=True)
        await self._revoke_for_theft(family, "refresh_reuse", client_id, remote, now)
        raise InvalidGrant("refresh token reuse detected; the session is revoked")

    def _is_retry(self, presented: RefreshToken, family: Family, now: datetime) -> bool:
        """FAPI 2.0's lost response: the token just before the current one, within the grace, or
        whenever the rotation that made the current one was answered with an error.

        The current token cannot have been used yet, or the family would be a generation further
        and the presented token two behind."""
        return presented.generation == family.generation - 1 and (
            family.unanswered_generation == family.generation
            or (self._grace > timedelta(0) and now - family.last_rotated_at <= self._grace)
        )

    def _settle_unanswered(self, successor: RefreshToken, client_id: str) -> None:
        """In the background: mark the family if the failed request's rotation committed."""
        self._settler.settle(
            lambda: self._store.mark_unanswered(successor.family_id, successor.generation, successor.digest),
            lambda: events.rotation_unanswered(
                family_id=str(successor.family_id), client_id=client_id, generation=successor.generation
            ),
        )

    async def _current_token(self, presented: RefreshToken, family: Family | None) -> RefreshToken | None:
        """The family's current token if ``presented`` is a genuine token of its chain, else None."""
        if family is None:
            return None
        return await self._chain.walk_off_loop(presented, family.generation, family.current_hash)

    async def _revoke_for_theft(
        self, family: Family, kind: str, presented_by: str, remote: str | None, now: datetime
    ) -> None:
        if await self._store.revoke_for_theft(
            family.family_id, kind=kind, presented_by=presented_by, remote=remote, now=now
        ):
            if kind == "refresh_reuse":
                events.refresh_reuse_detected(
                    family_id=str(family.family_id), client_id=family.client_id, user_id=str(family.user_id),
                    remote=remote,
                )
            else:
                events.refresh_wrong_client(
                    family_id=str(family.family_id), client_id=family.client_id, presented_by=presented_by,
                    user_id=str(family.user_id), remote=remote,
                )
            events.families_revoked(kind, 1)

    # --- RFC 7009 and RFC 7662 -------------------------------------------------------------------

    async def revoke(self, presented: RefreshToken, client_id: str) -> None:
        """RFC 7009: any genuine token of the family, spent or live, revokes the whole family;
        another client's token or an unknown one changes nothing (section 2.1)."""
        family = await self._store.get(presented.family_id, self.now())
        if family is None or family.client_id != client_id:
            return
        if await self._current_token(presented, family) is None:
            return
        if await self._store.revoke(family.family_id, "revoked_by_client", self.now()):
            events.families_revoked("revoked_by_client", 1)

    async def revoke_session(self, family_id: uuid.UUID, client_id: str) -> None:
        """Revoke the family an access token came from (its ``sid``), if it is this client's."""
        family = await self._store.get(family_id, self.now())
        if family is not None and family.client_id == client_id:
            if await self._store.revoke(family_id, "revoked_by_client", self.now()):
                events.families_revoked("revoked_by_client", 1)

    async def current(self, presented: RefreshToken, client_id: str) -> Family | None:
        """The family if ``presented`` is its current, live token and belongs to ``client_id``."""
        family = await self._store.get(presented.family_id, self.now())
        if family is None or family.client_id != client_id or family.generation != presented.generation:
            return None
        if not hmac.compare_digest(family.current_hash, presented.digest) or not family.live:
            return None
        return family

    async def session_revoked(self, family_id: uuid.UUID) -> bool:
        return await self._store.is_revoked(family_id)


def _explain_refusal(family: Family) -> None:
    """Which of the request's asks the rotation rule refused (``FamilyStore.get`` judged them)."""
    if not family.scope_fits:
        raise InvalidScope("the requested scope exceeds the scope originally granted")
    if not family.audience_fits:
        raise InvalidTarget("a refresh token is bound to the audience it was issued for")
