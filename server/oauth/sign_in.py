"""A person signing in to an app: what the authorization endpoint and the login, consent and logout
pages decide (OpenID Connect Core section 3.1.2, RFC 6749 section 4.1, OpenID Connect RP-Initiated
Logout 1.0). The pages themselves (``tessera.server.http.pages``) only parse, call this and render.

The password is checked exactly as the password grant checks it
(``tessera.server.oauth.password_check``): the same throttle per username and address, the same
argon2 lane, the same answer whether or not the username exists.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tessera.keys.keyring import Keyring
from tessera.server.oauth.authorization import AuthorizationRequest, match_redirect_uri
from tessera.server.oauth.errors import InvalidGrant
from tessera.server.oauth.grants.authorization_code import code_hash
from tessera.server.oauth.password_check import PasswordCheck
from tessera.server.ops import events
from tessera.server.settings import Settings
from tessera.server.store import Client, ClientStore
from tessera.server.store.sign_in import LoginSession, SignInStore

SIGN_IN_ONLY_SECONDS = 1800  # a sign-in that is not remembered, for the steps of its own request


@dataclass(frozen=True, slots=True)
class ShowLogin:
    request: AuthorizationRequest


@dataclass(frozen=True, slots=True)
class ShowConsent:
    request: AuthorizationRequest
    session: LoginSession


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str


Decision = ShowLogin | ShowConsent | Redirect


@dataclass(frozen=True, slots=True)
class SignedIn:
    session: LoginSession
    cookie: str  # the value of __Host-tessera_session; only its hash is stored


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """What RP-initiated logout was asked for, checked: where to go after, if anywhere."""

    session_id: uuid.UUID | None  # the ``sid`` of a valid id_token_hint
    redirect: str | None  # post_logout_redirect_uri with state, when it is registered for the hint's client


def cookie_hash(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode("ascii", "replace")).digest()


def with_parameters(uri: str, parameters: dict[str, str]) -> str:
    """RFC 6749 section 3.1.2: the query component of the redirect URI is kept, ours added to it."""
    base = uri.split("#", 1)[0]
    if not parameters:
        return base
    separator = "&" if urlsplit(uri).query else "?"
    return f"{base}{separator}{urlencode(parameters)}"


class SignIn:
    def __init__(
        self,
        store: SignInStore,
        clients: ClientStore,
        passwords: PasswordCheck,
        keyring: Keyring,
        *,
        issuer: str,
        code_ttl: int,
        session_ttl: int,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._clients = clients
        self._passwords = passwords
        self._keyring = keyring
        self.issuer = issuer
        self._code_ttl = timedelta(seconds=code_ttl)
        # 0 (never remember a sign-in): the session still lasts long enough to finish the consent
        # page it leads to; /authorize does not look at it (tessera.server.http.pages).
        self._session_ttl = timedelta(seconds=session_ttl or SIGN_IN_ONLY_SECONDS)
        self._clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def client(self, client_id: str) -> Client | None:
        return await self._clients.get(client_id)

    async def session(self, cookie: str | None) -> LoginSession | None:
        if not cookie or len(cookie) > 128:
            return None
        return await self._store.session(cookie_hash(cookie), self.now())

    # --- the authorization request ------------------------------------------------------------

    def error_redirect(self, request: AuthorizationRequest, error: str, description: str) -> Redirect:
        return self.error_to(request.redirect_uri, request.state, error, description)

    def error_to(self, redirect_uri: str, state: str | None, error: str, description: str) -> Redirect:
        """RFC 6749 section 4.1.2.1, with ``iss`` (RFC 9207) against mix-up."""
        parameters = {"error": error, "error_description": description, "iss": self.issuer}
        if state is not None:
            parameters["state"] = state
        return Redirect(with_parameters(redirect_uri, parameters))

    async def decide(
        self, request: AuthorizationRequest, session: LoginSession | None, *, signed_in_now: bool = False,
        consented_now: bool = False,
    ) -> Decision:
        """What happens next: the login page, the consent page, or back to the client with a code."""
        if session is None or (not signed_in_now and self._must_sign_in_again(request, session)):
            if "none" in request.prompt:
                return self.error_redirect(request, "login_required", "the user is not signed in")
            return ShowLogin(request)
        if not consented_now and not request.client.first_party:
            asked = "consent" in request.prompt
            if asked or not await self._store.consented(session.user_id, request.client.client_id, request.scopes):
                if "none" in request.prompt:
                    return self.error_redirect(request, "consent_required", "the user has not allowed this client")
                return ShowConsent(request, session)
        return await self._code_redirect(request, session)

    def _must_sign_in_again(self, request: AuthorizationRequest, session: LoginSession) -> bool:
        if "login" in request.prompt:
            return True
        if request.max_age is not None:
            # max_age=0 is prompt=login (OpenID Connect Core section 3.1.2.1, errata set 2): auth_time
            # is whole seconds, so "more than 0 seconds ago" alone would let a same-second sign-in pass.
            return request.max_age == 0 or (self.now() - session.auth_time).total_seconds() > request.max_age
        return False

    async def _code_redirect(self, request: AuthorizationRequest, session: LoginSession) -> Redirect:
        code = secrets.token_urlsafe(32)
        now = self.now()
        await self._store.create_code(
            code_hash=code_hash(code),
            client_id=request.client.client_id,
            user_id=session.user_id,
            session_id=session.session_id,
            redirect_uri=request.redirect_uri_sent,
            code_challenge=request.code_challenge,
            scopes=request.scopes,
            audience=request.audience,
            nonce=request.nonce,
            auth_time=session.auth_time,
            expires_at=now + self._code_ttl,
        )
        events.authorization_code_issued(request.client.client_id)
        parameters = {"code": code, "iss": self.issuer}
        if request.state is not None:
            parameters["state"] = request.state
        return Redirect(with_parameters(request.redirect_uri, parameters))

    # --- the login and consent pages ------------------------------------------------------------

    async def sign_in(self, username: str, password: str, remote: str | None) -> SignedIn:
        """The login form: a new sign-in session, or InvalidGrant / TooManyAttempts."""
        user = await self._passwords.check(username, password, remote)
        cookie = secrets.token_urlsafe(32)
        now = self.now().replace(microsecond=0)  # auth_time is whole seconds in every token
        session = LoginSession(uuid.uuid4(), user.user_id, user.username, now, now + self._session_ttl)
        if not await self._store.start_session(
            session_id=session.session_id, cookie_hash=cookie_hash(cookie), user_id=user.user_id,
            password_changed_at=user.password_changed_at, auth_time=now, expires_at=session.expires_at,
        ):
            raise InvalidGrant("invalid username or password")  # disabled or re-passworded meanwhile
        events.signed_in(str(user.user_id), remote)
        return SignedIn(session, cookie)

    async def consent(self, request: AuthorizationRequest, session: LoginSession, allowed: bool) -> Decision:
        if not allowed:
            return self.error_redirect(request, "access_denied", "the user did not allow this client")
        await self._store.remember_consent(session.user_id, request.client.client_id, request.scopes, self.now())
        return await self.decide(request, session, signed_in_now=True, consented_now=True)

    # --- RP-initiated logout --------------------------------------------------------------------

    async def logout_request(
        self, id_token_hint: str | None, post_logout_redirect_uri: str | None, state: str | None,
        client_id: str | None = None,
    ) -> LogoutRequest:
        """Section 2 of RP-Initiated Logout: the hint must be an ID token this server issued (an
        expired one is fine), of the ``client_id`` when one is sent; the redirect is honoured only
        when registered for the hint's client (with the loopback port rule of /authorize), so
        /logout is never an open redirect."""
        claims = self._id_token_claims(id_token_hint) if id_token_hint else None
        if claims is None or (client_id is not None and client_id != claims.get("aud")):
            return LogoutRequest(None, None)
        session_id = await self._store.login_session_of(str(claims.get("sid")))
        redirect = None
        client = await self._clients.get(str(claims.get("aud")))
        if post_logout_redirect_uri is not None and client is not None:
            if match_redirect_uri(client.redirect_uris, post_logout_redirect_uri) is not None:
                redirect = with_parameters(post_logout_redirect_uri, {"state": state} if state else {})
        return LogoutRequest(session_id, redirect)

    def _id_token_claims(self, token: str) -> dict[str, Any] | None:
        if len(token) > 8192:
            return None
        snapshot = self._keyring.snapshot
        try:
            keys = KeySet.import_key_set(json.loads(snapshot.jwks_body))
            decoded = jwt.decode(token, keys, algorithms=sorted({key.alg for key in snapshot.keys}))
        except (JoseError, ValueError, TypeError):
            return None
        if decoded.header.get("typ") != "JWT" or decoded.claims.get("iss") != self.issuer:
            return None
        return dict(decoded.claims)

    async def logout(self, session: LoginSession) -> int:
        """End the sign-in session and revoke the refresh-token families made from it."""
        revoked = await self._store.end_session(session.session_id, self.now(), "logout")
        events.signed_out(str(session.user_id), revoked)
        if revoked:
            events.families_revoked("logout", revoked)
        return revoked


def sign_in_metadata(settings: Settings) -> dict[str, object]:
    """OpenID Connect Discovery 1.0 section 3, RFC 8414 and RFC 9207: what a client library needs to
    sign people in here without any other configuration."""
    issuer = settings.issuer
    return {
        "authorization_endpoint": f"{issuer}/authorize",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "end_session_endpoint": f"{issuer}/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [settings.signing_alg],
        "scopes_supported": ["openid"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid", "at_hash", "preferred_username",
        ],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "prompt_values_supported": ["none", "login", "consent"],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claims_parameter_supported": False,
    }
