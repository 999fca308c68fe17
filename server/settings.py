"""Settings: read once from the environment (and `tessera serve` flags) into a frozen dataclass.

A bad value stops the start with one line naming the variable (``SettingsError``); nothing starts
half-configured. Each component is handed only the values it uses.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

SIGNING_ALGORITHMS = ("ES256", "ES384", "EdDSA", "RS256", "PS256")


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


@dataclasses.dataclass(frozen=True, slots=True)
class Argon2Profile:
    """argon2id cost parameters for hashing passwords and client secrets."""

    time_cost: int
    memory_kib: int
    parallelism: int


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    data_dir: Path
    host: str
    port: int
    issuer: str
    signing_alg: str
    access_token_ttl: int
    refresh_token_ttl: int
    session_ttl: int
    refresh_reuse_grace: int
    key_rotation_interval: int
    jwks_max_age: int
    key_encryption_key: bytes | None
    workers: int
    login_max_failures: int
    shutdown_timeout: float
    shutdown_delay: float
    db_pool_size: int
    db_statement_timeout: float
    argon2: Argon2Profile
    max_body_bytes: int
    # How often each instance reloads its keyring without a notification (the fallback to LISTEN).
    key_reload_interval: float = 5.0
    # Only while changing the KEK: the new one (see `tessera keys rewrap`).
    new_key_encryption_key: bytes | None = None
    # Hardening (docs/hardening.md): abuse, slow clients, browsers.
    # 0: no cap per address. A cap lets failures for some names refuse every other name's right
    # password from that address (a NAT, a proxy), so it is the operator's choice, never the default.
    login_max_failures_per_address: int = 0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    argon2_threads: int = 1
    argon2_queue: int = 16
    client_timeout: float = 15.0
    db_startup_wait: float = 30.0
    cors_origins: frozenset[str] = frozenset()
    # `tessera serve` on a non-loopback host with the embedded database and its development KEK.
    allow_dev_kek_on_network: bool = False
    # Sign-in for people (the authorization code flow and its pages).
    authorization_code_ttl: int = 60
    login_session_ttl: int = 28800
    templates_dir: Path | None = None
    # Clients as code: a TOML file of clients applied at every start (tessera.server.clients_file).
    clients_file: Path | None = None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def development_kek(self) -> bool:
        """Private keys are sealed with the key kept beside the embedded database (``TESSERA_DATA_DIR``)."""
        return self.database_url is None and self.key_encryption_key is None


def _existing(env: Mapping[str, str], name: str, kind: Literal["directory", "file"]) -> Path | None:
    """The path ``name`` gives, which must be an existing directory or file; None if unset."""
    text = _text(env, name, None)
    if text is None:
        return None
    path = Path(text).expanduser().absolute()
    if not (path.is_dir() if kind == "directory" else path.is_file()):
        raise SettingsError(f"{name}: {text!r} is not a {kind}")
    return path


def _text(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _text(env, name, None)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: {value} is outside {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = _text(env, name, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: {value} is outside {low}..{high}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (_text(env, name, None) or "0").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected 1 or 0, got {raw!r}")


def decode_kek(raw: str, name: str) -> bytes:
    """A key-encryption key is 32 bytes written as base64url (padding optional)."""
    text = raw.strip()
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SettingsError(f"{name}: not base64url") from None
    if len(key) != 32:
        raise SettingsError(f"{name}: must decode to 32 bytes, got {len(key)}")
    return key


def _inline_or_file(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``NAME`` or ``NAME_FILE`` (the Docker and Kubernetes way of handing over a secret), never both.

    Returns the value and the variable that supplied it, for error messages.
    """
    inline = _text(env, name, None)
    path = _text(env, name + "_FILE", None)
    if inline and path:
        raise SettingsError(f"{name}: set either it or {name}_FILE, not both")
    if path:
        try:
            return Path(path).read_text().strip(), name + "_FILE"
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    if inline:
        return inline, name
    return None


def _kek(env: Mapping[str, str], name: str = "TESSERA_KEY_ENCRYPTION_KEY") -> bytes | None:
    found = _inline_or_file(env, name)
    return decode_kek(found[0], found[1]) if found else None


# What asyncpg accepts; checked here so that a typo stops the start with one line, not a traceback
# at the first connection.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")


