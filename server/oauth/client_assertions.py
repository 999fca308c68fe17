"""``private_key_jwt``: a client authenticates with a JWT it signed with its own private key
(RFC 7523 sections 2.2 and 3, RFC 7521 section 4.2, OpenID Connect Core section 9).

The request carries ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``
and ``client_assertion``: a JWS whose claims say who signed it (``iss`` = ``sub`` = the client id),
for whom (``aud``: this server), until when (``exp``, at most five minutes ahead) and which one it is
(``jti``). It is checked in three steps, cheapest first:

1. ``check_claims``: the claims alone, before any lookup, so a refusal here costs the same whether
   the client exists or not;
2. ``check_signature``: against the public keys the client registered, inline or at its
   ``jwks_uri`` (``ClientKeySets``, fetched and cached by the offline verifier's ``JWKSCache``);
3. ``spend``: the ``jti`` is recorded in PostgreSQL (``tessera.server.store.assertions``), and an
   assertion whose ``jti`` is already there is a replay, refused on every instance until it expires.
   Hydra accepted a replayed assertion here (GHSA-v3q9-2p3m-7g43); the INSERT is the check.

Only public-key algorithms are accepted (RFC 8725 section 3.1): never ``none``, never an HMAC,
whose "secret" would be the client's published public key. How a refusal is answered and counted
(``invalid_client``, the throttle, the security events) is ``ClientAuthenticator``'s business.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tessera.keys.jwks_cache import CachedKey, CachePolicy, JWKSCache, KeySetUnavailable, parse_jwks
from tessera.server.oauth.parameters import printable
from tessera.server.ops.end_of_turn import EndOfTurn
from tessera.server.store import Client
from tessera.server.store.assertions import AssertionJtiStore

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PRIVATE_KEY_JWT: Final = "private_key_jwt"
#: What the metadata advertises (token_endpoint_auth_signing_alg_values_supported): the algorithms
#: Tessera signs with itself.
ASSERTION_ALGORITHMS: Final = ("ES256", "ES384", "EdDSA", "RS256", "PS256")
#: Also accepted: RFC 9864's name for EdDSA over Ed25519, which openid-client 6 signs Ed25519 keys with.
_ACCEPTED_ALGORITHMS: Final = frozenset({*ASSERTION_ALGORITHMS, "Ed25519"})
_EDDSA: Final = frozenset({"EdDSA", "Ed25519"})

#: RFC 7523 section 3 item 4 lets a server refuse an ``exp`` "unreasonably far in the future":
#: an assertion is made for one request, and its jti must be kept until it expires.
MAX_LIFETIME: Final = 300.0
#: Clock skew tolerated on ``exp``, ``nbf`` and ``iat``, in seconds.
LEEWAY: Final = 30.0
MAX_JTI_LENGTH: Final = 256
MAX_CLIENT_ID_LENGTH: Final = 128
#: A registered key set: at most this many keys, each a public EC, RSA (2048 bits or more) or OKP key.
MAX_KEYS: Final = 20
MAX_JWKS_BYTES: Final = 65536
#: JWKSCache's rules for a client's jwks_uri, but a key the client removes stops working within
#: five minutes whatever max-age its server announces.
CLIENT_JWKS_POLICY: Final = CachePolicy(max_max_age=300.0)
#: RFC 7519 section 5.1 and rfc7523bis: a client assertion is typed "JWT" or
#: "client-authentication+jwt", or not typed; any other type is some other JWT of the client's.
_ASSERTION_TYPES: Final = frozenset({"jwt", "application/jwt", "client-authentication+jwt",
                                     "application/client-authentication+jwt"})
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})

#: Every ``AssertionRefused.reason``: the label of tessera_client_assertions_refused.
REFUSALS: Final = (
    "malformed", "algorithm", "header", "issuer", "audience", "expired", "lifetime", "not_yet_valid", "jti",
    "unknown_client", "method", "unknown_key", "signature", "keys_unavailable", "replayed",
)


class AssertionRefused(Exception):
    """The assertion does not authenticate its client. ``description`` may be shown to the caller
    only when ``public`` (it then says nothing about whether the client exists); ``counts``: the
    refusal is charged to the client's throttle, as a wrong secret is."""

    def __init__(self, reason: str, description: str = "client authentication failed", *,
                 public: bool = False, counts: bool = True) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description if public else "client authentication failed"
        self.counts = counts


