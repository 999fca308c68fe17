"""The resource server's copy of the issuer's JSON Web Key Set (RFC 7517 section 5).

``keys/verifier.py -> keys/jwks_cache.py -> GET /.well-known/jwks.json``

The cache answers one question, "which public key has this ``kid``?", without touching the network
on the hot path. It fetches the set when it has none, refreshes it when its HTTP freshness lifetime
(``Cache-Control: max-age``, revalidated with ``If-None-Match``) runs out, and refetches early at
most once per cooldown when a token names a ``kid`` it does not hold (the issuer published a new
key). All callers that need a fetch at the same moment share one request. While the issuer cannot
be reached the last good set keeps serving for a bounded stale-if-error time (RFC 5861 section 4).

Keys are imported with joserfc once per fetch and kept by ``kid`` together with the JWS algorithms
each one may verify, so a verification does no key parsing at all.

This module knows nothing about tokens: ``get_key`` answers a key or ``None``, or raises
:class:`KeySetUnavailable`; :mod:`tessera.keys.verifier` turns those into ``InvalidToken`` subclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from multidict import CIMultiDictProxy

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "CachePolicy",
    "CachedKey",
    "JWKSCache",
    "KeySetUnavailable",
    "metadata_urls",
    "parse_jwks",
]

log = logging.getLogger(__name__)

#: The JWS algorithms a verifier may be configured for: public-key signatures only (RFC 8725
#: section 3.1). "EdDSA" is RFC 8037's name, which Tessera signs with; "Ed25519" is RFC 9864's.
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA", "Ed25519"}
)

#: JWK members that only private keys carry (RFC 7518 sections 6.2.2, 6.3.2; RFC 8037 section 2).
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_EDDSA_CURVES: Final = frozenset({"Ed25519", "Ed448"})
_MIN_RSA_BITS: Final = 2048

PublicKey = ECKey | RSAKey | OKPKey
Clock = Callable[[], float]


class KeySetUnavailable(Exception):
    """No usable key set: none could ever be fetched, or the last good one is past stale-if-error."""


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long a fetched key set may be used, and how often the issuer may be asked again.

    All values are seconds.
    """

    #: freshness lifetime when the JWKS response names none (no ``max-age``)
    default_max_age: float = 300.0
    #: the issuer's ``max-age`` is clamped into [min_max_age, max_max_age]; the floor also applies
    #: to ``no-cache``/``no-store`` answers, so a misconfigured issuer never causes a fetch per request
    min_max_age: float = 30.0
    max_max_age: float = 86400.0
    #: an unknown ``kid`` triggers at most one refetch per cooldown (panva/jose ``cooldownDuration``)
    cooldown: float = 30.0
    #: after a failed fetch, the next attempt waits at least this long
    retry_interval: float = 5.0
    #: how long past its freshness the last good set still serves while the issuer is unreachable
    stale_if_error: float = 86400.0
    #: total time for one fetch (metadata + JWKS)
    timeout: float = 10.0
    #: largest JWKS or metadata document accepted, in bytes
    max_document_bytes: int = 512 * 1024

    def __post_init__(self) -> None:
        for name in ("default_max_age", "min_max_age", "max_max_age", "cooldown", "retry_interval", "stale_if_error"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"CachePolicy.{name} must be a finite number >= 0")
        if self.min_max_age > self.max_max_age:
            raise ValueError("CachePolicy.min_max_age must not exceed max_max_age")
        if not self.timeout > 0:
            raise ValueError("CachePolicy.timeout must be > 0")
        if self.max_document_bytes < 1024:
            raise ValueError("CachePolicy.max_document_bytes must be at least 1024")


@dataclass(frozen=True, slots=True)
class CachedKey:
    """One verification key from the set, imported once."""

    kid: str
    key: PublicKey
    #: the JWS ``alg`` values this key may verify: those its ``kty``/``crv`` support, narrowed to the
    #: JWK's own ``alg`` member when it has one (RFC 7517 section 4.4)
    algorithms: frozenset[str]


