"""Clients as code (CONTRACT.md, "Clients as code"): a TOML file of ``[[client]]`` tables that the
registered clients are made to match, by ``tessera clients apply FILE [--prune]`` and at every
start with TESSERA_CLIENTS_FILE.

Three parts, in the order a file goes through them:

- The registration rules, shared with ``tessera clients create``: ``check_registration`` takes what
  an operator asked for (flags or a table, ``ClientFields``) and returns the client as it will be
  stored (``Registration``), or raises ``RegistrationError`` naming the field at fault. Each
  caller names the fields its own way (``--redirect-uris`` or ``redirect_uris``).
- The file: ``load_clients_file`` reads the TOML (``tomllib``) and each client's secret file, and
  checks every table; any error refuses the whole file with one line naming the client and field.
- The apply: ``apply_clients`` compares the file with the stored rows and writes only the
  differences, in one transaction under an advisory lock, so instances starting together apply
  the file once and the later ones find nothing to change. A stored secret hash is kept when the
  file's secret still matches it. Every write to ``clients`` notifies ``tessera_clients``
  (migration 0006), so every instance forgets its cached rows and verified secrets of a changed
  client at the commit.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tessera.server.http.cors import origin_problem
from tessera.server.oauth.authorization import registered_redirect_uri_problem
from tessera.server.oauth.client_assertions import PRIVATE_KEY_JWT, jwks_uri_problem, registered_jwks
from tessera.server.oauth.grants.token_exchange import GRANT_TYPE as TOKEN_EXCHANGE
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.ops import events
from tessera.server.settings import Settings, SettingsError
from tessera.server.store import Client, ClientStore
from tessera.server.store.clients import ClientChange, ClientExists
from tessera.server.store.families import FamilyStore

log = logging.getLogger("tessera")

GRANT_TYPES = ("client_credentials", "password", "refresh_token", "authorization_code", TOKEN_EXCHANGE)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", PRIVATE_KEY_JWT, "none")
SECRET_METHODS = ("client_secret_basic", "client_secret_post")
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 1024
SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
CLIENT_ID = re.compile(r"^[A-Za-z0-9._~:@-]{1,128}$")
# Why a client's families are revoked when a change no longer allows them (refresh_families.revoked_reason).
REVOKED_BY_CLIENT_CHANGE = "client_changed"


# --- the registration rules (shared with `tessera clients create`) ------------------------------


class RegistrationError(ValueError):
    """A client that may not be registered; ``field`` is the field at fault, as the rules name it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


Namer = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class ClientFields:
    """A client as an operator asked for it, not yet checked. Field names are the file's keys;
    ``has_secret`` says whether a secret was given (on standard input, or in a file)."""

    client_id: str
    grant_types: list[str]
    audiences: list[str]
    scopes: list[str] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)
    first_party: bool = False
    allowed_origins: list[str] = field(default_factory=list)
    refresh_token_cookie: bool = False
    token_endpoint_auth_method: str | None = None
    public: bool = False
    jwks: object | None = None
    jwks_uri: str | None = None
    exchange_from: list[str] = field(default_factory=list)
    has_secret: bool = False


@dataclass(frozen=True, slots=True)
class Registration:
    """A client as it will be stored (without its secret)."""

    client_id: str
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    first_party: bool
    allowed_origins: tuple[str, ...]
    refresh_token_cookie: bool
    token_endpoint_auth_method: str
    jwks: Mapping[str, Any] | None
    jwks_uri: str | None
    exchange_from: tuple[str, ...]

    @property
    def has_secret(self) -> bool:
        return self.token_endpoint_auth_method in SECRET_METHODS

    def same_as(self, client: Client) -> bool:
        """True when ``client`` as stored already is this registration (the secret aside)."""
        return (
            client.grant_types == frozenset(self.grant_types)
            and client.scopes == self.scopes
            and client.audiences == self.audiences
            and client.redirect_uris == self.redirect_uris
            and client.first_party == self.first_party
            and client.allowed_origins == self.allowed_origins
            and client.refresh_token_cookie == self.refresh_token_cookie
            and client.token_endpoint_auth_method == self.token_endpoint_auth_method
            and client.jwks == self.jwks
            and client.jwks_uri == self.jwks_uri
            and client.exchange_from == self.exchange_from
        )


def split_words(raw: str) -> list[str]:
    """The command line's list form: words separated by spaces or commas."""
    return raw.replace(",", " ").split()


