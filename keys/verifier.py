"""Offline verification of Tessera's access tokens (RFC 9068) by resource servers.

``keys/verifier.py -> keys/jwks_cache.py -> GET /.well-known/jwks.json``

A token is checked in the order RFC 9068 section 4 and RFC 8725 section 3 ask for: bounded size,
JWS compact shape, an ``alg`` this verifier was configured for (public-key only), ``typ`` at+jwt,
no header that would let the token choose its own key, the key by ``kid`` from the cached JWKS,
the signature, and only then the claims: ``iss``, ``aud``, ``exp``, ``nbf``/``iat`` with a small
leeway, and the scopes the caller demands. Each failure raises one subclass of
:class:`InvalidToken` with a stable ``code``.

Signatures are checked by joserfc's own algorithm objects with keys imported once per JWKS fetch;
the header and claims are each base64- and JSON-decoded exactly once.

All of this is :class:`AccessTokenVerifier`, which finds keys through a :class:`KeySource`.
:class:`Verifier`, what resource servers use, is that core fed from the issuer's JWKS over HTTP
(:class:`tessera.keys.jwks_cache.JWKSCache`); the token server feeds the same core from its own keyring
(:class:`FixedKeySet` of the JWKS it publishes) to read its tokens back for introspection.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, NoReturn, Protocol

import aiohttp
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from .jwks_cache import ASYMMETRIC_ALGORITHMS, CachedKey, CachePolicy, JWKSCache, KeySetUnavailable, parse_jwks

__all__ = [
    "RFC9068_REQUIRED_CLAIMS",
    "AccessTokenClaims",
    "AccessTokenVerifier",
    "BadSignature",
    "Expired",
    "FixedKeySet",
    "InsufficientScope",
    "InvalidClaim",
    "InvalidToken",
    "InvalidTokenType",
    "JWKSUnavailable",
    "KeyAlgorithmMismatch",
    "KeySource",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "UnknownKey",
    "UnsupportedAlgorithm",
    "UnsupportedHeader",
    "Verifier",
    "WrongAudience",
    "WrongIssuer",
]

#: RFC 9068 section 2.2: claims every JWT access token carries.
RFC9068_REQUIRED_CLAIMS: Final = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")

#: RFC 9068 section 2.1 / 4: "at+jwt", or its full media type; compared case-insensitively (RFC 2045).
_ACCESS_TOKEN_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})

#: Header parameters that would let a token name its own key (RFC 8725 section 3.10). The key must
#: always come from the issuer's JWKS by ``kid``, so a token carrying one of these is refused outright.
_KEY_CARRYING_HEADERS: Final = ("jku", "jwk", "x5u", "x5c")

_DEFAULT_MAX_TOKEN_BYTES: Final = 16 * 1024


# -- failures -------------------------------------------------------------------------------------


class InvalidToken(Exception):
    """The token cannot be accepted. ``code`` is stable and machine-readable; ``description`` is
    short, contains nothing secret (never the token) and may be shown to the client, e.g. as an
    RFC 6750 ``error_description``."""

    code: ClassVar[str] = "invalid_token"
    default_description: ClassVar[str] = "the access token is invalid"

    def __init__(self, description: str | None = None) -> None:
        self.description = description or self.default_description
        super().__init__(self.description)


class MalformedToken(InvalidToken):
    """Not a JWS compact serialization of JSON header and claims, or larger than allowed."""

    code = "malformed_token"
    default_description = "the access token is malformed"


class UnsupportedAlgorithm(InvalidToken):
    """``alg`` is not one this verifier was configured for (this includes "none" and HS*)."""

    code = "unsupported_algorithm"
    default_description = "the token's signing algorithm is not accepted"


class InvalidTokenType(InvalidToken):
    """``typ`` is not "at+jwt" (RFC 9068 section 4): e.g. an ID token or another kind of JWT."""

    code = "invalid_token_type"
    default_description = "the token is not an access token (typ must be at+jwt)"


class UnsupportedHeader(InvalidToken):
    """A header this verifier refuses: ``jku``/``jwk``/``x5u``/``x5c``, ``crit``, ``b64``."""

    code = "unsupported_header"
    default_description = "the token carries a header parameter that is not accepted"


class UnknownKey(InvalidToken):
    """No ``kid``, or the issuer's key set (refetched once, rate-limited) has no key with that kid:
    the key was never published, or was revoked."""

    code = "unknown_key"
    default_description = "the token's signing key is not known"


class KeyAlgorithmMismatch(InvalidToken):
    """The key named by ``kid`` cannot be used with the token's ``alg`` (its ``kty``, ``crv`` or
    JWK ``alg`` says otherwise)."""

    code = "key_algorithm_mismatch"
    default_description = "the token's algorithm does not match its key"


class BadSignature(InvalidToken):
    """The signature does not verify with the key named by ``kid``."""

    code = "bad_signature"
    default_description = "the token's signature is invalid"


class MissingClaim(InvalidToken):
    """A required claim is absent. ``claim`` names it."""

    code = "missing_claim"
    default_description = "the token lacks a required claim"

    def __init__(self, claim: str) -> None:
        self.claim = claim
        super().__init__(f"the token lacks the '{claim}' claim")


class InvalidClaim(InvalidToken):
    """A claim has the wrong JSON type (e.g. a string ``exp``, a non-finite number). ``claim`` names it."""

    code = "invalid_claim"
    default_description = "the token has an invalid claim"

    def __init__(self, claim: str) -> None:
        self.claim = claim
        super().__init__(f"the token's '{claim}' claim is invalid")


class WrongIssuer(InvalidToken):
    """``iss`` is not the configured issuer."""

    code = "wrong_issuer"
    default_description = "the token was issued by another issuer"


class WrongAudience(InvalidToken):
    """``aud`` does not name this resource server (RFC 9068 section 4, RFC 8707)."""

    code = "wrong_audience"
    default_description = "the token is meant for another audience"


class Expired(InvalidToken):
    """``exp`` has passed, leeway included."""

    code = "expired"
    default_description = "the token has expired"


class NotYetValid(InvalidToken):
    """``nbf`` or ``iat`` is in the future beyond the leeway."""

    code = "not_yet_valid"
    default_description = "the token is not valid yet"


class InsufficientScope(InvalidToken):
    """The token is valid but lacks scopes the caller demanded (RFC 6750 section 3.1: 403)."""

    code = "insufficient_scope"
    default_description = "the token lacks a required scope"

    def __init__(self, required_scopes: Iterable[str], granted_scopes: Iterable[str]) -> None:
        self.required_scopes = frozenset(required_scopes)
        self.granted_scopes = frozenset(granted_scopes)
        super().__init__()


class JWKSUnavailable(InvalidToken):
    """No key set could be fetched, or the last good one is older than stale-if-error allows. The
    token may be fine: this is the resource server's problem, not the client's (answer 503)."""

    code = "jwks_unavailable"
    default_description = "the issuer's signing keys are unavailable"


# -- the claims -----------------------------------------------------------------------------------


class AccessTokenClaims(Mapping[str, Any]):
    """The claims of a verified access token: a read-only mapping with typed accessors.

    The top level cannot be changed; nested values (e.g. an ``aud`` list) are the decoded JSON.
    """

    __slots__ = ("_claims", "_scopes", "header")

    def __init__(self, claims: dict[str, Any], scopes: frozenset[str], header: Mapping[str, Any]) -> None:
        self._claims = claims
        self._scopes = scopes
        #: the verified JOSE header (``alg``, ``kid``, ``typ``), read-only
        self.header: Mapping[str, Any] = MappingProxyType(header)

    def __getitem__(self, name: str) -> Any:
        return self._claims[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims)

    def __len__(self) -> int:
        return len(self._claims)

    def __repr__(self) -> str:
        return f"AccessTokenClaims(sub={self.sub!r}, client_id={self.client_id!r}, scope={self.scope!r})"

    @property
    def iss(self) -> str:
        return str(self._claims["iss"])

    @property
    def sub(self) -> str:
        """The user id, or the client id for client_credentials tokens."""
        return str(self._claims.get("sub", ""))

    @property
    def client_id(self) -> str:
        return str(self._claims.get("client_id", ""))

    @property
    def aud(self) -> tuple[str, ...]:
        """The audiences, as a tuple (``aud`` may be one string or an array, RFC 7519 section 4.1.3)."""
        aud = self._claims["aud"]
        return (aud,) if isinstance(aud, str) else tuple(aud)

    @property
    def jti(self) -> str:
        return str(self._claims.get("jti", ""))

    @property
    def exp(self) -> float:
        return float(self._claims["exp"])

    @property
    def iat(self) -> float | None:
        return _optional_number(self._claims.get("iat"))

    @property
    def nbf(self) -> float | None:
        return _optional_number(self._claims.get("nbf"))

    @property
    def auth_time(self) -> float | None:
        """When the user logged in (user grants only, RFC 9068 section 2.2.1)."""
        return _optional_number(self._claims.get("auth_time"))

    @property
    def sid(self) -> str | None:
        sid = self._claims.get("sid")
        return sid if isinstance(sid, str) else None

    @property
    def scope(self) -> str:
        """The ``scope`` claim as issued: space-separated."""
        scope = self._claims.get("scope")
        return scope if isinstance(scope, str) else ""

    @property
    def scopes(self) -> frozenset[str]:
        return self._scopes

    def has_scopes(self, *scopes: str) -> bool:
        """True when every one of ``scopes`` was granted."""
        return self._scopes.issuperset(scopes)


def _optional_number(value: Any) -> float | None:
    return None if value is None else float(value)


# -- decoding -------------------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    # NaN/Infinity are not JSON (RFC 8259 section 6); Python would accept them, and a NaN "exp"
    # compares false with everything, so it would never expire.
    raise ValueError(f"{name} is not JSON")


_json_decoder: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_segment(segment: bytes, part: str) -> dict[str, Any]:
    """One base64url segment of the JWS to its JSON object (RFC 7515 section 7.1)."""
    try:
        value = _json_decoder.decode(urlsafe_b64decode(segment).decode("utf-8"))
    except (ValueError, RecursionError):
        # ValueError covers bad base64, bad UTF-8 and bad JSON; RecursionError deeply nested JSON.
        raise MalformedToken(f"the token's {part} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise MalformedToken(f"the token's {part} is not a JSON object")
    return value


def _is_number(value: object) -> bool:
    # bool is an int subclass; true/false are not NumericDates. 1e999 decodes to inf.
    if type(value) is int:
        return True
    return isinstance(value, float) and math.isfinite(value)


def _scope_set(scopes: Iterable[str] | str) -> frozenset[str]:
    if isinstance(scopes, str):  # "a b" is a list of two scopes, not of three letters
        return frozenset(scopes.split())
    return frozenset(scopes)


# -- where keys come from ---------------------------------------------------------------------------


class KeySource(Protocol):
    """Where :class:`AccessTokenVerifier` finds the public key a token's ``kid`` names."""

    async def get_key(self, kid: str) -> CachedKey | None:
        """The key, or None when the issuer does not publish ``kid``.

        :raises KeySetUnavailable: when no key set can be consulted at all
        """
        ...


