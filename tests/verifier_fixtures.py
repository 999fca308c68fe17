"""A real, small token issuer for the verifier's tests: an aiohttp server on 127.0.0.1 that serves
RFC 8414 metadata and a JWKS made with joserfc, and signs RFC 9068 access tokens in exactly
Tessera's shape. It can add, retire and remove keys, change its Cache-Control, count requests,
and be stopped and started again on the same port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from aiohttp import web
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

PrivateKey = ECKey | RSAKey | OKPKey
Algorithm = Literal["ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "PS256"]

ALL_ALGORITHMS: tuple[Algorithm, ...] = ("ES256", "ES384", "EdDSA", "RS256", "PS256")
AUDIENCE = "https://orders.example"


def generate_key(alg: str) -> PrivateKey:
    """A fresh private key for ``alg``, with kid = its RFC 7638 thumbprint (as Tessera does)."""
    key: PrivateKey
    if alg in ("ES256", "ES384", "ES512"):
        key = ECKey.generate_key({"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg])
    elif alg in ("EdDSA", "Ed25519"):
        key = OKPKey.generate_key("Ed25519")
    elif alg in ("RS256", "PS256"):
        key = RSAKey.generate_key(2048)
    else:
        raise ValueError(alg)
    key.ensure_kid()  # joserfc: kid = RFC 7638 thumbprint
    return key


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A JWS compact string built by hand, for attacks joserfc would refuse to produce."""
    head = b64url(json.dumps(dict(header)).encode())
    body = b64url(json.dumps(dict(claims)).encode())
    return f"{head}.{body}.{b64url(signature)}"


def sign_unchecked(header: Mapping[str, Any], payload: bytes, key: PrivateKey, alg: str) -> str:
    """Sign with ``alg`` whatever the header says, skipping joserfc's header checks (for headers
    it would refuse to produce, like an unknown ``crit``)."""
    head = b64url(json.dumps(dict(header)).encode())
    signing_input = f"{head}.{b64url(payload)}".encode()
    signature = jws.JWSRegistry.algorithms[alg].sign(signing_input, key)
    return f"{signing_input.decode()}.{b64url(signature)}"


def sign(header: Mapping[str, Any], payload: bytes, key: PrivateKey) -> str:
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864; Tessera signs with it by contract.
        warnings.simplefilter("ignore", SecurityWarning)
        return jws.serialize_compact(dict(header), payload, key, algorithms=[header["alg"]])


@dataclass
class IssuerKey:
    alg: str
    key: PrivateKey

    @property
    def kid(self) -> str:
        kid = self.key.kid
        assert kid is not None
        return kid

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False, alg=self.alg, use="sig"))


class LocalIssuer:
    """A Tessera stand-in on http://127.0.0.1:PORT. ``url`` is its issuer identifier."""

    def __init__(self, *, max_age: int | None = 300, etag: bool = True) -> None:
        self.keys: dict[str, IssuerKey] = {}
        self.active: dict[str, str] = {}  # alg -> kid that signs by default
        self.max_age = max_age
        self.cache_control: str | None = None  # overrides max_age when set
        self.etag = etag
        self.jwks_requests = 0
        self.jwks_not_modified = 0
        self.metadata_requests = 0
        self.metadata_issuer: str | None = None  # to serve another issuer's metadata
        self.extra_jwks: list[dict[str, Any]] = []  # raw JWKs added to the set as they are
        self.jwks_status: int | None = None  # answer the JWKS with this error status instead
        self.jwks_body: bytes | None = None  # serve these bytes as the JWKS instead
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- keys ---------------------------------------------------------------------------------

    def add_key(self, alg: str = "ES256", *, activate: bool = True) -> IssuerKey:
        issuer_key = IssuerKey(alg, generate_key(alg))
        self.keys[issuer_key.kid] = issuer_key
        if activate or alg not in self.active:
            self.active[alg] = issuer_key.kid
        return issuer_key

    def remove_key(self, kid: str) -> None:
        del self.keys[kid]
        self.active = {alg: k for alg, k in self.active.items() if k != kid}

    def jwks_document(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys.values()] + self.extra_jwks}

    # -- tokens -------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": "user-42",
            "aud": AUDIENCE,
            "exp": now + 900,
            "iat": now,
            "nbf": now,
            "jti": uuid.uuid4().hex,
            "client_id": "orders-web",
            "scope": "orders.read profile",
            "auth_time": now - 60,
        }
        for name, value in overrides.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def issue(
        self,
        alg: str = "ES256",
        *,
        kid: str | None = None,
        header: Mapping[str, Any] | None = None,
        drop_header: tuple[str, ...] = (),
        **claim_overrides: Any,
    ) -> str:
        """An access token in Tessera's shape, signed by the active key for ``alg`` (or ``kid``'s)."""
        issuer_key = self.keys[kid if kid is not None else self.active[alg]]
        protected: dict[str, Any] = {"typ": "at+jwt", "alg": alg, "kid": issuer_key.kid}
        protected.update(header or {})
        for name in drop_header:
            protected.pop(name, None)
        payload = json.dumps(self.claims(**claim_overrides)).encode()
        if header or drop_header:  # odd headers joserfc's serialize_compact would refuse to write
            return sign_unchecked(protected, payload, issuer_key.key, alg)
        return sign(protected, payload, issuer_key.key)

    def issue_payload(self, payload: bytes, alg: str = "ES256") -> str:
        """A token whose claims are exactly ``payload`` (any bytes), properly signed."""
        issuer_key = self.keys[self.active[alg]]
        return sign({"typ": "at+jwt", "alg": alg, "kid": issuer_key.kid}, payload, issuer_key.key)

    # -- HTTP ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port, "the issuer has not been started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_requests += 1
        return web.json_response(
            {
                "issuer": self.metadata_issuer or self.url,
                "jwks_uri": self.jwks_url,
                "token_endpoint": f"{self.url}/token",
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        if self.jwks_status is not None:
            return web.Response(status=self.jwks_status, text="unavailable")
        body = self.jwks_body or json.dumps(self.jwks_document(), sort_keys=True).encode()
        headers = {"Content-Type": "application/jwk-set+json"}
        if self.cache_control is not None:
            headers["Cache-Control"] = self.cache_control
        elif self.max_age is not None:
            headers["Cache-Control"] = f"public, max-age={self.max_age}"
        if self.etag:
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            headers["ETag"] = etag
            if request.headers.get("If-None-Match") == etag:
                self.jwks_not_modified += 1
                return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server", self._metadata)
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: pass as a claim override to leave the claim out: ``issuer.issue(sub=DROP)``
DROP: Any = _Drop()
_DROP = DROP


@asynccontextmanager
async def running_issuer(*algorithms: str, **options: Any) -> AsyncIterator[LocalIssuer]:
    """A started LocalIssuer with one active key per algorithm (ES256 when none named)."""
    issuer = LocalIssuer(**options)
    for alg in algorithms or ("ES256",):
        issuer.add_key(alg)
    await issuer.start()
    try:
        yield issuer
    finally:
        await issuer.stop()


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    """A running LocalIssuer with one active key for each of ALL_ALGORITHMS."""
    async with running_issuer(*ALL_ALGORITHMS) as running:
        yield running
