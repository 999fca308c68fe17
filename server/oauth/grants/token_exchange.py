"""RFC 8693: token exchange, for access tokens: a service acts on a user's behalf downstream.

A client registered for the grant presents an access token it was sent (``subject_token``) and
gets one for another of its audiences, for the same subject. The exchange never widens anything:
the new token has a scope within the subject token's and the client's, an ``exp`` no later than
the subject token's, and it names the client as the actor (``act``, section 4.1) on top of any
earlier actors. Which subject tokens a client may exchange is the operator's choice, by the
subject token's audience (the client's ``exchange_from``): a service exchanges the tokens sent to
it, not whatever token it finds.

Error codes (section 2.2.2 defers to RFC 6749 section 5.2):

- a malformed request, a token type other than an access token, ``actor_token``: ``invalid_request``;
- a ``resource`` or ``audience`` the client may not ask for: ``invalid_target``, the code section
  2.2.2 names for exactly that and nothing else;
- a subject token that does not verify, has expired, comes from another issuer, whose session was
  revoked, or whose audience is not one the client may exchange from: ``invalid_grant``. In this
  grant the subject token is the authorization grant, and RFC 6749 section 5.2 says a grant that
  is invalid, expired, revoked or "issued to another client" is ``invalid_grant``; the audience is
  about which token was presented, not about the target asked for, so it is not ``invalid_target``.
  (Section 2.2.2 itself suggests ``invalid_request`` for an unacceptable subject token; the
  contract asks for the code OAuth clients already treat as "get a new grant".)
- a scope wider than the subject token's and the client's: ``invalid_scope``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tessera.server.oauth.errors import InvalidGrant, InvalidRequest, InvalidScope, OAuthError, UnauthorizedClient
from tessera.server.oauth.families import RefreshFamilies
from tessera.server.oauth.grants.base import TokenRequest, parse_scope, resolve_audience, token_response
from tessera.server.oauth.introspection import AccessTokenReader, session_of
from tessera.server.oauth.tokens import AccessTokenIssuer
from tessera.server.ops import events

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
# Section 3: the one token type this server takes and issues.
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# Every exchange of an exchanged token nests one more ``act``; a chain this long is a loop between
# services, not a delegation anyone meant (and the token grows with each link).
MAX_DELEGATION_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Exchange:
    """A validated exchange: the subject token's verified claims and what the new token gets."""

    subject: Mapping[str, Any]
    audience: str
    scopes: tuple[str, ...]