@dataclass(frozen=True, slots=True)
class ClientAssertion:
    """A client assertion as sent, decoded but not yet trusted."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    @property
    def issuer(self) -> str | None:
        iss = self.claims.get("iss")
        return iss if isinstance(iss, str) else None


#: base64url's alphabet to base64's, and base64url's missing characters ("+", "/" and the padding
#: "=") to one that strict base64 decoding refuses.
_URLSAFE: Final = bytes.maketrans(b"-_+/=", b"+/!!!")
_PADDING: Final = (b"", b"", b"==", b"=")
#: RFC 7515 section 2: base64url without padding. The last character of a segment whose length
#: leaves 2 (3) characters over may only carry 4 (2) bits: any other would make a second spelling
#: of the same bytes.
_LAST_OF: Final = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}


def _b64url(segment: bytes) -> bytes:
    """Strict base64url (RFC 4648 section 5) without padding: anything else raises ValueError."""
    over = len(segment) % 4
    if over == 1 or (over and segment[-1] not in _LAST_OF[over]):
        raise ValueError("not base64url")
    # strict_mode refuses any character outside the alphabet, which the default mode would skip.
    return binascii.a2b_base64(segment.translate(_URLSAFE) + _PADDING[over], strict_mode=True)


def _segment(segment: bytes, part: str) -> dict[str, Any]:
    try:
        # orjson reads the bytes as they are, three times as fast as json.loads, and refuses what is
        # not UTF-8 JSON, also NaN, Infinity and numbers too large for a float (none a NumericDate).
        value = orjson.loads(_b64url(segment))
    except (ValueError, RecursionError):
        raise AssertionRefused("malformed", f"the client assertion's {part} is not base64url JSON", public=True) from None
    if not isinstance(value, dict):
        raise AssertionRefused("malformed", f"the client assertion's {part} is not a JSON object", public=True)
    return value


def parse_client_assertion(text: str) -> ClientAssertion:
    """RFC 7515 section 7.1: a JWS in compact serialization, with an accepted ``alg`` and no header
    that changes what was signed. Nothing is trusted yet.

    :raises AssertionRefused: reasons "malformed", "algorithm", "header"
    """
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise AssertionRefused("malformed", "the client assertion is not a JWS", public=True) from None
    if raw.count(b".") != 2:
        # Five parts would be a JWE: RFC 7523 allows one, Tessera takes signed assertions only.
        raise AssertionRefused("malformed", "the client assertion is not a JWS in compact serialization", public=True)
    header_segment, payload_segment, signature_segment = raw.split(b".")
    header = _segment(header_segment, "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ACCEPTED_ALGORITHMS:
        raise AssertionRefused(
            "algorithm", f"the client assertion must be signed with one of {', '.join(ASSERTION_ALGORITHMS)}",
            public=True,
        )
    # RFC 7515 section 4.1.11: extensions named in "crit" must be understood, and none is here;
    # "b64" (RFC 7797) changes what was signed.
    if "crit" in header or "b64" in header:
        raise AssertionRefused("header", "the client assertion's 'crit' or 'b64' header is not supported", public=True)
    kid, typ = header.get("kid"), header.get("typ")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise AssertionRefused("header", "the client assertion's kid is not a key id", public=True)
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ASSERTION_TYPES):
        raise AssertionRefused("header", "the client assertion's typ is not JWT", public=True)
    claims = _segment(payload_segment, "claims")
    try:
        signature = _b64url(signature_segment)
    except ValueError:
        raise AssertionRefused("malformed", "the client assertion's signature is not base64url", public=True) from None
    return ClientAssertion(header, claims, raw[: len(header_segment) + 1 + len(payload_segment)], signature)


def _number(value: object) -> float | None:
    # bool is an int subclass, and 1e999 decodes to inf: neither is a NumericDate (nor an integer
    # too large for a float).
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


@dataclass(frozen=True, slots=True)
class AcceptedClaims:
    """What ``spend`` records: the jti, and until when the assertion could be accepted."""

    jti: str
    expires_at: datetime


class ClientAssertions:
    """The ``private_key_jwt`` method: checks an assertion, then spends its jti.

    :param issuer: this server's issuer; ``aud`` must be it, the token endpoint's URL or the URL of
        the endpoint the assertion is presented to
    :param clock: wall-clock seconds since the epoch, for ``exp``, ``nbf`` and ``iat``
    """

    def __init__(
        self, keys: ClientKeySets, jtis: AssertionJtiStore, *, issuer: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._jtis = jtis
        self._issuer = issuer
        self._clock = clock
        self._decoys = _DecoyKeys()
        self._verifications = VerificationBatch()
        self._audiences: dict[str, frozenset[str]] = {}

    def audiences(self, endpoint: str) -> frozenset[str]:
        """RFC 7523 section 3 item 3, OpenID Connect Core section 9: values of ``aud`` that name
        this server at ``endpoint`` ("/token", "/revoke", "/introspect")."""
        ours = self._audiences.get(endpoint)
        if ours is None:
            ours = frozenset({self._issuer, f"{self._issuer}/token", f"{self._issuer}{endpoint}"})
            if len(self._audiences) < 16:  # the server's few endpoint paths
                self._audiences[endpoint] = ours
        return ours

    def check_claims(self, assertion: ClientAssertion, client_id: str, endpoint: str) -> AcceptedClaims:
        """RFC 7523 section 3, items 1-7, without the signature: no I/O, nothing about the client.

        :raises AssertionRefused: with a description the caller may see
        """
        claims = assertion.claims
        # Item 1 and 2: the client is both the issuer and the subject (section 2.2).
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise AssertionRefused("issuer", "the client assertion's iss and sub must both be the client_id", public=True)
        # Item 3. A list is accepted only if every member names this server: an assertion made for
        # several servers could be replayed by one of them to another.
        aud = claims.get("aud")
        ours = self.audiences(endpoint)
        if not (aud in ours if isinstance(aud, str) else isinstance(aud, list) and aud and all(a in ours for a in aud)):
            raise AssertionRefused(
                "audience", f"the client assertion's aud must be the issuer ({self._issuer}) or this endpoint's URL",
                public=True,
            )
        now = self._clock()
        exp = _number(claims.get("exp"))
        if exp is None:  # item 4
            raise AssertionRefused("expired", "the client assertion needs a numeric exp", public=True)
        if now - LEEWAY >= exp:
            raise AssertionRefused("expired", "the client assertion has expired", public=True)
        if exp > now + MAX_LIFETIME + LEEWAY:
            raise AssertionRefused(
                "lifetime", f"the client assertion's exp is more than {MAX_LIFETIME:.0f} seconds ahead", public=True
            )
        for name in ("nbf", "iat"):  # items 5 and 6
            if name in claims:
                value = _number(claims[name])
                if value is None or value > now + LEEWAY:
                    raise AssertionRefused("not_yet_valid", f"the client assertion's {name} is in the future", public=True)
        iat = _number(claims.get("iat"))
        if iat is not None and iat < now - MAX_LIFETIME - LEEWAY:
            raise AssertionRefused("lifetime", "the client assertion's iat is too far in the past", public=True)
        jti = claims.get("jti")  # item 7
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH or not printable(jti):
            raise AssertionRefused(
                "jti", f"the client assertion needs a jti: a unique string of at most {MAX_JTI_LENGTH} characters",
                public=True,
            )
        return AcceptedClaims(jti, datetime.fromtimestamp(exp + LEEWAY, UTC))

    async def check_signature(self, client: Client, assertion: ClientAssertion) -> None:
        """The assertion is signed by one of ``client``'s registered keys (the one its ``kid``
        names, or any that fits its ``alg`` when it names none).

        :raises AssertionRefused: "method", "unknown_key", "signature", "keys_unavailable"
        """
        if client.token_endpoint_auth_method != PRIVATE_KEY_JWT:
            await self.check_against_nothing(assertion)
            raise AssertionRefused("method")
        try:
            keys = await self._keys.candidates(client, assertion.kid)
        except KeySetUnavailable as err:
            # The client's key server is down and nothing usable is cached: not the caller's guess,
            # so not charged to the throttle (a client's outage must not lock it out afterwards).
            raise AssertionRefused("keys_unavailable", str(err), counts=False) from None
        usable = [key for key in keys if _fits(assertion.alg, key)]
        if not usable:
            await self.check_against_nothing(assertion)
            raise AssertionRefused("unknown_key")
        model = JWSRegistry.algorithms[assertion.alg]
        if not await self._verifications.verify(model, assertion, [key.key for key in usable]):
            raise AssertionRefused("signature")

    async def check_against_nothing(self, assertion: ClientAssertion) -> None:
        """One signature check against a key nobody holds: what a refusal of an unknown client, or
        of a key the client does not have, costs, so that its timing matches a wrong signature's."""
        key = await self._decoys.key(assertion.alg)
        await self._verifications.verify(JWSRegistry.algorithms[assertion.alg], assertion, [key])

    async def spend(self, client_id: str, accepted: AcceptedClaims) -> None:
        """Record the jti; a second use, on any instance, before it expires is a replay.

        :raises AssertionRefused: "replayed"
        """
        now = datetime.fromtimestamp(self._clock(), UTC)
        if not await self._jtis.spend(client_id, accepted.jti, expires_at=accepted.expires_at, now=now):
            raise AssertionRefused("replayed", "this client assertion was used before (jti)", public=True)

    async def close(self) -> None:
        await self._keys.close()


