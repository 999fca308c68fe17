"""Bearer-token authentication for aiohttp resource servers (RFC 6750), on :class:`keys.Verifier`.

    app = web.Application(middlewares=[bearer_auth_middleware(verifier, public_paths={"/health"})])

    @require_scopes("orders.read")
    async def list_orders(request: web.Request) -> web.Response:
        claims = get_claims(request)
        ...

The middleware authenticates every request that is not public: it reads ``Authorization: Bearer``
(RFC 6750 section 2.1), verifies the token, enforces the scopes the route's handler was marked with
by :func:`require_scopes`, and stores the claims on the request. Its answers follow RFC 6750
section 3: 401 with a bare ``WWW-Authenticate: Bearer realm=...`` when no token was sent, 401
``invalid_token`` for a bad one, 403 ``insufficient_scope`` naming the scopes needed, 400
``invalid_request`` for a malformed request. When the issuer's keys cannot be had at all it answers
503: the token may well be good, and the client should retry, not fetch a new one.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final, TypeVar, cast

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from .verifier import AccessTokenClaims, InsufficientScope, InvalidToken, JWKSUnavailable, Verifier

__all__ = [
    "CLAIMS_KEY",
    "bearer_auth_middleware",
    "get_claims",
    "require_scopes",
]

#: Where the middleware puts the verified claims: ``request[CLAIMS_KEY]``. A typed
#: ``web.RequestKey`` from aiohttp 3.14 on; a plain string key before (which 3.14 would warn about).
CLAIMS_KEY: Final[web.RequestKey[AccessTokenClaims]] = (
    web.RequestKey("tessera_access_token_claims", AccessTokenClaims)
    if hasattr(web, "RequestKey")
    else cast(Any, "tessera_access_token_claims")
)

_SCOPES_ATTRIBUTE: Final = "__tessera_required_scopes__"

#: RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

#: RFC 6750 section 3: characters allowed inside the quoted error_description and scope values
_NOT_QUOTABLE: Final = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_H = TypeVar("_H", bound=Callable[..., Awaitable[web.StreamResponse]])


def get_claims(request: web.Request) -> AccessTokenClaims:
    """The verified claims of the request's access token.

    :raises LookupError: on a request the middleware did not authenticate (a public path)
    """
    try:
        return request[CLAIMS_KEY]
    except KeyError:
        raise LookupError("this request was not authenticated by bearer_auth_middleware") from None


def require_scopes(*scopes: str) -> Callable[[_H], _H]:
    """Mark a handler (a function, or a method of a ``web.View``) as needing all of ``scopes``.

    :func:`bearer_auth_middleware` enforces the mark before the handler runs (403
    ``insufficient_scope``), also on a path declared public. The handler is wrapped to fail closed:
    reached without the middleware having authenticated the request, it raises ``RuntimeError``
    (a 500) rather than serve a protected resource to anyone.
    """
    required = frozenset(scope for text in scopes for scope in text.split())
    if not required:
        raise ValueError("require_scopes needs at least one scope")

    def mark(handler: _H) -> _H:
        @functools.wraps(handler)
        async def guarded(*args: Any, **kwargs: Any) -> web.StreamResponse:
            request = args[0].request if isinstance(args[0], web.View) else args[-1]
            claims = request.get(CLAIMS_KEY) if isinstance(request, web.Request) else None
            if claims is None or not claims.scopes.issuperset(required):
                raise RuntimeError(
                    f"{handler.__qualname__} requires scopes {sorted(required)} but bearer_auth_middleware "
                    "did not authorize this request; is the middleware installed?"
                )
            return await handler(*args, **kwargs)

        setattr(guarded, _SCOPES_ATTRIBUTE, required)
        return cast(_H, guarded)

    return mark


def _route_scopes(request: web.Request) -> frozenset[str]:
    handler: Any = request.match_info.handler
    scopes = getattr(handler, _SCOPES_ATTRIBUTE, None)
    if scopes is None and isinstance(handler, type) and issubclass(handler, web.View):
        method = getattr(handler, request.method.lower(), None)
        scopes = getattr(method, _SCOPES_ATTRIBUTE, None)
    return scopes if isinstance(scopes, frozenset) else frozenset()


def _quoted(value: str) -> str:
    return '"' + _NOT_QUOTABLE.sub("?", value) + '"'


def _challenge(realm: str, **params: str) -> str:
    """An RFC 6750 section 3 ``WWW-Authenticate`` value."""
    parts = [f"realm={_quoted(realm)}"] + [f"{name}={_quoted(value)}" for name, value in params.items()]
    return "Bearer " + ", ".join(parts)


def _answer(status: int, challenge: str | None, body: dict[str, str]) -> web.Response:
    headers = {hdrs.CACHE_CONTROL: "no-store"}
    if challenge is not None:
        headers[hdrs.WWW_AUTHENTICATE] = challenge
    return web.Response(status=status, headers=headers, text=json.dumps(body), content_type="application/json")


def bearer_auth_middleware(
    verifier: Verifier,
    *,
    realm: str = "tessera",
    public_paths: Collection[str] = (),
    is_public: Callable[[web.Request], bool] | None = None,
    retry_after: int = 30,
) -> Middleware:
    """An aiohttp middleware that demands a valid bearer token on every non-public request.

    :param verifier: verifies the tokens
    :param realm: the ``realm`` of the ``WWW-Authenticate`` challenges
    :param public_paths: exact request paths that need no token (e.g. ``{"/health"}``)
    :param is_public: a predicate for more public requests (e.g. a path prefix, CORS preflights)
    :param retry_after: the ``Retry-After`` seconds of the 503 sent while the issuer's keys are
        unavailable
    """
    public = frozenset(public_paths)

    def invalid_request(description: str) -> web.Response:
        challenge = _challenge(realm, error="invalid_request", error_description=description)
        return _answer(400, challenge, {"error": "invalid_request", "error_description": description})

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        required = _route_scopes(request)
        if not required and (request.path in public or (is_public is not None and is_public(request))):
            return await handler(request)

        # RFC 6750 section 2.3 allows the query string, and 5.3 explains why not to: URLs end up in
        # logs and Referer headers. Refuse it, so clients notice at once.
        if "access_token" in request.query:
            return invalid_request("access tokens are not accepted in the query string")
        authorizations = request.headers.getall(hdrs.AUTHORIZATION, ())
        if len(authorizations) > 1:
            return invalid_request("more than one Authorization header")
        scheme, _, credentials = (authorizations[0] if authorizations else "").strip().partition(" ")
        if scheme.lower() != "bearer":
            # RFC 6750 section 3.1: a request without authentication gets no error code.
            return _answer(401, _challenge(realm), {"error_description": "a bearer access token is required"})
        token = credentials.strip()
        if not token:
            return invalid_request("the bearer token is empty")

        try:
            if _B64TOKEN.fullmatch(token) is None:
                raise InvalidToken("the access token is malformed")
            claims = await verifier.verify(token, required_scopes=required)
        except InsufficientScope as err:
            description = "the access token lacks a required scope"
            challenge = _challenge(
                realm, error="insufficient_scope", error_description=description, scope=" ".join(sorted(required))
            )
            return _answer(
                403,
                challenge,
                {
                    "error": "insufficient_scope",
                    "error_description": description,
                    "scope": " ".join(sorted(err.required_scopes)),
                },
            )
        except JWKSUnavailable:
            response = _answer(503, None, {"error": "temporarily_unavailable"})
            response.headers[hdrs.RETRY_AFTER] = str(retry_after)
            return response
        except InvalidToken as err:
            challenge = _challenge(realm, error="invalid_token", error_description=err.description)
            return _answer(401, challenge, {"error": "invalid_token", "error_description": err.description})

        request[CLAIMS_KEY] = claims
        return await handler(request)

    return bearer_auth