class Refused(Exception):
    """An exchange refused for ``reason`` (a metric label), answered with ``error``."""

    def __init__(self, reason: str, error: OAuthError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class TokenExchangeGrant:
    grant_type = GRANT_TYPE

    def __init__(
        self, reader: AccessTokenReader, families: RefreshFamilies, tokens: AccessTokenIssuer,
        clock: Callable[[], float],
    ) -> None:
        self._reader = reader
        self._families = families
        self._tokens = tokens
        self._clock = clock

    async def validate(self, request: TokenRequest) -> Exchange:
        try:
            return await self._validate(request)
        except Refused as refused:
            events.token_exchange_refused(client_id=request.client.client_id, reason=refused.reason,
                                          remote=request.remote)
            raise refused.error from None

    async def _validate(self, request: TokenRequest) -> Exchange:
        form, client = request.form, request.client
        if client.is_public:
            # Section 5: the server should know who the actor is; a public client proves nothing.
            raise Refused("client", UnauthorizedClient("token exchange needs an authenticated client"))
        if "actor_token" in form or "actor_token_type" in form:
            raise Refused("request", InvalidRequest("actor_token is not supported: the calling client is the actor"))
        subject_token, subject_type = form.get("subject_token"), form.get("subject_token_type")
        if subject_token is None or subject_type is None:
            raise Refused("request", InvalidRequest("subject_token and subject_token_type are required"))
        if subject_type != ACCESS_TOKEN_TYPE:
            raise Refused("request", InvalidRequest(f"subject_token_type must be {ACCESS_TOKEN_TYPE}"))
        if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            raise Refused("request", InvalidRequest(f"requested_token_type must be {ACCESS_TOKEN_TYPE}"))
        try:
            requested = parse_scope(form.get("scope"))
            audience = resolve_audience(form, client)
        except OAuthError as error:
            raise Refused("scope" if isinstance(error, InvalidScope) else "target", error) from None

        subject = await self._reader.read(subject_token)
        if subject is None:
            raise Refused("subject_token", InvalidGrant(
                "the subject token is not a valid, unexpired access token of this server"))
        if not _audiences(subject["aud"]) & set(client.exchange_from):
            raise Refused("subject_audience", InvalidGrant(
                "this client may not exchange tokens issued for the subject token's audience"))
        if _delegation_depth(subject) >= MAX_DELEGATION_DEPTH:
            raise Refused("delegation_depth", InvalidGrant("the subject token's delegation chain is too long"))
        scopes = _exchanged_scopes(requested, subject["scope"], client.scopes)
        if "sid" in subject:
            # The user's session it came from must still be live: revoking a family (logout, reuse,
            # a disabled user) ends every token derived from it, exchanged ones included.
            session = session_of(subject)
            if session is None or await self._families.session_revoked(session):
                raise Refused("session_revoked", InvalidGrant("the subject token's session has ended"))
        return Exchange(subject, audience, scopes)

    async def issue(self, request: TokenRequest, validated: Exchange) -> dict[str, Any]:
        subject, client = validated.subject, request.client
        not_after = int(subject["exp"])
        if self._clock() >= not_after:  # it expired while it was being checked
            raise InvalidGrant("the subject token is not a valid, unexpired access token of this server")
        # Section 4.1: the current actor on the outside, earlier ones nested inside, in order.
        act: dict[str, Any] = {"sub": client.client_id}
        if "act" in subject:
            act["act"] = subject["act"]
        auth_time, session_id = subject.get("auth_time"), subject.get("sid")
        access = await self._tokens.issue(
            subject=str(subject["sub"]),
            client_id=client.client_id,
            audience=validated.audience,
            scopes=validated.scopes,
            auth_time=auth_time if isinstance(auth_time, int) else None,
            session_id=session_id if isinstance(session_id, str) else None,
            act=act,
            not_after=not_after,
        )
        events.token_exchanged(
            client_id=client.client_id, subject_client_id=str(subject["client_id"]), subject=str(subject["sub"]),
            audience=validated.audience,
        )
        body = token_response(access, validated.scopes)
        body["issued_token_type"] = ACCESS_TOKEN_TYPE  # section 2.2.1
        return body


def _audiences(aud: object) -> set[str]:
    """RFC 7519 section 4.1.3: one string or an array of them."""
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list):
        return {item for item in aud if isinstance(item, str)}
    return set()


def _delegation_depth(claims: Mapping[str, Any]) -> int:
    depth, act = 0, claims.get("act")
    while isinstance(act, Mapping):
        depth += 1
        act = act.get("act")
    return depth


def _exchanged_scopes(
    requested: tuple[str, ...] | None, subject_scope: object, client_scopes: tuple[str, ...]
) -> tuple[str, ...]:
    """What both the subject token and the client have; a request for more is refused as a whole
    (never silently narrowed), and so is an exchange that would carry no scope at all."""
    held = subject_scope.split(" ") if isinstance(subject_scope, str) else []
    shared = tuple(scope for scope in dict.fromkeys(held) if scope and scope in client_scopes)
    if requested is None:
        if not shared:
            raise Refused("scope", InvalidScope("the subject token has no scope this client may have"))
        return shared
    if any(scope not in shared for scope in requested):
        raise Refused("scope", InvalidScope(
            "the requested scope exceeds what the subject token and this client both have"))
    return requested


__all__ = ["ACCESS_TOKEN_TYPE", "GRANT_TYPE", "MAX_DELEGATION_DEPTH", "Exchange", "TokenExchangeGrant"]