def _fits(alg: str, key: CachedKey) -> bool:
    if alg in key.algorithms:
        return True
    # "EdDSA" and "Ed25519" are one algorithm over an Ed25519 key, whichever name the JWK's own
    # "alg" member and the assertion's header use.
    return (
        alg in _EDDSA and bool(_EDDSA & key.algorithms)
        and isinstance(key.key, OKPKey) and key.key.curve_name == "Ed25519"
    )


#: ES256 and ES384 (RFC 7518 section 3.4): the curve, the size of R and of S, and the hash.
_ECDSA: Final = {
    "ES256": ("P-256", 32, ec.ECDSA(hashes.SHA256())),
    "ES384": ("P-384", 48, ec.ECDSA(hashes.SHA384())),
}


def _verifies(model: JWSAlgModel, assertion: ClientAssertion, key: Any) -> bool:
    try:
        ecdsa = _ECDSA.get(model.name)
        if ecdsa is not None and isinstance(key, ECKey):
            # What joserfc's ES verification does, with cryptography directly: without the objects
            # it builds for every call. The key's curve must be the algorithm's, and its key_ops,
            # when it has them, must allow "verify" (get_op_key).
            curve, size, signature_algorithm = ecdsa
            signature = assertion.signature
            if key.curve_name != curve or len(signature) != 2 * size:
                return False
            public_key = key.get_op_key("verify")
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            try:
                public_key.verify(der, assertion.signing_input, signature_algorithm)
            except InvalidSignature:
                return False
            return True
        return bool(model.verify(assertion.signing_input, assertion.signature, key))
    except (ValueError, TypeError, JoseError):
        return False


