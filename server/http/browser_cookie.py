"""The refresh-token cookie of browser apps (CONTRACT.md, "Browser apps"; the IETF draft "OAuth 2.0
for Browser-Based Applications"): the refresh token of a client registered with
``--refresh-token-cookie`` is never where JavaScript can read it.

- Every token response that carries a refresh token to such a client sets it as the cookie
  ``__Host-tessera_refresh`` instead (HttpOnly, Secure, SameSite=Strict, Path=/, no Domain) and
  leaves ``refresh_token`` out of the JSON. Its Max-Age is no longer than what the family has left
  of its idle and absolute lifetimes, so the browser never keeps a token that can no longer work.
- ``grant_type=refresh_token`` without ``refresh_token``, and ``/revoke`` without ``token``, use
  the cookie (the latter then clears it). The rotation, its retries, reuse detection and the
  lifetimes are the grant's, exactly as for a token in the body: the view only fills the form.
- A request that relies on the cookie must come from one of the client's own origins (``Origin``)
  and carry ``Tessera-CSRF: 1``, or it is ``invalid_request`` and nothing is spent. A browser
  sends a cookie with a cross-site form too, but a form cannot add a header, and a script of
  another origin cannot add one without passing the CORS preflight (tessera.server.http.cors),
  which only the client's registered origins pass. (Outside a browser anyone can send any header:
  there, a stolen token is what reuse detection is for.)
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from tessera.server.http.answering import json_response
from tessera.server.http.cors import CSRF_HEADER
from tessera.server.oauth.errors import InvalidRequest
from tessera.server.oauth.families import parse_refresh_token
from tessera.server.store import Client
from tessera.server.store.families import FamilyStore

REFRESH_COOKIE = "__Host-tessera_refresh"


class RefreshCookies:
    """How long a refresh token's cookie may live: what its family has left."""

    def __init__(self, families: FamilyStore, reuse_grace: int) -> None:
        self._families = families
        self._grace = reuse_grace

    async def max_age(self, refresh_token: str) -> int:
        """Seconds until ``refresh_token`` (just issued) stops working: its family's idle or
        absolute end, whichever is first, counted from the family's last rotation, the moment the
        token was made. A retry within TESSERA_REFRESH_REUSE_GRACE answers the same token a little
        later, so the grace is taken off: the cookie never outlives the token."""
        token = parse_refresh_token(refresh_token)
        # Only the family's times are read here, not the rule's verdicts at ``now``.
        family = await self._families.get(token.family_id, datetime.now(UTC)) if token is not None else None
        if family is None:
            return 0
        left = family.token_expires_at - family.last_rotated_at
        return max(0, int(left.total_seconds()) - self._grace)

    async def answer(self, body: dict[str, object]) -> web.Response:
        """The token response with its refresh token moved from the JSON into the cookie."""
        refresh_token = str(body.pop("refresh_token"))
        response = json_response(body)
        response.set_cookie(
            REFRESH_COOKIE, refresh_token, max_age=await self.max_age(refresh_token),
            path="/", secure=True, httponly=True, samesite="Strict",
        )
        return response


REFRESH_COOKIES = web.AppKey("refresh_cookies", RefreshCookies)


def cookie_refresh_token(request: web.Request, client: Client) -> str | None:
    """The refresh token in the cookie, for a request the cookie may be used for: from one of the
    ``client``'s origins, with ``Tessera-CSRF: 1``; ``invalid_request`` otherwise. None when the
    browser has no such cookie."""
    origins = request.headers.getall("Origin", [])
    if len(origins) != 1 or origins[0] not in client.allowed_origins:
        raise InvalidRequest("the refresh-token cookie is used only from this client's registered origins")
    if request.headers.getall(CSRF_HEADER, []) != ["1"]:
        raise InvalidRequest(f"a request that relies on the refresh-token cookie must send {CSRF_HEADER}: 1")
    return request.cookies.get(REFRESH_COOKIE) or None


def cleared(response: web.StreamResponse) -> web.StreamResponse:
    """``response`` with the cookie removed from the browser (Max-Age=0)."""
    response.del_cookie(REFRESH_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


__all__ = ["REFRESH_COOKIE", "REFRESH_COOKIES", "RefreshCookies", "cleared", "cookie_refresh_token"]