def _usable_algorithms(key: PublicKey, jwk_alg: object) -> frozenset[str]:
    usable = set()
    for name in ASYMMETRIC_ALGORITHMS:
        model = JWSRegistry.algorithms[name]
        if model.key_type != key.key_type:
            continue
        if name == "EdDSA" and (not isinstance(key, OKPKey) or key.curve_name not in _EDDSA_CURVES):
            continue  # an X25519/X448 key is an OKP key too, but for key agreement only
        try:
            model.check_key(key)  # use == "sig", and the curve for ES*/Ed25519
        except JoseError:
            continue
        usable.add(name)
    if jwk_alg is not None:
        usable &= {jwk_alg} if isinstance(jwk_alg, str) else set()
    return frozenset(usable)


def _import_public_key(jwk: Mapping[str, Any]) -> CachedKey | None:
    """One JWK to a CachedKey, or None (with the reason logged) when it cannot verify signatures."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        log.debug("JWKS: skipping a key without kid")
        return None
    if _PRIVATE_MEMBERS & jwk.keys():
        # A published private key is a serious issuer misconfiguration; never hold it.
        log.warning("JWKS: skipping key %s: it carries private members", kid)
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if jwk.get("kty") not in ("EC", "RSA", "OKP"):
        return None
    try:
        with warnings.catch_warnings():
            # joserfc warns on import of RSA keys under 2048 bits; we refuse those just below.
            warnings.simplefilter("ignore", SecurityWarning)
            key = JWKRegistry.import_key(dict(jwk))
    except (JoseError, ValueError, TypeError, KeyError) as err:
        log.warning("JWKS: skipping key %s: %s", kid, err.__class__.__name__)
        return None
    if not isinstance(key, (ECKey, RSAKey, OKPKey)) or key.is_private:
        return None
    if isinstance(key, RSAKey) and key.raw_value.key_size < _MIN_RSA_BITS:
        log.warning("JWKS: skipping RSA key %s: shorter than %d bits", kid, _MIN_RSA_BITS)
        return None
    algorithms = _usable_algorithms(key, jwk.get("alg"))
    if not algorithms:
        return None
    return CachedKey(kid=kid, key=key, algorithms=algorithms)


def parse_jwks(document: Any) -> dict[str, CachedKey]:
    """RFC 7517 section 5: a JWK Set to verification keys by ``kid``.

    Keys that cannot verify signatures (private, ``use`` other than "sig", unsupported ``kty``,
    short RSA, no ``kid``) are skipped, not fatal: one odd key must not hide the others.

    :raises ValueError: when the document is not a JWK Set at all
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: no 'keys' array")
    keys: dict[str, CachedKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        entry = _import_public_key(jwk)
        if entry is None:
            continue
        if entry.kid in keys:
            # Two keys under one kid would make the choice depend on order; trust neither.
            log.warning("JWKS: kid %s appears twice; ignoring both", entry.kid)
            keys[entry.kid] = CachedKey(entry.kid, entry.key, frozenset())
            continue
        keys[entry.kid] = entry
    return {kid: entry for kid, entry in keys.items() if entry.algorithms}


def metadata_urls(issuer: str) -> list[str]:
    """Where the RFC 8414 metadata of ``issuer`` may be.

    RFC 8414 section 3.1 inserts the well-known segment between host and path; many servers (and
    OpenID Connect Discovery) append it instead. For an issuer without a path both are the same URL.
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    inserted = urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", ""))
    appended = issuer.rstrip("/") + "/.well-known/oauth-authorization-server"
    return [inserted] if inserted == appended else [inserted, appended]


def freshness_lifetime(headers: CIMultiDictProxy[str], policy: CachePolicy) -> float:
    """RFC 9111 section 4.2.1: seconds a response stays fresh, clamped to the policy's bounds."""
    directives: dict[str, str] = {}
    for header in headers.getall("Cache-Control", ()):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            directives[name.strip().lower()] = value.strip().strip('"')
    lifetime = policy.default_max_age
    if "no-store" in directives or "no-cache" in directives:
        lifetime = 0.0
    elif _delta_seconds(directives.get("max-age", "")):
        lifetime = float(directives["max-age"])
    age = headers.get("Age", "")
    if _delta_seconds(age):  # RFC 9111 section 5.1: time already spent in caches on the way
        lifetime -= int(age)
    return min(max(lifetime, policy.min_max_age), policy.max_max_age)


def _delta_seconds(text: str) -> bool:
    """RFC 9111 section 1.2.2: delta-seconds = 1*DIGIT, ASCII digits only ("²".isdigit() is true)."""
    return text.isascii() and text.isdigit()


class _FetchFailed(Exception):
    pass


class JWKSCache:
    """The issuer's key set, fetched over HTTP and cached by ``kid``.

    Give either ``jwks_url``, or ``issuer`` to discover the JWKS through RFC 8414 metadata (whose
    ``issuer`` must equal the one configured). ``session`` is used as given and left open; without
    one the cache makes its own and closes it in :meth:`close`.

    ``clock`` measures the cache's own durations (freshness, cooldown, stale-if-error); inject one to
    test time-dependent behaviour without sleeping.
    """

    def __init__(
        self,
        jwks_url: str | None = None,
        *,
        issuer: str | None = None,
        session: aiohttp.ClientSession | None = None,
        policy: CachePolicy | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if jwks_url is None and issuer is None:
            raise ValueError("JWKSCache needs jwks_url or issuer")
        for name, url in (("jwks_url", jwks_url), ("issuer", issuer)):
            if url is not None and urlsplit(url).scheme not in ("https", "http"):
                raise ValueError(f"{name} must be an https:// (or http://) URL")
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._session = session
        self._owns_session = session is None
        self.policy = policy if policy is not None else CachePolicy()
        self._clock = clock

        self._keys: dict[str, CachedKey] | None = None
        self._etag: str | None = None
        self._fresh_until = -math.inf
        self._last_attempt = -math.inf
        self._last_attempt_failed = False
        self._last_error = "the key set has not been fetched yet"
        self._inflight: asyncio.Task[None] | None = None
        self._closed = False

        #: counters for operators and tests: completed HTTP exchanges with the JWKS endpoint
        self.fetch_count = 0

    @property
    def jwks_url(self) -> str | None:
        """The JWKS URL, once known (given, or discovered)."""
        return self._jwks_url

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently held (usable or not)."""
        return frozenset(self._keys or ())

    async def get_key(self, kid: str) -> CachedKey | None:
        """The key named ``kid``, or None when the issuer does not publish it.

        Fetches only when there is no usable set, or when ``kid`` is unknown and the cooldown has
        passed; a set past its freshness is refreshed in the background while it keeps serving.

        :raises KeySetUnavailable: when no set is usable (never fetched, or past stale-if-error)
        """
        now = self._clock()
        if self._keys is None or now >= self._fresh_until + self.policy.stale_if_error:
            await self._fetch_now()
        elif now >= self._fresh_until and self._may_retry(now):
            self._start_fetch()
        keys = self._keys
        assert keys is not None  # _fetch_now raised otherwise
        entry = keys.get(kid)
        if entry is not None:
            return entry
        # RFC 7517 gives no other signal of a new key than its kid: refetch, but rate-limited, so a
        # stream of tokens with made-up kids cannot turn this server into a load generator.
        if self._inflight is None and self._clock() - self._last_attempt < self.policy.cooldown:
            return None
        self._start_fetch()
        await self._wait_for_fetch()
        return self._usable_keys().get(kid)

    async def refresh(self) -> None:
        """Fetch now (sharing a fetch already in flight), ignoring freshness and cooldown.

        :raises KeySetUnavailable: when the fetch failed and no usable set remains
        """
        self._start_fetch()
        await self._wait_for_fetch()
        self._usable_keys()

    async def close(self) -> None:
        """Stop a fetch in flight and close the HTTP session if the cache made it."""
        self._closed = True
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> JWKSCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- fetching ---------------------------------------------------------------------------------

    def _may_retry(self, now: float) -> bool:
        return not (self._last_attempt_failed and now - self._last_attempt < self.policy.retry_interval)

    def _usable_keys(self) -> dict[str, CachedKey]:
        if self._keys is None or self._clock() >= self._fresh_until + self.policy.stale_if_error:
            raise KeySetUnavailable(self._last_error)
        return self._keys

    async def _fetch_now(self) -> None:
        if self._inflight is None:
            if not self._may_retry(self._clock()):
                raise KeySetUnavailable(self._last_error)
            self._start_fetch()
        await self._wait_for_fetch()
        self._usable_keys()

    def _start_fetch(self) -> None:
        if self._closed:
            raise KeySetUnavailable("the key set cache is closed")
        if self._inflight is None:
            self._last_attempt = self._clock()
            self._inflight = asyncio.get_running_loop().create_task(self._fetch(), name="tessera-jwks-fetch")

    async def _wait_for_fetch(self) -> None:
        task = self._inflight
        if task is None:
            return
        try:
            # shield: one caller giving up (its request was cancelled) must not cancel the fetch
            # the other callers are waiting for.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this caller is being cancelled
            # the fetch was cancelled under us by close()
            raise KeySetUnavailable("the key set cache was closed") from None

    async def _fetch(self) -> None:
        """The one fetch in flight. Records its outcome; never raises (but for cancellation)."""
        try:
            async with asyncio.timeout(self.policy.timeout):
                await self._exchange()
        except (aiohttp.ClientError, TimeoutError, _FetchFailed, ValueError, RecursionError) as err:
            self._last_attempt_failed = True
            reason = str(err) if isinstance(err, _FetchFailed) else err.__class__.__name__
            self._last_error = f"the issuer's key set could not be fetched ({reason})"
            log.warning("JWKS fetch failed: %s", reason)
        else:
            self._last_attempt_failed = False
        finally:
            if self._inflight is asyncio.current_task():
                self._inflight = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _get_json(self, url: str, headers: Mapping[str, str]) -> tuple[int, CIMultiDictProxy[str], Any]:
        async with self._http().get(url, headers=headers) as response:
            if response.status != 200:
                return response.status, response.headers, None
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > self.policy.max_document_bytes:
                    raise _FetchFailed(f"{url} answered more than {self.policy.max_document_bytes} bytes")
            return 200, response.headers, json.loads(bytes(body))

    async def _discover_jwks_url(self) -> str:
        """RFC 8414 section 3: the JWKS URL from the issuer's metadata."""
        assert self._issuer is not None
        for url in metadata_urls(self._issuer):
            status, _, metadata = await self._get_json(url, {"Accept": "application/json"})
            if status == 404:
                continue
            if status != 200:
                raise _FetchFailed(f"metadata answered HTTP {status}")
            if not isinstance(metadata, dict):
                raise _FetchFailed("metadata is not a JSON object")
            # RFC 8414 section 3.3: a metadata document for another issuer must not be used,
            # or an attacker who controls it could substitute their own keys.
            if metadata.get("issuer") != self._issuer:
                raise _FetchFailed("metadata issuer does not match the configured issuer")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("https", "http"):
                raise _FetchFailed("metadata has no usable jwks_uri")
            return jwks_uri
        raise _FetchFailed("no metadata found for the issuer")

    async def _exchange(self) -> None:
        if self._jwks_url is None:
            self._jwks_url = await self._discover_jwks_url()
        headers = {"Accept": "application/jwk-set+json, application/json"}
        if self._etag is not None and self._keys is not None:
            headers["If-None-Match"] = self._etag
        status, response_headers, document = await self._get_json(self._jwks_url, headers)
        self.fetch_count += 1
        if status == 304 and self._keys is not None:
            pass  # RFC 9110 section 15.4.5: the set we hold is still current
        elif status == 200:
            keys = parse_jwks(document)
            if self._keys is not None and keys.keys() != self._keys.keys():
                log.info("JWKS changed: %d keys, kids %s", len(keys), sorted(keys))
            self._keys = keys
            self._etag = response_headers.get("ETag")
        else:
            raise _FetchFailed(f"JWKS answered HTTP {status}")
        self._fresh_until = self._clock() + freshness_lifetime(response_headers, self.policy)