_Verification = tuple[JWSAlgModel, ClientAssertion, list[Any], "asyncio.Future[bool]"]


class VerificationBatch:
    """Checks, at the end of the current turn of the event loop, every assertion's signature asked
    for in it, one after another: as for the server's own signatures (``tessera.server.oauth.tokens``),
    OpenSSL's code and tables stay warm in the CPU's caches through a run of them, where one check
    per request, between the parsing and the answering of it, evicted them. The wait is one turn of
    the loop. A request that is gone (its client left) is not checked; a check that fails answers
    False to its own request only."""

    def __init__(self) -> None:
        self._pending: EndOfTurn[_Verification] = EndOfTurn(self._verify_all)

    def verify(self, model: JWSAlgModel, assertion: ClientAssertion, keys: list[Any]) -> asyncio.Future[bool]:
        """True if one of ``keys`` verifies the assertion's signature."""
        verified: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.add((model, assertion, keys, verified))
        return verified

    @staticmethod
    def _verify_all(pending: list[_Verification]) -> None:
        for model, assertion, keys, verified in pending:
            if verified.done():
                continue
            try:
                verified.set_result(any(_verifies(model, assertion, key) for key in keys))
            except Exception as exc:  # handed to the one request it belongs to
                verified.set_exception(exc)


class _DecoyKeys:
    """One key per algorithm that no client holds, made the first time it is needed (an RSA key in
    a thread: it takes tens of milliseconds)."""

    def __init__(self) -> None:
        self._keys: dict[str, Any] = {}

    async def key(self, alg: str) -> Any:
        kind = {"ES256": "P-256", "ES384": "P-384", "RS256": "RSA", "PS256": "RSA"}.get(alg, "Ed25519")
        key = self._keys.get(kind)
        if key is None:
            if kind == "RSA":
                key = await asyncio.to_thread(RSAKey.generate_key, 2048, private=False)
            elif kind == "Ed25519":
                key = OKPKey.generate_key("Ed25519", private=False)
            else:
                key = ECKey.generate_key(kind, private=False)
            self._keys[kind] = key
        return key


