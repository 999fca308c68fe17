"""Access tokens (RFC 9068) and OpenID Connect ID tokens: the claim sets, signed with the keyring's
active key.

Signatures asked for during one turn of the event loop are made together at the end of that turn
(``SignatureBatch``): measured in the server, an ES256 signature made between the parsing and the
answering of a request cost about 40 µs of CPU, and 22 µs when made right after another one, and
the interpreter's own work around it slowed down too. OpenSSL's code and tables and the
interpreter's evict each other from the CPU's caches; signing in a run keeps each side warm.
docs/performance.md has the figures.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from tessera.keys.keyring import Keyring
from tessera.server.ops.end_of_turn import EndOfTurn


Sign = Callable[[dict[str, Any]], str]  # a Signer's sign or sign_id_token


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    expires_in: int
    jti: str


class AccessTokenIssuer:
    def __init__(
        self,
        keyring: Keyring,
        *,
        issuer: str,
        ttl: int,
        clock: Callable[[], float],
        executor: Executor | None = None,
    ) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._ttl = ttl
        self._clock = clock
        self._executor = executor
        self._batch = SignatureBatch()

    async def issue(
        self,
        *,
        subject: str,
        client_id: str,
        audience: str,
        scopes: Sequence[str],
        auth_time: int | None = None,
        session_id: str | None = None,
        act: Mapping[str, Any] | None = None,
        not_after: int | None = None,
    ) -> IssuedAccessToken:
        """``act`` and ``not_after`` are for token exchange (RFC 8693): who acts on the subject's
        behalf (section 4.1), and an ``exp`` the token may not outlive (the subject token's)."""
        now = int(self._clock())
        jti = secrets.token_urlsafe(16)
        exp = now + self._ttl if not_after is None else min(now + self._ttl, not_after)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": audience,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "jti": jti,
            "client_id": client_id,
            "scope": " ".join(scopes),
        }
        if auth_time is not None:
            # RFC 9068 section 2.2.1: when the user authenticated, for tokens issued on their behalf.
            claims["auth_time"] = auth_time
        if session_id is not None:
            # The refresh-token family this token came from, so introspection can see its revocation.
            claims["sid"] = session_id
        if act is not None:
            claims["act"] = dict(act)
        signer = self._keyring.snapshot.signer
        return IssuedAccessToken(await self._sign(signer.blocking, signer.sign, claims), exp - now, jti)

    async def issue_id_token(
        self, *, subject: str, client_id: str, auth_time: int, session_id: str | None, nonce: str | None,
        access_token: str,
    ) -> str:
        """OpenID Connect Core section 2 and 3.1.3.6: who signed in, for the client (``aud``), with
        ``at_hash`` binding it to the access token issued with it."""
        now = int(self._clock())
        signer = self._keyring.snapshot.signer
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": client_id,
            "exp": now + self._ttl,
            "iat": now,
            "auth_time": auth_time,
            "at_hash": at_hash(access_token, signer.alg),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if session_id is not None:
            claims["sid"] = session_id
        return await self._sign(signer.blocking, signer.sign_id_token, claims)

    async def _sign(self, blocking: bool, sign: Callable[[dict[str, Any]], str], claims: dict[str, Any]) -> str:
        if blocking:
            return await asyncio.get_running_loop().run_in_executor(self._executor, sign, claims)
        return await self._batch.sign(sign, claims)


# OpenID Connect Core section 3.1.3.6: the hash of the JWS algorithm's own hash function; Ed25519
# signs with SHA-512 inside, which is what at_hash uses for EdDSA.
_AT_HASH = {"ES256": hashlib.sha256, "RS256": hashlib.sha256, "PS256": hashlib.sha256,
            "ES384": hashlib.sha384, "EdDSA": hashlib.sha512}


def at_hash(access_token: str, alg: str) -> str:
    """The left half of the hash of the access token's ASCII, base64url without padding."""
    digest = _AT_HASH[alg](access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


class SignatureBatch:
    """Signs, at the end of the current turn of the event loop, every token asked for in it.

    A request that is cancelled while it waits (its client went away) is not signed. A signature
    that fails fails only its own request. The wait is one turn of the loop: with one request in
    flight it is a few microseconds; under load the batch holds every token request that arrived
    together (at 64 connections on one core, a few dozen).
    """

    def __init__(self) -> None:
        self._pending: EndOfTurn[tuple[Sign, dict[str, Any], asyncio.Future[str]]] = EndOfTurn(self._sign_all)

    def sign(self, sign: Sign, claims: dict[str, Any]) -> asyncio.Future[str]:
        signed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.add((sign, claims, signed))
        return signed

    @staticmethod
    def _sign_all(pending: list[tuple[Sign, dict[str, Any], asyncio.Future[str]]]) -> None:
        for sign, claims, signed in pending:
            if signed.cancelled():
                continue
            try:
                signed.set_result(sign(claims))
            except Exception as exc:  # handed to the one request it belongs to
                signed.set_exception(exc)