def _items(items: Iterable[str], name: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    """A list field's items, each once, in the order given."""
    kept = tuple(dict.fromkeys(items))
    for item in kept:
        if not item or any(ch.isspace() for ch in item):
            raise RegistrationError(name, f"{name}: {item!r} is empty or contains spaces; give one item per entry")
        if any(ch < " " or ch == "\x7f" for ch in item):
            raise RegistrationError(name, f"{name}: control characters are not allowed")
        if pattern is not None and not pattern.match(item):
            raise RegistrationError(name, f"{name}: {item!r} is not allowed")
    return kept


def check_registration(asked: ClientFields, name: Namer) -> Registration:
    """The rules every registered client follows, whoever registers it; ``name`` spells a field
    as the caller's user knows it (a flag, a key)."""

    def refuse(field_name: str, message: str) -> RegistrationError:
        return RegistrationError(field_name, message)

    if not CLIENT_ID.match(asked.client_id):
        raise refuse("client_id", f"{name('client_id')}: 1-128 characters from A-Z a-z 0-9 . _ ~ : @ -")
    jwks, jwks_uri = _client_keys(asked, name)
    method = _auth_method(asked, name, jwks is not None or jwks_uri is not None)
    public = method == "none"
    grant_types = _items(asked.grant_types, name("grant_types"))
    if not grant_types or any(g not in GRANT_TYPES for g in grant_types):
        raise refuse("grant_types", f"{name('grant_types')}: choose from {', '.join(GRANT_TYPES)}")
    if public and "client_credentials" in grant_types:
        raise refuse(
            "grant_types", f"{name('grant_types')}: a public client cannot use client_credentials (RFC 6749 section 4.4)"
        )
    if "refresh_token" in grant_types and not {"password", "authorization_code"} & set(grant_types):
        raise refuse(
            "grant_types",
            f"{name('grant_types')}: refresh_token needs a grant that issues refresh tokens (authorization_code or password)",
        )
    redirect_uris = _items(asked.redirect_uris, name("redirect_uris"))
    for uri in redirect_uris:
        problem = registered_redirect_uri_problem(uri)
        if problem is not None:
            raise refuse("redirect_uris", f"{name('redirect_uris')}: {uri!r} {problem}")
    if "authorization_code" in grant_types and not redirect_uris:
        raise refuse("redirect_uris", f"{name('redirect_uris')}: a client with authorization_code needs at least one")
    scopes = _items(asked.scopes, name("scopes"), SCOPE)
    audiences = _items(asked.audiences, name("audiences"))
    if not audiences:
        raise refuse("audiences", f"{name('audiences')}: at least one audience is required (it becomes the tokens' aud)")
    if public and asked.has_secret:
        raise refuse("client_secret", f"a public client has no secret; drop {name('client_secret')}")
    exchange_from = _exchange_from(asked, name, grant_types, public)
    allowed_origins = _allowed_origins(asked, name, grant_types, public)
    return Registration(
        client_id=asked.client_id, grant_types=grant_types, scopes=scopes, audiences=audiences,
        redirect_uris=redirect_uris, first_party=asked.first_party, allowed_origins=allowed_origins,
        refresh_token_cookie=asked.refresh_token_cookie, token_endpoint_auth_method=method, jwks=jwks,
        jwks_uri=jwks_uri, exchange_from=exchange_from,
    )


def _client_keys(asked: ClientFields, name: Namer) -> tuple[dict[str, Any] | None, str | None]:
    """A private_key_jwt client's public keys: a JWK Set, or the URL of one; (None, None) for neither."""
    if asked.jwks is not None and asked.jwks_uri is not None:
        raise RegistrationError("jwks", f"{name('jwks')} and {name('jwks_uri')}: give one of them, not both")
    if asked.jwks is not None:
        try:
            return registered_jwks(asked.jwks), None
        except ValueError as exc:
            raise RegistrationError("jwks", f"{name('jwks')}: {exc}") from None
    if asked.jwks_uri is not None:
        problem = jwks_uri_problem(asked.jwks_uri)
        if problem is not None:
            raise RegistrationError("jwks_uri", f"{name('jwks_uri')}: {asked.jwks_uri!r} {problem}")
        return None, asked.jwks_uri
    return None, None


def _auth_method(asked: ClientFields, name: Namer, keys_given: bool) -> str:
    """The token endpoint authentication method asked for, or what the other fields imply."""
    method = asked.token_endpoint_auth_method
    if method is not None and method not in AUTH_METHODS:
        raise RegistrationError(
            "token_endpoint_auth_method", f"{name('token_endpoint_auth_method')}: choose from {', '.join(AUTH_METHODS)}"
        )
    if method is None:
        method = "none" if asked.public else PRIVATE_KEY_JWT if keys_given else "client_secret_basic"
    if asked.public and method != "none":
        raise RegistrationError("public", f"{name('public')} is {name('token_endpoint_auth_method')} none, not {method}")
    if keys_given and method != PRIVATE_KEY_JWT:
        raise RegistrationError(
            "jwks", f"{name('jwks')} and {name('jwks_uri')} are for {name('token_endpoint_auth_method')} private_key_jwt"
        )
    if method == PRIVATE_KEY_JWT and not keys_given:
        raise RegistrationError(
            "jwks", f"a private_key_jwt client needs its public keys: {name('jwks')} or {name('jwks_uri')}"
        )
    if method == PRIVATE_KEY_JWT and asked.has_secret:
        raise RegistrationError("client_secret", f"a private_key_jwt client has no secret; drop {name('client_secret')}")
    return method


def _allowed_origins(asked: ClientFields, name: Namer, grant_types: tuple[str, ...], public: bool) -> tuple[str, ...]:
    """A browser app's origins, and whether its refresh token goes in the HttpOnly cookie: only a
    public client, called from those origins."""
    origins = _items(asked.allowed_origins, name("allowed_origins"))
    for origin in origins:
        problem = origin_problem(origin)
        if problem is not None:
            raise RegistrationError("allowed_origins", f"{name('allowed_origins')}: {origin!r} {problem}")
    cookie = name("refresh_token_cookie")
    if asked.refresh_token_cookie and not public:
        raise RegistrationError(
            "refresh_token_cookie", f"{cookie} is for a public client ({name('public')}): a browser app"
        )
    if asked.refresh_token_cookie and not origins:
        raise RegistrationError(
            "refresh_token_cookie", f"{cookie} needs {name('allowed_origins')}: the origins its pages run on"
        )
    if asked.refresh_token_cookie and "refresh_token" not in grant_types:
        raise RegistrationError("refresh_token_cookie", f"{cookie} needs the grant type refresh_token")
    return origins


def _exchange_from(asked: ClientFields, name: Namer, grant_types: tuple[str, ...], public: bool) -> tuple[str, ...]:
    """RFC 8693: the audiences of the access tokens the client may exchange; only with the grant."""
    exchange_from = _items(asked.exchange_from, name("exchange_from"))
    if TOKEN_EXCHANGE not in grant_types:
        if exchange_from:
            raise RegistrationError("exchange_from", f"{name('exchange_from')} needs the grant type {TOKEN_EXCHANGE}")
        return exchange_from
    if public:
        raise RegistrationError(
            "grant_types",
            f"{name('grant_types')}: a public client cannot use token exchange: the actor authenticates (RFC 8693 section 5)",
        )
    if not exchange_from:
        raise RegistrationError(
            "exchange_from",
            f"{name('exchange_from')}: a client with token exchange needs the audiences it may exchange from",
        )
    return exchange_from


def one_line_secret(raw: str) -> str:
    """A secret as a file or standard input holds it: one trailing newline (LF or CRLF) dropped."""
    if raw.endswith("\n"):
        raw = raw[:-1]
        if raw.endswith("\r"):
            raw = raw[:-1]
    return raw


def secret_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot be a secret or password (never quoting it), or None; empty is the caller's."""
    if any(ch < " " or ch == "\x7f" for ch in value):
        return f"the {what} contains control characters"
    if len(value) > MAX_SECRET_LENGTH:
        return f"the {what} is longer than {MAX_SECRET_LENGTH} characters"
    return None


# --- the file -----------------------------------------------------------------------------------


class ClientsFileError(Exception):
    """A file that cannot be applied; one line naming the file, the client and the field."""


@dataclass(frozen=True, slots=True)
class DesiredClient:
    registration: Registration
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ClientsFile:
    path: Path
    clients: tuple[DesiredClient, ...]


_LIST_KEYS = ("grant_types", "scopes", "audiences", "redirect_uris", "allowed_origins", "exchange_from")
_BOOL_KEYS = ("first_party", "refresh_token_cookie", "public")
_TEXT_KEYS = ("client_id", "token_endpoint_auth_method", "jwks_uri", "client_secret_file")
_KEYS = frozenset((*_LIST_KEYS, *_BOOL_KEYS, *_TEXT_KEYS, "jwks"))
_REQUIRED = ("client_id", "grant_types", "audiences")


def _file_name(field_name: str) -> str:
    return "client_secret_file" if field_name == "client_secret" else field_name


def load_clients_file(path: Path) -> ClientsFile:
    """Read and check a whole clients file, and the secret files it names.

    :raises ClientsFileError: at the first problem, naming the client and the field
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClientsFileError(f"{path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ClientsFileError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientsFileError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"client"})
    if unknown:
        raise ClientsFileError(f"{path}: unknown key {unknown[0]!r}; the file holds [[client]] tables only")
    tables = document.get("client", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ClientsFileError(f"{path}: 'client' must be [[client]] tables")
    clients: list[DesiredClient] = []
    seen: set[str] = set()
    for number, table in enumerate(tables, start=1):
        client_id = table.get("client_id")
        where = f"client {client_id!r}" if isinstance(client_id, str) else f"[[client]] number {number}"
        try:
            desired = _desired_client(table, path.parent)
        except RegistrationError as exc:
            raise ClientsFileError(f"{path}: {where}: {exc}") from None
        if desired.registration.client_id in seen:
            raise ClientsFileError(f"{path}: {where}: client_id: named twice in the file")
        seen.add(desired.registration.client_id)
        clients.append(desired)
    return ClientsFile(path, tuple(clients))


def _desired_client(table: dict[str, Any], folder: Path) -> DesiredClient:
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise RegistrationError(unknown[0], f"{unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
    for key in _REQUIRED:
        if key not in table:
            raise RegistrationError(key, f"{key}: required")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _LIST_KEYS:
            values[key] = _list_value(key, value)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise RegistrationError(key, f"{key}: expected true or false, got {_kind(value)}")
            values[key] = value
        elif key in _TEXT_KEYS:
            if not isinstance(value, str):
                raise RegistrationError(key, f"{key}: expected a string, got {_kind(value)}")
            values[key] = value
    if "jwks" in table:
        values["jwks"] = _jwks_value(table["jwks"])
    secret_path = values.pop("client_secret_file", None)
    secret = _read_secret(folder, secret_path) if secret_path is not None else None
    registration = check_registration(ClientFields(**values, has_secret=secret is not None), _file_name)
    if registration.has_secret and secret is None:
        raise RegistrationError(
            "client_secret",
            f"client_secret_file: a client that authenticates with {registration.token_endpoint_auth_method}"
            " needs its secret, from a file",
        )
    return DesiredClient(registration, secret)


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _list_value(key: str, value: object) -> list[str]:
    """An array of strings, or the command line's form: one string of words."""
    if isinstance(value, str):
        return split_words(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RegistrationError(key, f"{key}: expected an array of strings, got {_kind(value)}")


def _jwks_value(value: object) -> object:
    """A JWK Set as a TOML table ``{keys = [...]}``, or as its JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise RegistrationError("jwks", "jwks: not a JWK Set (a table with keys, or its JSON text)") from None
    if isinstance(value, dict):
        return value
    raise RegistrationError("jwks", f"jwks: expected a table {{keys = [...]}}, got {_kind(value)}")


def _read_secret(folder: Path, given: str) -> str:
    path = folder / Path(given).expanduser()  # a relative path is the clients file's neighbour
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            raw = handle.read(MAX_SECRET_LENGTH + 3)  # enough to tell a secret too long, whatever the file is
    except OSError as exc:
        raise RegistrationError("client_secret", f"client_secret_file: cannot read {given}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RegistrationError("client_secret", f"client_secret_file: {given} is not UTF-8 text") from None
    secret = one_line_secret(raw)
    if not secret:
        raise RegistrationError("client_secret", f"client_secret_file: {given} is empty")
    problem = secret_problem(secret, "client secret")
    if problem is None and len(secret) < MIN_SECRET_LENGTH:
        problem = f"the client secret must be at least {MIN_SECRET_LENGTH} characters"
    if problem is not None:
        raise RegistrationError("client_secret", f"client_secret_file: {given}: {problem}")
    return secret


# --- the apply ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppliedClients:
    """What an apply did, client by client: created, updated, unchanged or deleted."""

    outcome: dict[str, str]
    families_revoked: int

    def count(self, what: str) -> int:
        return sum(1 for done in self.outcome.values() if done == what)

    def as_dict(self) -> dict[str, object]:
        counts: dict[str, object] = {what: self.count(what) for what in ("created", "updated", "unchanged", "deleted")}
        return {**counts, "families_revoked": self.families_revoked, "clients": dict(sorted(self.outcome.items()))}

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(what)} {what}" for what in ("created", "updated", "unchanged", "deleted"))
        return f"clients: {counts}; {self.families_revoked} refresh-token families revoked"


class _Secrets:
    """Each file secret's hash to store: the stored one when the secret still matches it, else a
    new one. Decided outside any transaction (argon2 takes tens of milliseconds a secret, and a
    transaction holding the clients-file lock meanwhile would keep other instances waiting),
    against the stored hash it was decided on; valid only while that hash is still the stored one."""

    def __init__(self, hasher: SecretHasher) -> None:
        self._hasher = hasher
        self._decided: dict[str, tuple[str | None, str]] = {}  # client_id: (stored hash checked, hash to store)

    async def decide(self, wanted: Iterable[DesiredClient], stored: Mapping[str, Client]) -> None:
        for client in wanted:
            client_id = client.registration.client_id
            current = stored.get(client_id)
            if client.secret is not None and self.known(client_id, current) is None:
                hash_now = current.secret_hash if current else None
                keep = hash_now is not None and await self._hasher.verify(hash_now, client.secret)
                to_store = hash_now if keep and hash_now is not None else await self._hasher.hash(client.secret)
                self._decided[client_id] = (hash_now, to_store)

    def known(self, client_id: str, current: Client | None) -> str | None:
        """The hash to store, if it was decided on the hash ``current`` holds; else None."""
        decided = self._decided.get(client_id)
        if decided is None or decided[0] != (current.secret_hash if current else None):
            return None
        return decided[1]


class _Outdated(Exception):
    """A stored secret changed since the file's secrets were checked against it (another
    instance applied the file first): check them again, outside the transaction."""

    def __init__(self, stored: dict[str, Client]) -> None:
        self.stored = stored


# Rounds of checking secrets and trying the transaction before giving up; more than one only when
# secrets change between the check and the transaction, as when instances start together.
_ROUNDS = 5


async def apply_clients(
    pool: asyncpg.Pool, desired: ClientsFile, hasher: SecretHasher, *, prune: bool = False
) -> AppliedClients:
    """Make the stored clients match ``desired``: one transaction, under the clients-file lock.

    A client whose fields and secret already match is not written at all. A changed client is
    updated in place; its refresh-token families stay unless the change no longer allows them
    (``_revoke_disallowed``). With ``prune``, clients the file does not name are deleted.
    """
    secrets = _Secrets(hasher)
    stored = {client.client_id: client for client in await ClientStore(pool).list()}
    for _ in range(_ROUNDS):
        await secrets.decide(desired.clients, stored)
        try:
            applied = await _apply_once(pool, desired, secrets, prune)
        except _Outdated as outdated:
            stored = outdated.stored
            continue
        if applied.families_revoked:
            events.families_revoked(REVOKED_BY_CLIENT_CHANGE, applied.families_revoked)
        return applied
    raise ClientsFileError(f"{desired.path}: clients kept changing while it was applied; nothing was changed")


async def _apply_once(
    pool: asyncpg.Pool, desired: ClientsFile, secrets: _Secrets, prune: bool
) -> AppliedClients:
    outcome: dict[str, str] = {}
    revoked = 0
    async with pool.acquire() as connection, connection.transaction():
        store = ClientStore(connection)
        await store.lock_for_apply()
        stored = {client.client_id: client for client in await store.list(for_update=True)}
        for wanted in desired.clients:
            registration = wanted.registration
            current = stored.get(registration.client_id)
            secret_hash = None
            if wanted.secret is not None:
                secret_hash = secrets.known(registration.client_id, current)
                if secret_hash is None:
                    raise _Outdated(stored)  # rolls back whatever this round wrote
            change = _change(registration, secret_hash)
            if current is None:
                try:
                    await store.create_from(change)
                except ClientExists:  # `clients create` made it just now, outside the lock
                    raise _Outdated(stored) from None
                outcome[registration.client_id] = "created"
                continue
            if registration.same_as(current) and current.secret_hash == secret_hash:
                outcome[registration.client_id] = "unchanged"
                continue
            narrowed = _narrows(current, registration)
            credentials_changed = (
                current.secret_hash != secret_hash
                or current.token_endpoint_auth_method != registration.token_endpoint_auth_method
                or current.jwks != registration.jwks
                or current.jwks_uri != registration.jwks_uri
            )
            # A new credential version also stops a sign-in in flight under the old client
            # (FamilyStore.create checks it), as does any change that revokes families.
            await store.update_from(change, new_credentials=credentials_changed or narrowed)
            if narrowed:
                revoked += await _revoke_disallowed(connection, registration)
            outcome[registration.client_id] = "updated"
        if prune:
            named = {wanted.registration.client_id for wanted in desired.clients}
            for client_id in sorted(set(stored) - named):
                await store.delete(client_id)
                outcome[client_id] = "deleted"
    return AppliedClients(outcome, revoked)


def _change(registration: Registration, secret_hash: str | None) -> ClientChange:
    return ClientChange(
        client_id=registration.client_id,
        secret_hash=secret_hash,
        grant_types=list(registration.grant_types),
        scopes=list(registration.scopes),
        audiences=list(registration.audiences),
        redirect_uris=list(registration.redirect_uris),
        first_party=registration.first_party,
        token_endpoint_auth_method=registration.token_endpoint_auth_method,
        jwks=registration.jwks,
        jwks_uri=registration.jwks_uri,
        exchange_from=list(registration.exchange_from),
        allowed_origins=list(registration.allowed_origins),
        refresh_token_cookie=registration.refresh_token_cookie,
    )


def _narrows(current: Client, registration: Registration) -> bool:
    """Whether some family the client holds now may no longer be allowed after the change."""
    return (
        ("refresh_token" in current.grant_types and "refresh_token" not in registration.grant_types)
        or not set(current.scopes) <= set(registration.scopes)
        or not set(current.audiences) <= set(registration.audiences)
    )


async def _revoke_disallowed(connection: asyncpg.Connection, registration: Registration) -> int:
    """Revoke the client's live families that the new registration does not allow: all of them
    without the refresh_token grant; otherwise those with a scope or the audience it lost."""
    families = FamilyStore(connection)
    if "refresh_token" not in registration.grant_types:
        return await families.revoke_client_families(registration.client_id, REVOKED_BY_CLIENT_CHANGE)
    return await families.revoke_client_families_beyond(
        registration.client_id, registration.scopes, registration.audiences, REVOKED_BY_CLIENT_CHANGE
    )


# --- at start (TESSERA_CLIENTS_FILE) --------------------------------------------------------------


def load_setting_file(settings: Settings) -> ClientsFile | None:
    """The file TESSERA_CLIENTS_FILE names, checked; a bad one stops the start (``SettingsError``)."""
    if settings.clients_file is None:
        return None
    try:
        return load_clients_file(settings.clients_file)
    except ClientsFileError as exc:
        raise SettingsError(f"TESSERA_CLIENTS_FILE: {exc}") from None


async def apply_at_start(pool: asyncpg.Pool, settings: Settings) -> None:
    """Apply TESSERA_CLIENTS_FILE (never pruning), once across the instances starting together:
    the first to take the lock applies it, the others find every client unchanged."""
    desired = load_setting_file(settings)
    if desired is None:
        return
    hasher = SecretHasher(settings.argon2, threads=1)
    try:
        applied = await apply_clients(pool, desired, hasher)
    except ClientsFileError as exc:
        raise SettingsError(f"TESSERA_CLIENTS_FILE: {exc}") from None
    finally:
        hasher.close()
    log.info("clients file applied", extra={"event": "clients_applied", "file": str(desired.path), **_counts(applied)})


def _counts(applied: AppliedClients) -> dict[str, object]:
    # Not "created": a LogRecord has that attribute already.
    done = applied.as_dict()
    return {f"clients_{what}": done[what] for what in ("created", "updated", "unchanged", "deleted")} | {
        "families_revoked": applied.families_revoked, "clients": done["clients"],
    }


__all__ = [
    "AUTH_METHODS", "GRANT_TYPES", "MIN_SECRET_LENGTH", "AppliedClients", "ClientFields", "ClientsFile",
    "ClientsFileError", "DesiredClient", "Registration", "RegistrationError", "apply_at_start", "apply_clients",
    "check_registration", "load_clients_file", "load_setting_file", "one_line_secret", "secret_problem", "split_words",
]