# --- where a client's keys come from ------------------------------------------------------------------


@dataclass(slots=True)
class _Fetched:
    jwks_uri: str
    cache: JWKSCache


class ClientKeySets:
    """The public keys of private_key_jwt clients, by client id: a registered JWK Set parsed once
    per change, or a ``jwks_uri`` fetched and cached with the offline verifier's rules (Cache-Control
    and ETag, a refetch on an unknown kid at most once per cooldown, the last good set served while
    the URL fails). A new key is usable as soon as the client's row has it (re-applied inline) or
    its URL serves it (the unknown kid refetches).

    :param clock: the caches' clock for freshness and cooldowns
    :param max_clients: key sets held at once; the least recently used one goes first
    """

    def __init__(
        self, *, policy: CachePolicy = CLIENT_JWKS_POLICY, clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._max = max_clients
        self._inline: OrderedDict[str, tuple[Mapping[str, Any], dict[str, CachedKey]]] = OrderedDict()
        self._fetched: OrderedDict[str, _Fetched] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    async def candidates(self, client: Client, kid: str | None) -> list[CachedKey]:
        """The keys of ``client`` an assertion naming ``kid`` (or none) may be signed with.

        :raises KeySetUnavailable: the client's jwks_uri cannot be fetched and nothing usable is cached
        """
        if client.jwks is not None:
            keys = self._inline_keys(client.client_id, client.jwks)
            if kid is None:
                return list(keys.values())
            found = keys.get(kid)
            return [found] if found is not None else []
        if client.jwks_uri is None:
            return []
        cache = await self._cache(client.client_id, client.jwks_uri)
        if kid is not None:
            found = await cache.get_key(kid)
            return [found] if found is not None else []
        if not cache.kids:
            # Loads the set when there is none (a made-up kid fetches no more often than an unknown one).
            await cache.get_key("")
        return [key for name in sorted(cache.kids) if (key := await cache.get_key(name)) is not None]

    def _inline_keys(self, client_id: str, jwks: Mapping[str, Any]) -> dict[str, CachedKey]:
        held = self._inline.get(client_id)
        if held is not None and (held[0] is jwks or held[0] == jwks):  # the cached row's own dict, mostly
            self._inline.move_to_end(client_id)
            return held[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            keys = parse_jwks(jwks)
        self._inline[client_id] = (jwks, keys)
        if len(self._inline) > self._max:
            self._inline.popitem(last=False)
        return keys

    async def _cache(self, client_id: str, jwks_uri: str) -> JWKSCache:
        held = self._fetched.get(client_id)
        if held is not None and held.jwks_uri == jwks_uri:
            self._fetched.move_to_end(client_id)
            return held.cache
        if held is not None:
            await held.cache.close()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._policy.timeout), headers={"User-Agent": "tessera"}
            )
        cache = JWKSCache(jwks_uri, session=self._session, policy=self._policy, clock=self._clock)
        self._fetched[client_id] = _Fetched(jwks_uri, cache)
        if len(self._fetched) > self._max:
            _, evicted = self._fetched.popitem(last=False)
            await evicted.cache.close()
        return cache

    async def close(self) -> None:
        fetched, self._fetched = self._fetched, OrderedDict()
        for held in fetched.values():
            await held.cache.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- registering keys ---------------------------------------------------------------------------------


