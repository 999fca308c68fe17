"""Who is calling: client authentication (RFC 6749 section 2.3), before any grant runs.

Four methods, registered by name: ``client_secret_basic``, ``client_secret_post``,
``private_key_jwt`` (RFC 7523 section 2.2: a JWT signed with the client's own key,
``tessera.server.oauth.client_assertions``) and ``none`` (public clients). Using two at once is
``invalid_request`` (section 2.3). Every failure to authenticate is the same ``invalid_client``
answer, whether the client is unknown or the secret wrong, and both cost one argon2 verification
(for an assertion: one signature check); a client id alone costs one query, whether the client
exists or not. A client with a secret may send it either way; a private_key_jwt client has no
secret, and a client with a secret cannot use an assertion.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from tessera.server.ops import events
from tessera.server.store.caches import ClientCache, RecentFailures
from tessera.server.oauth.client_assertions import (
    ASSERTION_TYPE, MAX_CLIENT_ID_LENGTH, PRIVATE_KEY_JWT, AcceptedClaims, AssertionRefused, ClientAssertion,
    ClientAssertions, parse_client_assertion,
)
from tessera.server.oauth.errors import InvalidClient, InvalidRequest
from tessera.server.oauth.parameters import printable
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.store import Client, ClientStore
from tessera.server.oauth.throttle import Attempt, LoginThrottle

AUTH_METHODS = ("client_secret_basic", "client_secret_post", PRIVATE_KEY_JWT, "none")


@dataclass(frozen=True, slots=True)
class Credentials:
    method: str
    client_id: str
    secret: str | None
    assertion: ClientAssertion | None = None


def _printable(text: str) -> bool:
    return bool(text) and printable(text)


def parse_basic(header: str) -> tuple[str, str]:
    """RFC 7617 with RFC 6749 section 2.3.1's twist: id and secret are form-urlencoded first."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient("unsupported authentication scheme; use Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient("malformed Basic credentials") from None
    raw_id, colon, raw_secret = decoded.partition(":")
    if not colon:
        raise InvalidClient("malformed Basic credentials")
    try:
        client_id, secret = unquote_plus(raw_id, errors="strict"), unquote_plus(raw_secret, errors="strict")
    except UnicodeDecodeError:
        raise InvalidClient("malformed Basic credentials") from None
    if not _printable(client_id) or not _printable(secret):
        raise InvalidClient("malformed Basic credentials")
    return client_id, secret


def _assertion_credentials(form: Mapping[str, str]) -> Credentials:
    """RFC 7521 section 4.2: ``client_assertion_type`` and ``client_assertion``, and ``client_id``
    only if it names the client the assertion is about (RFC 7523 section 3 item 2)."""
    assertion_type, text = form.get("client_assertion_type"), form.get("client_assertion")
    if assertion_type is None or text is None:
        raise InvalidRequest("client_assertion_type and client_assertion go together")
    if assertion_type != ASSERTION_TYPE:
        raise InvalidClient(f"unsupported client_assertion_type; use {ASSERTION_TYPE}")
    try:
        assertion = parse_client_assertion(text)
    except AssertionRefused as refused:
        raise InvalidClient(refused.description) from None
    client_id = form.get("client_id", assertion.issuer)
    if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH or not _printable(client_id):
        raise InvalidClient("the client assertion's iss and sub must both be the client_id")
    return Credentials(PRIVATE_KEY_JWT, client_id, None, assertion)


def extract_credentials(authorization: str | None, form: Mapping[str, str]) -> Credentials:
    form_id, form_secret = form.get("client_id"), form.get("client_secret")
    if "client_assertion" in form or "client_assertion_type" in form:
        if authorization is not None or form_secret is not None:
            raise InvalidRequest("use one client authentication method, not two")
        return _assertion_credentials(form)
    if authorization is not None:
        client_id, secret = parse_basic(authorization)
        if form_secret is not None:
            raise InvalidRequest("use one client authentication method, not two")
        if form_id is not None and form_id != client_id:
            raise InvalidRequest("client_id in the body differs from the authenticated client")
        return Credentials("client_secret_basic", client_id, secret)
    if form_id is None:
        raise InvalidClient("client authentication is required")
    if form_secret is not None:
        return Credentials("client_secret_post", form_id, form_secret)
    return Credentials("none", form_id, None)


