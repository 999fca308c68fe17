"""RFC 6749 section 4.1 with the rules of RFC 9700: the authorization request, checked.

Two kinds of refusal, as section 4.1.2.1 says:
- about the client or the redirect URI (unknown client, a redirect URI that is not registered):
  ``AuthorizationPageError``, shown to the person and never redirected anywhere, since sending the
  browser to an unverified address is an open redirect;
- anything else: ``AuthorizationRedirectError``, sent back to the client's redirect URI with
  ``error``, ``error_description``, ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from tessera.server.oauth.errors import InvalidScope, InvalidTarget, OAuthError
from tessera.server.oauth.grants.base import granted_scopes, parse_scope, resolve_audience
from tessera.server.oauth.pkce import CHALLENGE
from tessera.server.store import Client

AUTHORIZATION_CODE = "authorization_code"
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "localhost")
PROMPTS = frozenset({"none", "login", "consent"})
MAX_STATE_LENGTH = 1024


class AuthorizationPageError(Exception):
    """Shown as a page (400); the browser is not sent anywhere."""


class AuthorizationRedirectError(Exception):
    """Sent back to the client's (verified) redirect URI (RFC 6749 section 4.1.2.1)."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str  # where the answer goes
    redirect_uri_sent: str | None  # as the request gave it; the token request must repeat it
    state: str | None
    scopes: tuple[str, ...]
    audience: str
    code_challenge: str
    nonce: str | None
    prompt: frozenset[str]
    max_age: int | None
    login_hint: str | None

    def as_parameters(self) -> dict[str, str]:
        """The request as parameters again, to carry it through the login and consent pages."""
        parameters = {
            "client_id": self.client.client_id,
            "response_type": "code",
            "scope": " ".join(self.scopes),
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
            "audience": self.audience,
        }
        optional = {
            "redirect_uri": self.redirect_uri_sent,
            "state": self.state,
            "nonce": self.nonce,
            "max_age": None if self.max_age is None else str(self.max_age),
            "login_hint": self.login_hint,
            "prompt": " ".join(sorted(self.prompt)) or None,
        }
        parameters.update({name: value for name, value in optional.items() if value is not None})
        return parameters


def _without_port(uri: str) -> tuple[str, str, str, str, str] | None:
    """A loopback http URI with its port taken out (RFC 8252 section 7.3), else None."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    if parts.scheme != "http" or parts.hostname is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if host not in LOOPBACK_HOSTS or parts.username is not None or parts.password is not None:
        return None
    return (parts.scheme, host, parts.path, parts.query, parts.fragment)


def match_redirect_uri(registered: tuple[str, ...], sent: str | None) -> str | None:
    """The redirect URI to use, or None if ``sent`` matches no registered one.

    RFC 9700 section 4.1.3: exact string comparison; RFC 8252 section 7.3: for a loopback address
    over http, any port (a native app listens on whatever port it was given). Omitted is allowed
    only when exactly one is registered (RFC 6749 section 3.1.2.3).
    """
    if sent is None:
        return registered[0] if len(registered) == 1 else None
    if sent in registered:
        return sent
    loose = _without_port(sent)
    if loose is not None and any(_without_port(uri) == loose for uri in registered):
        return sent
    return None


def registered_redirect_uri_problem(uri: str) -> str | None:
    """Why ``uri`` may not be registered (RFC 6749 section 3.1.2, RFC 8252, RFC 9700), or None."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018
    except ValueError:
        return "is not a valid URI"
    if not parts.scheme or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", parts.scheme):
        return "must be an absolute URI"
    if parts.fragment or "#" in uri:
        return "must not have a fragment (RFC 6749 section 3.1.2)"
    if parts.scheme == "http" and _without_port(uri) is None:
        return "may use http only for a loopback host (127.0.0.1, [::1], localhost)"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return "must not contain spaces or control characters"
    return None


async def check_authorization_request(
    parameters: Mapping[str, str], find_client: Callable[[str], Awaitable[Client | None]]
) -> AuthorizationRequest:
    """The request, or AuthorizationPageError / AuthorizationRedirectError."""
    client_id = parameters.get("client_id")
    client = await find_client(client_id) if client_id and len(client_id) <= 128 else None
    if client is None:
        raise AuthorizationPageError("This application is not known here.")
    sent = parameters.get("redirect_uri")
    redirect_uri = match_redirect_uri(client.redirect_uris, sent)
    if redirect_uri is None:
        raise AuthorizationPageError(
            "The address this application asked to return to is not one registered for it."
            if sent is not None or len(client.redirect_uris) > 1 or not client.redirect_uris
            else "This application gave no address to return to."
        )

    state = parameters.get("state")
    if state is not None and len(state) > MAX_STATE_LENGTH:
        state = None  # not echoed: a state this long is not the client's

    # From here on every refusal goes back to the client, with its state.
    def refuse(error: str, description: str) -> AuthorizationRedirectError:
        return AuthorizationRedirectError(error, description, redirect_uri, state)

    if AUTHORIZATION_CODE not in client.grant_types:
        raise refuse("unauthorized_client", "this client may not use the authorization code flow")
    if parameters.get("response_type") != "code":
        raise refuse("unsupported_response_type", "response_type must be code")
    if state is None and "state" in parameters:
        raise refuse("invalid_request", "state is too long")
    challenge, method = parameters.get("code_challenge"), parameters.get("code_challenge_method")
    if challenge is None:
        raise refuse("invalid_request", "code_challenge is required (PKCE, RFC 7636)")
    if method != "S256":
        raise refuse("invalid_request", "code_challenge_method must be S256")
    if not CHALLENGE.match(challenge):
        raise refuse("invalid_request", "code_challenge must be 43 characters of base64url")
    if "request" in parameters or "request_uri" in parameters:
        raise refuse("request_not_supported", "request objects are not supported")
    try:
        scopes = granted_scopes(parse_scope(parameters.get("scope")), client.scopes)
        audience = resolve_audience(parameters, client)
    except (InvalidScope, InvalidTarget) as exc:
        raise refuse(exc.error, exc.description) from None
    except OAuthError as exc:
        raise refuse("invalid_request", exc.description) from None
    prompt = frozenset(parameters.get("prompt", "").split())
    if not prompt <= PROMPTS or ("none" in prompt and len(prompt) > 1):
        raise refuse("invalid_request", "prompt must be none, or any of login and consent")
    max_age_text = parameters.get("max_age")
    max_age = None
    if max_age_text is not None:
        if not (max_age_text.isascii() and max_age_text.isdigit()) or len(max_age_text) > 10:
            raise refuse("invalid_request", "max_age must be a number of seconds")
        max_age = int(max_age_text)
    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        redirect_uri_sent=sent,
        state=state,
        scopes=scopes,
        audience=audience,
        code_challenge=challenge,
        nonce=parameters.get("nonce"),
        prompt=prompt,
        max_age=max_age,
        login_hint=parameters.get("login_hint"),
    )