def registered_jwks(document: object) -> dict[str, Any]:
    """A client's JWK Set as it will be stored: every key public, for signatures, usable with one
    of the accepted algorithms, and with a ``kid`` (its RFC 7638 thumbprint when it has none).

    :raises ValueError: with a message naming the key at fault
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWK Set: expected {"keys": [...]}')
    given = document["keys"]
    if not given:
        raise ValueError("the JWK Set has no keys")
    if len(given) > MAX_KEYS:
        raise ValueError(f"the JWK Set has more than {MAX_KEYS} keys")
    keys: list[dict[str, Any]] = []
    for number, jwk in enumerate(given, 1):
        keys.append(_registered_key(jwk, number))
    kids = [key["kid"] for key in keys]
    if len(set(kids)) != len(kids):
        raise ValueError("two keys of the JWK Set have the same kid")
    result = {"keys": keys}
    if len(json.dumps(result)) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWK Set is larger than {MAX_JWKS_BYTES} bytes")
    return result


def _registered_key(jwk: object, number: int) -> dict[str, Any]:
    if not isinstance(jwk, dict):
        raise ValueError(f"key {number} is not a JSON object")
    name = f"key {jwk.get('kid', number)!s}"
    if jwk.get("kty") == "oct" or "k" in jwk:
        raise ValueError(f"{name} is a symmetric key: register public keys only (EC, RSA or OKP)")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ValueError(f"{name} is a private key: register only its public part")
    if jwk.get("kty") not in ("EC", "RSA", "OKP"):
        raise ValueError(f"{name}: kty must be EC, RSA or OKP")
    if "alg" in jwk and jwk["alg"] not in _ACCEPTED_ALGORITHMS:
        raise ValueError(f"{name}: alg must be one of {', '.join(ASSERTION_ALGORITHMS)}")
    if "kid" in jwk and (not isinstance(jwk["kid"], str) or not jwk["kid"] or len(jwk["kid"]) > 256):
        raise ValueError(f"{name}: kid must be a non-empty string")
    stored = dict(jwk)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            imported = JWKRegistry.import_key(stored)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError(f"{name} is not a valid {stored['kty']} public key") from None
    if isinstance(imported, RSAKey) and imported.raw_value.key_size < 2048:
        raise ValueError(f"{name} is an RSA key shorter than 2048 bits")
    if "kid" not in stored:
        stored["kid"] = imported.thumbprint()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        usable = parse_jwks({"keys": [stored]}).get(stored["kid"])
    if usable is None or not any(_fits(alg, usable) for alg in _ACCEPTED_ALGORITHMS):
        raise ValueError(
            f"{name} cannot verify {', '.join(ASSERTION_ALGORITHMS)} signatures"
            " (a public key for signing: RSA of 2048 bits or more, P-256, P-384 or Ed25519)"
        )
    return stored


def jwks_uri_problem(uri: str) -> str | None:
    """Why ``uri`` may not be a client's jwks_uri, or None: https, or http for a loopback host."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https URL"
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        return "may use http only for a loopback host (127.0.0.1, [::1], localhost)"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment or len(uri) > 2048 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return "must have no fragment, spaces or control characters, and at most 2048 characters"
    return None


__all__ = [
    "ASSERTION_ALGORITHMS", "ASSERTION_TYPE", "CLIENT_JWKS_POLICY", "LEEWAY", "MAX_LIFETIME", "PRIVATE_KEY_JWT",
    "REFUSALS", "AcceptedClaims", "AssertionRefused", "ClientAssertion", "ClientAssertions", "ClientKeySets",
    "jwks_uri_problem", "parse_client_assertion", "registered_jwks",
]