def _database_url(env: Mapping[str, str]) -> str | None:
    """A postgresql:// DSN, passed to asyncpg as it is: several hosts (``h1:5432,h2:5432``),
    ``sslmode``, ``sslrootcert``, ``target_session_attrs`` and the rest of libpq's parameters."""
    found = _inline_or_file(env, "TESSERA_DATABASE_URL")
    if found is None:
        return None
    url, name = found
    if not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{name}: must be a postgresql:// URL")
    query = parse_qs(urlsplit(url).query)
    for parameter, allowed in (("sslmode", _SSLMODES), ("target_session_attrs", _SESSION_ATTRS)):
        for value in query.get(parameter, []):
            if value not in allowed:
                raise SettingsError(f"{name}: {parameter} must be one of {', '.join(allowed)}")
    return url


def _issuer(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"TESSERA_ISSUER: must be an http(s) URL, got {raw!r}")
    if parts.query or parts.fragment:
        # RFC 8414 section 2: the issuer has no query or fragment components.
        raise SettingsError("TESSERA_ISSUER: must not have a query or fragment")
    return raw.rstrip("/")


def _networks(env: Mapping[str, str], name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in (_text(env, name, "") or "").replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: {item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _origins(env: Mapping[str, str], name: str) -> frozenset[str]:
    """Exact browser origins (scheme://host[:port]); never a wildcard, never a path."""
    origins = set()
    for item in (_text(env, name, "") or "").split():
        parts = urlsplit(item)
        if item == "*" or parts.scheme not in ("http", "https") or not parts.netloc or item != f"{parts.scheme}://{parts.netloc}":
            raise SettingsError(f"{name}: {item!r} is not an origin like https://app.example (no '*', no path)")
        origins.add(item.lower())
    return frozenset(origins)


def load_settings(
    env: Mapping[str, str] | None = None, *, require_kek: bool = True, **overrides: object
) -> Settings:
    """Build the settings from ``env`` (default ``os.environ``) and command-line overrides.

    Overrides (``host``, ``port``, ``workers``) win over the environment, as flags should.
    ``require_kek=False`` is for commands that never touch private keys (clients, users).
    """
    env = dict(os.environ if env is None else env)
    for key, name in (("host", "TESSERA_HOST"), ("port", "TESSERA_PORT"), ("workers", "TESSERA_WORKERS")):
        if overrides.get(key) is not None:
            env[name] = str(overrides[key])

    database_url = _database_url(env)
    data_dir = Path(_text(env, "TESSERA_DATA_DIR", "./.tessera") or "./.tessera").expanduser().absolute()
    host = _text(env, "TESSERA_HOST", "127.0.0.1") or "127.0.0.1"
    port = _int(env, "TESSERA_PORT", 8080, 0, 65535)
    default_issuer = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    issuer = _issuer(_text(env, "TESSERA_ISSUER", default_issuer) or default_issuer)

    alg = _text(env, "TESSERA_SIGNING_ALG", "ES256") or "ES256"
    if alg not in SIGNING_ALGORITHMS:
        raise SettingsError(f"TESSERA_SIGNING_ALG: {alg!r} is not one of {', '.join(SIGNING_ALGORITHMS)}")

    year = 366 * 86400
    access_ttl = _int(env, "TESSERA_ACCESS_TOKEN_TTL", 900, 1, 86400)
    refresh_ttl = _int(env, "TESSERA_REFRESH_TOKEN_TTL", 1209600, 1, 10 * year)
    session_ttl = _int(env, "TESSERA_SESSION_TTL", 2592000, 1, 10 * year)
    grace = _int(env, "TESSERA_REFRESH_REUSE_GRACE", 0, 0, 300)
    rotation = _int(env, "TESSERA_KEY_ROTATION_INTERVAL", 604800, 60, 10 * year)
    jwks_max_age = _int(env, "TESSERA_JWKS_MAX_AGE", 300, 0, 7 * 86400)
    key_reload = _float(env, "TESSERA_KEY_RELOAD_INTERVAL", 5.0, 0.05, 300.0)
    kek = _kek(env)
    new_kek = _kek(env, "TESSERA_NEW_KEY_ENCRYPTION_KEY")
    if database_url is not None and kek is None and require_kek:
        raise SettingsError(
            "TESSERA_KEY_ENCRYPTION_KEY: required when TESSERA_DATABASE_URL is set "
            "(32 random bytes, base64url; or TESSERA_KEY_ENCRYPTION_KEY_FILE)"
        )
    workers = _int(env, "TESSERA_WORKERS", 1, 1, 64)
    if workers > 1 and port == 0:
        # Each worker binds the port itself (SO_REUSEPORT); "any free port" would give each another.
        raise SettingsError("TESSERA_WORKERS: several workers need a fixed TESSERA_PORT, not 0")
    max_failures = _int(env, "TESSERA_LOGIN_MAX_FAILURES", 10, 1, 1_000_000)
    shutdown = _float(env, "TESSERA_SHUTDOWN_TIMEOUT", 10.0, 0.0, 3600.0)
    shutdown_delay = _float(env, "TESSERA_SHUTDOWN_DELAY", 0.0, 0.0, 300.0)
    pool = _int(env, "TESSERA_DB_POOL_SIZE", 20, 1, 500)
    statement_timeout = _float(env, "TESSERA_DB_STATEMENT_TIMEOUT", 5.0, 0.1, 600.0)
    # OWASP's argon2id profile (m=19 MiB, t=2, p=1): tens of milliseconds per login on one core.
    argon2 = Argon2Profile(
        time_cost=_int(env, "TESSERA_ARGON2_TIME_COST", 2, 1, 100),
        memory_kib=_int(env, "TESSERA_ARGON2_MEMORY_KIB", 19456, 1024, 4 * 1024 * 1024),
        parallelism=_int(env, "TESSERA_ARGON2_PARALLELISM", 1, 1, 64),
    )
    max_body = _int(env, "TESSERA_MAX_BODY_BYTES", 16384, 1024, 1024 * 1024)
    per_address = _int(env, "TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS", 0, 0, 1_000_000)
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        host=host,
        port=port,
        issuer=issuer,
        signing_alg=alg,
        access_token_ttl=access_ttl,
        refresh_token_ttl=refresh_ttl,
        session_ttl=session_ttl,
        refresh_reuse_grace=grace,
        key_rotation_interval=rotation,
        jwks_max_age=jwks_max_age,
        key_encryption_key=kek,
        workers=workers,
        login_max_failures=max_failures,
        shutdown_timeout=shutdown,
        shutdown_delay=shutdown_delay,
        db_pool_size=pool,
        db_statement_timeout=statement_timeout,
        argon2=argon2,
        max_body_bytes=max_body,
        key_reload_interval=key_reload,
        new_key_encryption_key=new_kek,
        login_max_failures_per_address=per_address,
        trusted_proxies=_networks(env, "TESSERA_TRUSTED_PROXIES"),
        # Half the CPUs: a flood of logins must leave cores to the event loop and the database.
        argon2_threads=_int(env, "TESSERA_ARGON2_THREADS", max(1, (os.cpu_count() or 2) // 2), 1, 256),
        argon2_queue=_int(env, "TESSERA_ARGON2_QUEUE", 16, 0, 100_000),
        # At most 30 s: the contract drops a client that sends its request too slowly within 30 s.
        client_timeout=_float(env, "TESSERA_CLIENT_TIMEOUT", 15.0, 0.5, 30.0),
        db_startup_wait=_float(env, "TESSERA_DB_STARTUP_WAIT", 30.0, 0.0, 3600.0),
        cors_origins=_origins(env, "TESSERA_CORS_ORIGINS"),
        allow_dev_kek_on_network=_flag(env, "TESSERA_ALLOW_DEV_KEK_ON_NETWORK"),
        # RFC 9700 section 4.5 / RFC 6749 section 4.1.2: a code lives at most 10 minutes.
        authorization_code_ttl=_int(env, "TESSERA_AUTHORIZATION_CODE_TTL", 60, 1, 600),
        login_session_ttl=_int(env, "TESSERA_LOGIN_SESSION_TTL", 28800, 0, 10 * year),
        templates_dir=_existing(env, "TESSERA_TEMPLATES_DIR", "directory"),
        clients_file=_existing(env, "TESSERA_CLIENTS_FILE", "file"),
    )
