"""RFC 6749 section 4.1.3: exchanging an authorization code, with PKCE (RFC 7636) always.

A code is redeemed once. ``validate`` checks the request's own shape, without the database;
``issue`` spends the code in one statement that also checks every binding (client, redirect URI,
code challenge, lifetime, an enabled user, a sign-in not ended) and starts the refresh-token
family, so a refused request leaves the code as it was and a 503 spends nothing. Only when that
statement matches nothing is the code read, to say why. A code presented after it was redeemed is
refused and revokes the family its first redemption started (RFC 6749 section 4.1.2, RFC 9700
section 4.5): whoever holds it now, one of the two is not the client it was issued to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tessera.server.oauth.errors import InvalidGrant, InvalidRequest
from tessera.server.oauth.families import RefreshFamilies
from tessera.server.oauth.grants.base import TokenRequest, token_response
from tessera.server.oauth.unanswered import Settler
from tessera.server.oauth.pkce import s256, verifier_matches, well_formed_verifier
from tessera.server.oauth.tokens import AccessTokenIssuer
from tessera.server.ops import events
from tessera.server.store.sign_in import AuthorizationCode, NewFamily, RedeemedCode, SignInStore

MAX_CODE_LENGTH = 128


def code_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode("ascii", "replace")).digest()


@dataclass(frozen=True, slots=True)
class CodeRedemption:
    code_hash: bytes
    code_verifier: str
    redirect_uri: str | None


class AuthorizationCodeGrant:
    grant_type = "authorization_code"

    def __init__(
        self, codes: SignInStore, families: RefreshFamilies, tokens: AccessTokenIssuer, clock: Callable[[], float]
    ) -> None:
        self._codes = codes
        self._families = families
        self._tokens = tokens
        self._clock = clock
        self._settler = Settler()

    async def validate(self, request: TokenRequest) -> CodeRedemption:
        form = request.form
        code, verifier = form.get("code"), form.get("code_verifier")
        if code is None:
            raise InvalidRequest("code is required")
        if verifier is None:
            raise InvalidRequest("code_verifier is required (PKCE, RFC 7636)")
        if len(code) > MAX_CODE_LENGTH or not well_formed_verifier(verifier):
            raise InvalidGrant("invalid authorization code or code_verifier")
        return CodeRedemption(code_hash(code), verifier, form.get("redirect_uri"))

    async def issue(self, request: TokenRequest, validated: CodeRedemption) -> dict[str, Any]:
        client = request.client
        now = datetime.fromtimestamp(self._clock(), UTC)
        refresh_token = family = None
        if "refresh_token" in client.grant_types:
            refresh_token, family = self._families.prepare_family(now)
        try:
            code = await self._codes.redeem_code(
                code_hash=validated.code_hash, client_id=client.client_id, redirect_uri=validated.redirect_uri,
                code_challenge=s256(validated.code_verifier), now=now, family=family,
            )
        except BaseException:
            # The request fails, but the redemption may have committed all the same (its
            # acknowledgement is what was lost): find out, so that the retry is not a replay.
            if family is not None:
                code_hash, family_id = validated.code_hash, family.family_id
                self._settler.settle(lambda: self._codes.mark_unanswered(code_hash, family_id))
            raise
        if code is None:
            # Read after the redemption matched nothing, so a concurrent winner is visible.
            found = await self._codes.code(validated.code_hash)
            if family is not None and found is not None and self._may_redeem_again(validated, found, client.client_id):
                code = await self._redeem_again(validated, found, client.client_id, now, family)
                if code is None:  # another retry of it won: judge by what that one left
                    found = await self._codes.code(validated.code_hash)
        if code is None:
            await self._refused(validated, found, client.client_id, request.remote, now)
            raise InvalidGrant("invalid authorization code")  # _refused says more when it can
        auth_time = int(code.auth_time.timestamp())
        session_id = str(family.family_id) if family is not None else None
        access = await self._tokens.issue(
            subject=str(code.user_id),
            client_id=client.client_id,
            audience=code.audience,
            scopes=code.scopes,
            auth_time=auth_time,
            session_id=session_id,
        )
        body = token_response(access, code.scopes, refresh_token)
        if "openid" in code.scopes:
            body["id_token"] = await self._tokens.issue_id_token(
                subject=str(code.user_id),
                client_id=client.client_id,
                auth_time=auth_time,
                # The same sid as the access token's (the family: one sign-in at one client, what
                # OpenID Connect calls a session at the RP); without refresh tokens, the sign-in.
                session_id=session_id if session_id is not None else str(code.session_id),
                nonce=code.nonce,
                access_token=access.token,
            )
        return body

    @staticmethod
    def _may_redeem_again(asked: CodeRedemption, found: AuthorizationCode, client_id: str) -> bool:
        """A spent code whose redemption was answered with an error, presented again by its client
        with the same bindings: redeemed anew (migration 0017) rather than taken for a replay."""
        return (
            found.unanswered and found.family_id is not None and found.client_id == client_id
            and asked.redirect_uri == found.redirect_uri and verifier_matches(asked.code_verifier, found.code_challenge)
        )

    async def _redeem_again(
        self, asked: CodeRedemption, found: AuthorizationCode, client_id: str, now: datetime, family: NewFamily
    ) -> RedeemedCode | None:
        assert found.family_id is not None  # _may_redeem_again
        return await self._codes.redeem_again(
            code_hash=asked.code_hash, unanswered_family=found.family_id, client_id=client_id,
            redirect_uri=asked.redirect_uri, code_challenge=found.code_challenge, now=now, family=family,
        )

    async def _refused(
        self, asked: CodeRedemption, found: AuthorizationCode | None, client_id: str, remote: str | None, now: datetime
    ) -> None:
        """Why the redemption matched nothing, from the code as read after it."""
        if found is None or found.client_id != client_id:
            # Another client's code is refused without spending it: the client it was issued to
            # may still redeem it.
            raise InvalidGrant("invalid authorization code")
        if found.redeemed_at is not None:
            await self._replayed(found, client_id, remote)
        if found.expires_at <= now:
            raise InvalidGrant("the authorization code has expired")
        if asked.redirect_uri != found.redirect_uri:
            # Section 4.1.3: required and identical when the authorization request had one.
            raise InvalidGrant("redirect_uri does not match the authorization request")
        if not verifier_matches(asked.code_verifier, found.code_challenge):
            raise InvalidGrant("code_verifier does not match the code challenge")

    async def _replayed(self, code: AuthorizationCode, presented_by: str, remote: str | None) -> None:
        if code.family_id is not None:
            await self._families.revoke_for_code_replay(code.family_id, presented_by, remote)
        events.authorization_code_replayed(code.client_id, str(code.user_id), remote)
        raise InvalidGrant("invalid authorization code")


__all__ = ["AuthorizationCodeGrant", "CodeRedemption", "code_hash"]