class VerifiedSecretCache:
    """Remembers, for a few minutes, that a presented secret matched a client's stored hash.

    Keyed by a MAC of (client_id, secret) under a per-process random key, so the cache holds no
    secret; the value is the stored hash that was checked, so a rotated secret misses at once. The
    MAC is keyed BLAKE2b (RFC 7693 section 2.9), one call into Python's own C code, about a third
    of what HMAC-SHA-256 through OpenSSL 3 costs per request.
    This spares the argon2 cost on every client_credentials request, the bottleneck that held
    Hydra to 87 requests/s on 2 vCPU (hydra#1478).
    """

    def __init__(self, ttl: float = 300.0, size: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def _digest(self, client_id: str, secret: str) -> bytes:
        return hashlib.blake2b(f"{client_id}\x00{secret}".encode(), key=self._key, digest_size=32).digest()

    def matches(self, client_id: str, secret: str, stored_hash: str) -> bool:
        entry = self._entries.get(self._digest(client_id, secret))
        return entry is not None and entry[1] > self._clock() and hmac.compare_digest(entry[0], stored_hash)

    def remember(self, client_id: str, secret: str, stored_hash: str) -> None:
        digest = self._digest(client_id, secret)
        self._entries[digest] = (stored_hash, self._clock() + self._ttl)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


class ClientAuthenticator:
    """Authenticates the caller, throttled per (client, address) (tessera.server.oauth.throttle).

    The common case costs no query and no write: the client row comes from ``ClientCache``, the
    pair's failure counter is known to be clean (``RecentFailures``), and a secret that matched
    recently is recognised by ``VerifiedSecretCache``. Otherwise the client row and its failure
    counter come back together in one query. Only an attempt that has to run argon2 (a new, wrong
    or unknown secret) is charged to the throttle first, so a throttled attempt never reaches argon2.
    Only a caller that knows a secret is answered from memory: what anyone can send (a client id
    alone, a wrong secret) costs the same for a known client as for an unknown one.
    """

    def __init__(
        self,
        clients: ClientStore,
        hasher: SecretHasher,
        cache: VerifiedSecretCache,
        throttle: LoginThrottle,
        rows: ClientCache | None = None,
        recent_failures: RecentFailures | None = None,
        *,
        assertions: ClientAssertions | None = None,
    ) -> None:
        self._clients = clients
        self._hasher = hasher
        self._cache = cache
        self._throttle = throttle
        self._rows = rows if rows is not None else ClientCache()
        self._recent = recent_failures
        self._assertions = assertions

    @property
    def client_rows(self) -> ClientCache:
        """The client-row cache: its ``generation`` moves with every change to any client, which
        is what the registered browser origins (tessera.server.http.cors) are kept current by."""
        return self._rows

    async def authenticate(
        self, authorization: str | None, form: Mapping[str, str], *, remote: str | None, endpoint: str = "/token"
    ) -> Client:
        """The client ``authorization`` (a header) and ``form`` authenticate at ``endpoint`` (a path:
        an assertion's ``aud`` may be that endpoint's URL)."""
        credentials = extract_credentials(authorization, form)
        if len(credentials.client_id) > MAX_CLIENT_ID_LENGTH:
            raise InvalidClient("client authentication failed")
        if credentials.assertion is not None:
            return await self._authenticate_assertion(credentials.client_id, credentials.assertion, endpoint, remote)
        if credentials.method == "none":
            # Nothing to guess: a public client has no secret, and no argon2 runs. The row is read
            # every time, never from memory: a known id answered from the cache and an unknown one
            # read from the database would tell by their timing which client ids exist.
            client = await self._clients.get(credentials.client_id)
            if client is None or not client.is_public:
                raise InvalidClient("client authentication failed")
            return client
        secret = credentials.secret
        assert secret is not None
        attempt = self._throttle.attempt("client", credentials.client_id, remote)
        recent = self._recent
        if recent is not None and recent.clean(attempt.subject.key):
            # Known to hold no failures, so not throttled: a cached row and secret need no query.
            known = self._rows.get(credentials.client_id)
            if known is not None and known.secret_hash is not None:
                if self._cache.matches(known.client_id, secret, known.secret_hash):
                    return known
        generation = self._rows.generation
        marks = recent.marks if recent is not None else 0
        client, failures = await self._clients.get_with_failures(credentials.client_id, attempt.subject.key)
        if client is not None:
            self._rows.put(client, generation)
        if recent is not None and (failures is None or not failures.failures):
            recent.forget(attempt.subject.key, marks)
        # Checked even when the secret is cached: otherwise a throttled attacker would still learn,
        # at full speed, which guess is the secret the real client has just used.
        self._throttle.refuse_if_blocked(attempt, failures)
        if client is not None and client.secret_hash is not None:
            if self._cache.matches(client.client_id, secret, client.secret_hash):
                if failures is not None and failures.failures:
                    await self._throttle.succeeded(attempt)
                return client
        stored_hash = client.secret_hash if client is not None else None
        self._hasher.refuse_if_full()
        matched = await self._throttle.attempt_once(
            attempt, secret, lambda: self._hasher.verify(stored_hash, secret), succeeded=bool, against=stored_hash or ""
        )
        if client is None or stored_hash is None or not matched:
            events.login_failed("client", credentials.client_id, remote)
            raise InvalidClient("client authentication failed")
        if self._hasher.needs_rehash(stored_hash):
            new_hash = await self._hasher.hash(secret)
            await self._clients.rehash_secret(client.client_id, stored_hash, new_hash)
        else:
            self._cache.remember(client.client_id, secret, stored_hash)
        return client

    async def _authenticate_assertion(
        self, client_id: str, assertion: ClientAssertion, endpoint: str, remote: str | None
    ) -> Client:
        """private_key_jwt, the secret path's twin: the claims first (no lookup, so the same for a
        client that exists and one that does not), then the row and the throttle as for a secret,
        then the signature, then the jti. A caller answered from memory (a cached row, a counter
        known clean) must have signed with the client's key; a refusal costs one signature check
        whether the client exists or not, and is charged to the client's throttle."""
        assertions = self._assertions
        if assertions is None:
            raise InvalidClient("private_key_jwt is not enabled here")
        attempt = self._throttle.attempt("client", client_id, remote)
        try:
            accepted = assertions.check_claims(assertion, client_id, endpoint)
        except AssertionRefused as refused:
            raise await self._assertion_refused(attempt, client_id, remote, refused) from None
        recent = self._recent
        checked: tuple[Client, AssertionRefused] | None = None
        if recent is not None and recent.clean(attempt.subject.key):
            known = self._rows.get(client_id)
            if known is not None and known.token_endpoint_auth_method == PRIVATE_KEY_JWT:
                try:
                    await assertions.check_signature(known, assertion)
                except AssertionRefused as refused:
                    checked = known, refused  # perhaps signed with a key the cached row lacks: read it
                else:
                    await self._spend(attempt, client_id, accepted, remote)
                    return known
        generation = self._rows.generation
        marks = recent.marks if recent is not None else 0
        client, failures = await self._clients.get_with_failures(client_id, attempt.subject.key)
        if client is not None:
            self._rows.put(client, generation)
        if recent is not None and (failures is None or not failures.failures):
            recent.forget(attempt.subject.key, marks)
        self._throttle.refuse_if_blocked(attempt, failures)
        try:
            if client is None:
                await assertions.check_against_nothing(assertion)
                raise AssertionRefused("unknown_client")
            if checked is not None and (checked[0].jwks, checked[0].jwks_uri) == (client.jwks, client.jwks_uri):
                # Already checked against these very keys: a second check would make a refusal
                # of a known client slower than one of an unknown client.
                raise checked[1]
            await assertions.check_signature(client, assertion)
        except AssertionRefused as refused:
            raise await self._assertion_refused(attempt, client_id, remote, refused) from None
        await self._spend(attempt, client_id, accepted, remote)
        if failures is not None and failures.failures:
            await self._throttle.succeeded(attempt)
        return client

    async def _spend(self, attempt: Attempt, client_id: str, accepted: AcceptedClaims, remote: str | None) -> None:
        assert self._assertions is not None
        try:
            await self._assertions.spend(client_id, accepted)
        except AssertionRefused as refused:
            raise await self._assertion_refused(attempt, client_id, remote, refused) from None

    async def _assertion_refused(
        self, attempt: Attempt, client_id: str, remote: str | None, refused: AssertionRefused
    ) -> InvalidClient:
        """Report and charge a refused assertion; the error to raise (or 429, past the limit)."""
        if refused.reason == "replayed":
            events.client_assertion_replayed(client_id, remote)
        else:
            events.client_assertion_refused(refused.reason, client_id, remote)
        if refused.reason == "keys_unavailable":
            events.client_jwks_unavailable(client_id, str(refused))
        if refused.counts:
            events.login_failed("client", client_id, remote)
            await self._throttle.reserve(attempt)  # raises TooManyAttempts past the limit
        return InvalidClient(refused.description)
