"""Access tokens (RFC 9068): the claim set, signed with the keyring's active key."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from keys.keyring import Keyring


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

    async def issue(
        self,
        *,
        subject: str,
        client_id: str,
        audience: str,
        scopes: Sequence[str],
        auth_time: int | None = None,
        session_id: str | None = None,
    ) -> IssuedAccessToken:
        now = int(self._clock())
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + self._ttl,
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
        signer = self._keyring.snapshot.signer
        if signer.blocking:
            token = await asyncio.get_running_loop().run_in_executor(self._executor, signer.sign, claims)
        else:
            token = signer.sign(claims)
        return IssuedAccessToken(token, self._ttl, jti)