class FixedKeySet:
    """A key set known in advance, kept by ``kid``: e.g. the JWKS an issuer itself publishes.

    :param document: a JWK Set (RFC 7517 section 5); keys that cannot verify are skipped
    """

    __slots__ = ("_keys",)

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._keys = parse_jwks(document)

    @property
    def algorithms(self) -> frozenset[str]:
        """Every JWS ``alg`` some key of the set may verify."""
        return frozenset(alg for key in self._keys.values() for alg in key.algorithms)

    async def get_key(self, kid: str) -> CachedKey | None:
        return self._keys.get(kid)


# -- the verifier ---------------------------------------------------------------------------------


def _checked_issuer(issuer: object) -> str:
    if not isinstance(issuer, str) or not issuer:
        raise ValueError("issuer must be a non-empty string")
    return issuer


class AccessTokenVerifier:
    """The verification core: checks RFC 9068 access tokens against the keys a :class:`KeySource`
    holds by ``kid``, with no I/O of its own. Resource servers use :class:`Verifier`, which feeds it
    from the issuer's JWKS.

    :param keys: where the key named by a token's ``kid`` is looked up
    :param issuer: the exact ``iss`` expected
    :param audience: the ``aud`` to accept (one, or a collection of which any is accepted); None
        accepts any audience, for a caller that checks ``aud`` itself (the token server's
        introspection, per asking client). ``aud`` must be present either way.
    :param algorithms: the JWS ``alg`` values to accept; public-key algorithms only
    :param leeway: seconds of clock skew tolerated on ``nbf`` and ``iat`` (and on ``exp``, unless
        ``expiry_leeway`` says otherwise)
    :param expiry_leeway: seconds of clock skew tolerated on ``exp``; default: ``leeway``
    :param required_claims: claims that must be present, besides ``iss``, ``aud`` and ``exp``
        (always required); default: those RFC 9068 section 2.2 requires
    :param max_token_bytes: longer tokens are refused before any parsing
    :param clock: wall-clock time in seconds since the epoch, for ``exp``/``nbf``/``iat``
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str | Collection[str] | None,
        algorithms: Collection[str],
        leeway: float = 30,
        expiry_leeway: float | None = None,
        required_claims: Collection[str] = RFC9068_REQUIRED_CLAIMS,
        max_token_bytes: int = _DEFAULT_MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _checked_issuer(issuer)
        audiences = None if audience is None else frozenset((audience,) if isinstance(audience, str) else audience)
        if audiences is not None and (not audiences or not all(isinstance(a, str) and a for a in audiences)):
            raise ValueError("audience must be a non-empty string, or a collection of them")
        if isinstance(algorithms, str):
            raise ValueError('algorithms must be a collection of names, e.g. ["ES256"]')
        self._models = self._algorithm_models(algorithms)
        expiry_leeway = leeway if expiry_leeway is None else expiry_leeway
        for value in (leeway, expiry_leeway):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError("leeway must be a finite number of seconds >= 0")
        if max_token_bytes < 512:
            raise ValueError("max_token_bytes must be at least 512")

        self.issuer = issuer
        self.audiences = audiences
        self.algorithms = frozenset(self._models)
        self.leeway = float(leeway)
        self.expiry_leeway = float(expiry_leeway)
        self._keys = keys
        self._required_claims = tuple(dict.fromkeys(("iss", "aud", "exp", *required_claims)))
        self._max_token_bytes = max_token_bytes
        self._clock = clock

    @staticmethod
    def _algorithm_models(algorithms: Collection[str]) -> dict[str, JWSAlgModel]:
        names = list(algorithms)
        if not names:
            raise ValueError("algorithms must name at least one algorithm")
        for name in names:
            if name not in ASYMMETRIC_ALGORITHMS:
                # RFC 8725 section 2.1/3.1: a verifier of public-key tokens must never accept "none"
                # or an HMAC: the "secret" would be the published public key.
                raise ValueError(
                    f"algorithm {name!r} is not accepted: use public-key algorithms "
                    f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
                )
        # Taken from joserfc's table directly rather than through JWSRegistry.get_alg: get_alg emits a
        # SecurityWarning for "EdDSA" on every call (RFC 9864 deprecates that polymorphic name in
        # favour of "Ed25519"). Tessera signs with "EdDSA" over Ed25519, and which algorithms to accept
        # is decided here, once, by the operator's configuration, so the warning has nothing to add.
        return {name: JWSRegistry.algorithms[name] for name in names}

    async def verify(self, token: str | bytes, *, required_scopes: Iterable[str] | str = ()) -> AccessTokenClaims:
        """Verify ``token`` and return its claims.

        :param required_scopes: scopes the token must all have; a string is space-separated
        :raises InvalidToken: one subclass per failure; see the module's exception classes
        """
        raw = self._bounded_bytes(token)
        if raw.count(b".") != 2:
            raise MalformedToken("the token is not a JWS in compact serialization")
        header_segment, payload_segment, signature_segment = raw.split(b".")

        header = _decode_segment(header_segment, "header")
        model = self._check_header(header)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnknownKey("the token has no kid")
        try:
            entry = await self._keys.get_key(kid)
        except KeySetUnavailable as err:
            raise JWKSUnavailable(str(err)) from None
        if entry is None:
            raise UnknownKey()
        if model.name not in entry.algorithms:
            raise KeyAlgorithmMismatch()

        try:
            signature = urlsafe_b64decode(signature_segment)
        except ValueError:
            raise MalformedToken("the token's signature is not base64url") from None
        signing_input = raw[: len(header_segment) + 1 + len(payload_segment)]
        try:
            valid = model.verify(signing_input, signature, entry.key)
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise BadSignature()

        claims = _decode_segment(payload_segment, "claims")
        scopes = self._check_claims(claims)
        if required_scopes:
            required = _scope_set(required_scopes)
            if not scopes.issuperset(required):
                raise InsufficientScope(required, scopes)
        return AccessTokenClaims(claims, scopes, header)

    def _bounded_bytes(self, token: str | bytes) -> bytes:
        # Bound the size before any decoding: a huge "token" must cost nothing to refuse.
        if isinstance(token, str):
            if len(token) > self._max_token_bytes:
                raise MalformedToken("the token is too large")
            try:
                return token.encode("ascii")
            except UnicodeEncodeError:
                raise MalformedToken("the token is not ASCII") from None
        if isinstance(token, (bytes, bytearray, memoryview)):
            if len(token) > self._max_token_bytes:
                raise MalformedToken("the token is too large")
            return bytes(token)
        raise MalformedToken("the token is not a string")

    def _check_header(self, header: dict[str, Any]) -> JWSAlgModel:
        alg = header.get("alg")
        model = self._models.get(alg) if isinstance(alg, str) else None
        if model is None:
            raise UnsupportedAlgorithm()
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise InvalidTokenType()
        for name in _KEY_CARRYING_HEADERS:
            if name in header:
                raise UnsupportedHeader(f"the token's '{name}' header is not accepted: keys come from the JWKS")
        # RFC 7515 section 4.1.11: extensions listed in "crit" must be understood or the token
        # rejected; this verifier implements none. "b64" (RFC 7797) changes what was signed.
        if "crit" in header:
            raise UnsupportedHeader("the token's 'crit' header names extensions that are not supported")
        if "b64" in header:
            raise UnsupportedHeader("the token's 'b64' header is not accepted")
        return model

    def _check_claims(self, claims: dict[str, Any]) -> frozenset[str]:
        """RFC 9068 section 4 (after the signature): issuer, audience, times. Returns the scopes."""
        for name in self._required_claims:
            if name not in claims:
                raise MissingClaim(name)
        if claims["iss"] != self.issuer:
            raise WrongIssuer()
        aud = claims["aud"]
        audiences = self.audiences
        if isinstance(aud, str):
            if audiences is not None and aud not in audiences:
                raise WrongAudience()
        elif isinstance(aud, list):
            if audiences is not None and not any(isinstance(a, str) and a in audiences for a in aud):
                raise WrongAudience()
        else:
            raise InvalidClaim("aud")

        now = self._clock()
        exp = claims["exp"]
        if not _is_number(exp):
            raise InvalidClaim("exp")
        if now - self.expiry_leeway >= exp:  # RFC 7519 section 4.1.4: valid only before exp
            raise Expired()
        for name in ("nbf", "iat"):
            if name in claims:
                value = claims[name]
                if not _is_number(value):
                    raise InvalidClaim(name)
                if value > now + self.leeway:
                    raise NotYetValid(f"the token's '{name}' is in the future")
        if "auth_time" in claims and not _is_number(claims["auth_time"]):
            raise InvalidClaim("auth_time")
        for name in ("sub", "client_id", "jti", "sid"):
            if name in claims and not isinstance(claims[name], str):
                raise InvalidClaim(name)

        if "scope" not in claims:
            return frozenset()
        scope = claims["scope"]
        if not isinstance(scope, str):
            raise InvalidClaim("scope")
        return frozenset(scope.split())


class Verifier(AccessTokenVerifier):
    """Verifies Tessera's RFC 9068 access tokens offline, against the issuer's published JWKS.

    :param issuer: the exact ``iss`` Tessera puts in its tokens (its ``TESSERA_ISSUER``)
    :param audience: this resource server's identifier (the ``resource``/``audience`` clients ask
        tokens for); or several, any of which is accepted
    :param algorithms: the JWS ``alg`` values to accept; public-key algorithms only
    :param jwks_url: the JWKS URL; when None it is discovered from the issuer's RFC 8414 metadata
    :param leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``
    :param session: an aiohttp session for fetching the JWKS (left open on close); default: own one
    :param required_claims: claims that must be present, besides ``iss``, ``aud`` and ``exp``
        (always required); default: those RFC 9068 section 2.2 requires
    :param max_token_bytes: longer tokens are refused before any parsing
    :param cache_policy: JWKS cache timings (see :class:`tessera.keys.jwks_cache.CachePolicy`)
    :param jwks_cache: a ready :class:`JWKSCache` to use instead (then ``jwks_url``, ``session`` and
        ``cache_policy`` must not be given); its creator closes it
    :param clock: wall-clock time in seconds since the epoch, for ``exp``/``nbf``/``iat``
    """

    def __init__(
        self,
        issuer: str,
        audience: str | Collection[str],
        algorithms: Collection[str] = ("ES256",),
        jwks_url: str | None = None,
        leeway: float = 30,
        *,
        session: aiohttp.ClientSession | None = None,
        required_claims: Collection[str] = RFC9068_REQUIRED_CLAIMS,
        max_token_bytes: int = _DEFAULT_MAX_TOKEN_BYTES,
        cache_policy: CachePolicy | None = None,
        jwks_cache: JWKSCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if audience is None:  # the core's "any audience" is not for resource servers
            raise ValueError("audience must be a non-empty string, or a collection of them")
        owns_jwks = jwks_cache is None
        if jwks_cache is None:
            jwks_cache = JWKSCache(jwks_url, issuer=_checked_issuer(issuer), session=session, policy=cache_policy)
        elif jwks_url is not None or session is not None or cache_policy is not None:
            raise ValueError("give jwks_cache, or jwks_url/session/cache_policy, not both")
        super().__init__(
            jwks_cache,
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            leeway=leeway,
            required_claims=required_claims,
            max_token_bytes=max_token_bytes,
            clock=clock,
        )
        self._jwks = jwks_cache
        self._owns_jwks = owns_jwks

    @property
    def jwks(self) -> JWKSCache:
        """The key set cache (for its ``jwks_url``, ``kids`` and ``fetch_count``)."""
        return self._jwks

    async def prefetch(self) -> None:
        """Fetch the key set now, e.g. at start-up, so the first request does not wait for it.

        :raises JWKSUnavailable: when it cannot be fetched (verification will keep trying)
        """
        try:
            await self._jwks.refresh()
        except KeySetUnavailable as err:
            raise JWKSUnavailable(str(err)) from None

    async def close(self) -> None:
        """Close the key set cache (and its HTTP session) if this verifier made it."""
        if self._owns_jwks:
            await self._jwks.close()

    async def __aenter__(self) -> Verifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
