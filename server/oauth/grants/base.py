"""What every grant shares: the request context, scope and audience rules, the token response."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tessera.server.oauth.errors import InvalidRequest, InvalidScope, InvalidTarget
from tessera.server.oauth.tokens import IssuedAccessToken
from tessera.server.store import Client

# RFC 6749 appendix A.4: scope-token = 1*NQCHAR, NQCHAR = %x21 / %x23-5B / %x5D-7E.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token request once the client is authenticated: what every grant reads."""

    form: Mapping[str, str]
    client: Client
    remote: str | None


class Grant(Protocol):
    """RFC 6749 grants in two steps: ``validate`` checks without effects, ``issue`` acts.

    Each grant receives what it uses (stores, the token issuer, the throttle) in its constructor;
    ``tessera.server.oauth.grants.build_grants`` makes them all.
    """

    grant_type: str

    async def validate(self, request: TokenRequest) -> Any: ...

    async def issue(self, request: TokenRequest, validated: Any) -> dict[str, Any]: ...


def parse_scope(raw: str | None) -> tuple[str, ...] | None:
    """Section 3.3: a space-delimited, order-free set; None when the parameter was omitted."""
    if raw is None:
        return None
    tokens = raw.split(" ")
    if any(not _SCOPE_TOKEN.match(token) for token in tokens):
        raise InvalidScope("scope must be scope-tokens separated by single spaces")
    return tuple(dict.fromkeys(tokens))


def granted_scopes(requested: tuple[str, ...] | None, allowed: Sequence[str]) -> tuple[str, ...]:
    """The client's whole scope when none was asked for; otherwise exactly what was asked, or
    ``invalid_scope`` as a whole if any of it is not the client's (never silently narrowed)."""
    if requested is None:
        return tuple(allowed)
    outside = [scope for scope in requested if scope not in allowed]
    if outside:
        raise InvalidScope("the requested scope exceeds what this client may ask for")
    return requested


def resolve_audience(form: Mapping[str, str], client: Client) -> str:
    """The token's ``aud``: ``resource`` (RFC 8707) or ``audience``, else the client's first audience."""
    resource, audience = form.get("resource"), form.get("audience")
    if resource is not None and audience is not None and resource != audience:
        raise InvalidRequest("resource and audience name different targets")
    if resource is not None:
        # RFC 8707 section 2: an absolute URI without a fragment.
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", resource) or "#" in resource:
            raise InvalidTarget("resource must be an absolute URI without a fragment")
    wanted = resource if resource is not None else audience
    if wanted is None:
        return client.audiences[0]
    if wanted not in client.audiences:
        raise InvalidTarget("this client may not request tokens for that resource")
    return wanted


def token_response(access: IssuedAccessToken, scopes: Sequence[str], refresh_token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": access.token,
        "token_type": "Bearer",
        "expires_in": access.expires_in,
        "scope": " ".join(scopes),
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return body
