"""The ``tessera`` command line.

Exit status 0 on success; otherwise one line on stderr and a non-zero status. ``--json`` prints
one JSON object or array on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import asyncpg

from tessera.keys import kek as kek_box
from tessera.keys.kek import UnsealError
from tessera.keys.lifecycle import KeyLifecycle, LifecycleError, Policy, KeyRotation
from tessera.keys.store import StoredKey
from tessera.server.store import db
from tessera.server.ops import events
from tessera.server.tasks.janitor import collect_garbage
from tessera.server.tasks.key_scheduler import key_lifecycle, key_policy
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.oauth.client_assertions import jwks_uri_problem, registered_jwks
from tessera.server.clients_file import (
    AUTH_METHODS, GRANT_TYPES, MIN_SECRET_LENGTH, ClientFields, ClientsFileError, RegistrationError, apply_clients,
    check_registration, load_clients_file, one_line_secret, secret_problem, split_words,
)
from tessera.server.settings import Settings, SettingsError, load_settings
from tessera.server.store import ClientStore, PgKeyStore, UserStore
from tessera.server.store.clients import ClientExists
from tessera.server.store.families import FamilyStore
from tessera.server.store.keys import RewrapError
from tessera.server.store.users import InvalidUsername, UserExists, canonical_username, check_new_username

# The shortest password `users create` and `users set-password` accept, in characters (NIST SP
# 800-63B-3 section 5.1.1.2: a chosen memorized secret has at least 8). Only setting a password is
# held to it: a login with a shorter password set before it still works.
MIN_PASSWORD_LENGTH = 8


class CommandError(Exception):
    """A refusal the user can act on; printed as one line."""


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data) if args.json else text)


def _read_stdin_secret(what: str) -> str:
    value = one_line_secret(sys.stdin.read())
    if not value:
        raise CommandError(f"no {what} on standard input")
    problem = secret_problem(value, what)
    if problem is not None:
        raise CommandError(problem)
    return value


def _with_database(settings: Settings, action: Callable[[Any, db.Database], Awaitable[int]]) -> int:
    """Open the database (starting the embedded one if needed), migrate, run ``action(pool, database)``."""

    async def run(database: db.Database) -> int:
        pool = await db.create_pool(database.dsn, size=2, statement_timeout=settings.db_statement_timeout)
        try:
            async with pool.acquire() as connection:
                await db.migrate(connection)
            return await action(pool, database)
        finally:
            await pool.close()

    if settings.database_url is None and not (settings.data_dir / "pg").exists():
        # The embedded database lives where TESSERA_DATA_DIR says, ./.tessera by default: a command
        # run from another directory than the server's would otherwise change a database nobody
        # serves from, and look as if it worked.
        print(f"tessera: no database in {settings.data_dir}: making a new, empty one there"
              " (TESSERA_DATA_DIR, or TESSERA_DATABASE_URL, names the server's)", file=sys.stderr)
    with db.open_database(settings) as database:
        return asyncio.run(run(database))


def _with_store(settings: Settings, action: Callable[[Any], Awaitable[int]]) -> int:
    return _with_database(settings, lambda pool, _: action(pool))


# --- clients -----------------------------------------------------------------------------------

# How `clients create` names each field of the registration rules (tessera.server.clients_file).
_CREATE_FLAGS = {
    "client_id": "CLIENT_ID", "jwks": "--jwks-file", "public": "--public", "client_secret": "--secret-stdin",
}


def _create_flag(field: str) -> str:
    return _CREATE_FLAGS.get(field, "--" + field.replace("_", "-"))


def _jwks_document(path: str) -> object:
    """The JSON of ``--jwks-file`` (checked as a JWK Set by the registration rules)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise CommandError(f"--jwks-file: cannot read {path}: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise CommandError(f"--jwks-file: {path} is not JSON") from None


def _client_keys(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """A private_key_jwt client's public keys from ``--jwks-file`` or ``--jwks-uri``; (None, None) for neither."""
    if args.jwks_file is not None:
        try:
            return registered_jwks(_jwks_document(args.jwks_file)), None
        except ValueError as exc:
            raise CommandError(f"--jwks-file: {exc}") from None
    if args.jwks_uri is not None:
        problem = jwks_uri_problem(args.jwks_uri)
        if problem is not None:
            raise CommandError(f"--jwks-uri: {args.jwks_uri!r} {problem}")
        return None, args.jwks_uri
    return None, None


def clients_create(args: argparse.Namespace, settings: Settings) -> int:
    asked = ClientFields(
        client_id=args.client_id,
        grant_types=split_words(args.grant_types),
        scopes=split_words(args.scopes),
        audiences=split_words(args.audiences),
        redirect_uris=split_words(args.redirect_uris),
        first_party=args.first_party,
        allowed_origins=split_words(args.allowed_origins),
        refresh_token_cookie=args.refresh_token_cookie,
        token_endpoint_auth_method=args.token_endpoint_auth_method,
        public=args.public,
        jwks=_jwks_document(args.jwks_file) if args.jwks_file is not None else None,
        jwks_uri=args.jwks_uri,
        exchange_from=split_words(args.exchange_from),
        has_secret=args.secret_stdin,
    )
    try:
        registration = check_registration(asked, _create_flag)
    except RegistrationError as exc:
        raise CommandError(str(exc)) from None
    secret: str | None = None
    if registration.has_secret:
        secret = _read_stdin_secret("client secret") if args.secret_stdin else "tsc_" + secrets.token_urlsafe(32)
        if len(secret) < MIN_SECRET_LENGTH:
            raise CommandError(f"the client secret must be at least {MIN_SECRET_LENGTH} characters")
    secret_hash = SecretHasher(settings.argon2).hash_sync(secret) if secret is not None else None

    async def action(pool: Any) -> int:
        r = registration
        try:
            client = await ClientStore(pool).create(
                r.client_id, secret_hash=secret_hash, grant_types=list(r.grant_types), scopes=list(r.scopes),
                audiences=list(r.audiences), redirect_uris=list(r.redirect_uris), first_party=r.first_party,
                exchange_from=list(r.exchange_from), token_endpoint_auth_method=r.token_endpoint_auth_method,
                jwks=r.jwks, jwks_uri=r.jwks_uri, allowed_origins=list(r.allowed_origins),
                refresh_token_cookie=r.refresh_token_cookie,
            )
        except ClientExists:
            raise CommandError(f"client {args.client_id!r} already exists") from None
        data = client.as_public_dict()
        data["client_id"] = client.client_id
        lines = [f"client_id: {client.client_id}"]
        if secret is not None:
            data["client_secret"] = secret
            lines.append(f"client_secret: {secret}")
            if not args.secret_stdin:
                lines.append("(the secret is shown only now; store it safely)")
        _emit(args, data, "\n".join(lines))
        return 0

    return _with_store(settings, action)


def clients_apply(args: argparse.Namespace, settings: Settings) -> int:
    """Clients as code: make the registered clients match a TOML file (tessera.server.clients_file).
    Checked whole before the database is touched; never prints a secret."""
    try:
        desired = load_clients_file(Path(args.file))
    except ClientsFileError as exc:
        raise CommandError(str(exc)) from None

    async def action(pool: Any) -> int:
        hasher = SecretHasher(settings.argon2, threads=1)
        try:
            applied = await apply_clients(pool, desired, hasher, prune=args.prune)
        except ClientsFileError as exc:
            raise CommandError(str(exc)) from None
        finally:
            hasher.close()
        lines = [f"{done} {client_id}" for client_id, done in sorted(applied.outcome.items()) if done != "unchanged"]
        _emit(args, applied.as_dict(), "\n".join([*lines, applied.summary()]))
        return 0

    return _with_store(settings, action)


def clients_set_jwks(args: argparse.Namespace, settings: Settings) -> int:
    """Replace a private_key_jwt client's public keys: a key added is usable at once, a key left
    out stops working (rotation: add the new key, switch the client to it, then drop the old)."""
    jwks, jwks_uri = _client_keys(args)

    async def action(pool: Any) -> int:
        store = ClientStore(pool)
        if not await store.set_keys(args.client_id, jwks=jwks, jwks_uri=jwks_uri):
            raise CommandError(f"no private_key_jwt client {args.client_id!r}")
        client = await store.get(args.client_id)
        assert client is not None
        what = f"{len(jwks['keys'])} key(s): {' '.join(k['kid'] for k in jwks['keys'])}" if jwks else f"keys at {jwks_uri}"
        _emit(args, client.as_public_dict(), f"{args.client_id} now authenticates with {what}")
        return 0

    return _with_store(settings, action)


def clients_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(pool: Any) -> int:
        clients = await ClientStore(pool).list()
        rows = [c.as_public_dict() for c in clients]
        text = "\n".join(
            f"{c.client_id}\t{'public' if c.is_public else 'confidential'}\t{','.join(sorted(c.grant_types))}"
            f"\t{' '.join(c.scopes)}\t{' '.join(c.audiences)}"
            for c in clients
        )
        _emit(args, rows, text or "(no clients)")
        return 0

    return _with_store(settings, action)


def clients_show(args: argparse.Namespace, settings: Settings) -> int:
    async def action(pool: Any) -> int:
        client = await ClientStore(pool).get(args.client_id)
        if client is None:
            raise CommandError(f"no client {args.client_id!r}")
        data = client.as_public_dict()
        _emit(args, data, "\n".join(f"{k}: {v}" for k, v in data.items()))
        return 0

    return _with_store(settings, action)


def clients_delete(args: argparse.Namespace, settings: Settings) -> int:
    async def action(pool: Any) -> int:
        if not await ClientStore(pool).delete(args.client_id):
            raise CommandError(f"no client {args.client_id!r}")
        _emit(args, {"client_id": args.client_id, "deleted": True}, f"deleted client {args.client_id}")
        return 0

    return _with_store(settings, action)


def clients_rotate_secret(args: argparse.Namespace, settings: Settings) -> int:
    secret = _read_stdin_secret("client secret") if args.secret_stdin else "tsc_" + secrets.token_urlsafe(32)
    if len(secret) < MIN_SECRET_LENGTH:
        raise CommandError(f"the client secret must be at least {MIN_SECRET_LENGTH} characters")
    secret_hash = SecretHasher(settings.argon2).hash_sync(secret)

    async def action(pool: Any) -> int:
        if not await ClientStore(pool).set_secret_hash(args.client_id, secret_hash):
            raise CommandError(f"no confidential client {args.client_id!r}")
        _emit(
            args,
            {"client_id": args.client_id, "client_secret": secret},
            f"client_id: {args.client_id}\nclient_secret: {secret}\n(the old secret no longer works)",
        )
        return 0

    return _with_store(settings, action)


# --- users -------------------------------------------------------------------------------------


def _username(raw: str) -> str:
    """A user named on the command line, in the form it is stored (tessera.server.store.users)."""
    if not raw or len(raw) > 256 or any(ch < " " or ch == "\x7f" for ch in raw):
        raise CommandError("USERNAME: 1-256 printable characters")
    return canonical_username(raw)


def _new_password(settings: Settings) -> str:
    """The password on standard input, hashed; refused if shorter than ``MIN_PASSWORD_LENGTH``."""
    password = _read_stdin_secret("password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CommandError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    return SecretHasher(settings.argon2).hash_sync(password)


def users_create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        username = check_new_username(args.username)
    except InvalidUsername as exc:
        raise CommandError(f"USERNAME: {exc}") from None
    if not args.password_stdin:
        raise CommandError("give the password on standard input with --password-stdin")
    password_hash = _new_password(settings)

    async def action(pool: Any) -> int:
        try:
            user = await UserStore(pool).create(username, password_hash)
        except UserExists:
            raise CommandError(f"user {username!r} already exists") from None
        _emit(
            args,
            {"user_id": str(user.user_id), "username": user.username},
            f"user_id: {user.user_id}\nusername: {user.username}",
        )
        return 0

    return _with_store(settings, action)


def users_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(pool: Any) -> int:
        users = await UserStore(pool).list()
        text = "\n".join(f"{u.user_id}\t{u.username}\t{'disabled' if u.disabled else 'enabled'}" for u in users)
        _emit(args, [u.as_public_dict() for u in users], text or "(no users)")
        return 0

    return _with_store(settings, action)


def users_set_password(args: argparse.Namespace, settings: Settings) -> int:
    username = _username(args.username)
    if not args.password_stdin:
        raise CommandError("give the password on standard input with --password-stdin")
    password_hash = _new_password(settings)

    async def action(pool: Any) -> int:
        user = await UserStore(pool).set_password(username, password_hash)
        if user is None:
            raise CommandError(f"no user {username!r}")
        _emit(args, {"user_id": str(user.user_id), "username": username}, f"password changed for {username}")
        return 0

    return _with_store(settings, action)


def users_disable(args: argparse.Namespace, settings: Settings) -> int:
    username = _username(args.username)

    async def action(pool: Any) -> int:
        user = await UserStore(pool).set_disabled(username, True)
        if user is None:
            raise CommandError(f"no user {username!r}")
        _emit(args, {"user_id": str(user.user_id), "username": username, "disabled": True}, f"disabled {username}")
        return 0

    return _with_store(settings, action)


def users_delete(args: argparse.Namespace, settings: Settings) -> int:
    username = _username(args.username)

    async def action(pool: Any) -> int:
        user = await UserStore(pool).delete(username)
        if user is None:
            raise CommandError(f"no user {username!r}")
        _emit(args, {"user_id": str(user.user_id), "username": username, "deleted": True}, f"deleted {username}")
        return 0

    return _with_store(settings, action)


# --- sessions (refresh-token families) and garbage collection -----------------------------------


def sessions_revoke(args: argparse.Namespace, settings: Settings) -> int:
    family_id = None
    if args.family is not None:
        try:
            family_id = uuid.UUID(args.family)
        except ValueError:
            raise CommandError("--family: not a family id (a UUID, the sid claim of its access tokens)") from None

    async def action(pool: Any) -> int:
        families = FamilyStore(pool)
        if args.user is not None:
            user = await UserStore(pool).by_username(_username(args.user))
            if user is None:
                raise CommandError(f"no user {args.user!r}")
            revoked, what = await families.revoke_user_families(user.user_id, "revoked_by_admin"), args.user
        elif args.client is not None:
            if await ClientStore(pool).get(args.client) is None:
                raise CommandError(f"no client {args.client!r}")
            revoked, what = await families.revoke_client_families(args.client, "revoked_by_admin"), args.client
        else:
            assert family_id is not None
            if await families.get(family_id, datetime.now(UTC)) is None:
                raise CommandError(f"no family {family_id}")
            revoked = int(await families.revoke(family_id, "revoked_by_admin", datetime.now(UTC)))
            what = str(family_id)
        events.families_revoked("revoked_by_admin", revoked)
        _emit(args, {"revoked": revoked}, f"revoked {revoked} session(s) of {what}")
        return 0

    return _with_store(settings, action)


def gc_command(args: argparse.Namespace, settings: Settings) -> int:
    async def action(pool: Any) -> int:
        collected = await collect_garbage(pool, datetime.now(UTC))
        text = f"deleted {collected.families} refresh-token families, {collected.security_events} security events"
        text += f", {collected.keys} signing keys"
        _emit(args, collected.as_dict(), text)
        return 0

    return _with_store(settings, action)


# --- keys, migrate, serve ----------------------------------------------------------------------


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _key_row(key: StoredKey, policy: Policy) -> dict[str, Any]:
    row = {
        "kid": key.kid,
        "alg": key.alg,
        "state": key.state,
        "created_at": _when(key.created_at),
        "published_at": _when(key.published_at),
        "activated_at": _when(key.activated_at),
        "retired_at": _when(key.retired_at),
        "revoked_at": _when(key.revoked_at),
        "expires_at": _when(key.expires_at),
    }
    if key.state == "next":
        row["may_activate_at"] = _when(policy.activation_time(key))
    return row


_KEY_DATE = {"next": "may_activate_at", "active": "activated_at", "retired": "expires_at", "revoked": "revoked_at"}
_KEY_DATE_LABEL = {"next": "signs from", "active": "since", "retired": "published until", "revoked": "revoked"}


def keys_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(pool: Any) -> int:
        policy = key_policy(settings)
        rows = [_key_row(k, policy) for k in await PgKeyStore(pool).all_keys()]
        text = "\n".join(
            f"{r['kid']}\t{r['alg']}\t{r['state']}\t{_KEY_DATE_LABEL[r['state']]} {r[_KEY_DATE[r['state']]]}"
            for r in rows
        )
        _emit(args, rows, text or "(no keys yet: the first `tessera serve` makes them)")
        return 0

    return _with_store(settings, action)


def _with_lifecycle(settings: Settings, action: Callable[[KeyLifecycle], Awaitable[int]]) -> int:
    async def run(pool: Any, database: db.Database) -> int:
        try:
            return await action(key_lifecycle(settings, PgKeyStore(pool), database.keks, time.time))
        except LifecycleError as exc:
            raise CommandError(str(exc)) from None
        except UnsealError:
            raise CommandError(
                "the key-encryption key does not open the active signing key (TESSERA_KEY_ENCRYPTION_KEY)"
            ) from None

    return _with_database(settings, run)


def _rotation_summary(rotation: KeyRotation) -> dict[str, Any]:
    return {
        "active": rotation.activated.kid,
        "retired": None if rotation.revoked else rotation.retired.kid,
        "retired_expires_at": None if rotation.revoked else rotation.retired_expires_at.isoformat(),
        "revoked": rotation.retired.kid if rotation.revoked else None,
        "next": rotation.next_key.kid,
        "next_alg": rotation.next_key.alg,
        "early": rotation.early,
    }


def _warn_if_early(rotation: KeyRotation) -> None:
    if rotation.early:
        print(
            f"tessera: warning: {rotation.activated.kid} signs before resource servers' cached JWKS must hold it;"
            " they fetch it again on the unknown kid",
            file=sys.stderr,
        )


def keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    async def action(lifecycle: KeyLifecycle) -> int:
        rotation = await lifecycle.rotate(force=args.force)
        _warn_if_early(rotation)
        _emit(
            args,
            _rotation_summary(rotation),
            f"{rotation.activated.kid} ({rotation.activated.alg}) signs now; {rotation.retired.kid} retired, "
            f"published until {rotation.retired_expires_at.isoformat()}; "
            f"new next key {rotation.next_key.kid} ({rotation.next_key.alg})",
        )
        return 0

    return _with_lifecycle(settings, action)


def keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def action(lifecycle: KeyLifecycle) -> int:
        revocation = await lifecycle.revoke(args.kid)
        data: dict[str, Any] = {"kid": revocation.kid, "revoked": True, "previous_state": revocation.previous_state}
        text = f"{revocation.kid} revoked (was {revocation.previous_state}); it has left the JWKS of every instance"
        if revocation.previous_state == "revoked":
            text = f"{revocation.kid} was already revoked"
        if revocation.rotation is not None:
            _warn_if_early(revocation.rotation)
            data.update(_rotation_summary(revocation.rotation))
            text += f"; {revocation.rotation.activated.kid} signs now; new next key {revocation.rotation.next_key.kid}"
        if revocation.next_key is not None:
            data["next"] = revocation.next_key.kid
            text += f"; new next key {revocation.next_key.kid}"
        _emit(args, data, text)
        return 0

    return _with_lifecycle(settings, action)


def keys_rewrap(args: argparse.Namespace, settings: Settings) -> int:
    new = settings.new_key_encryption_key
    if new is None:
        raise CommandError("set TESSERA_NEW_KEY_ENCRYPTION_KEY (or _FILE) to the new key-encryption key")

    async def action(pool: Any, database: db.Database) -> int:
        if new == database.kek:
            raise CommandError("TESSERA_NEW_KEY_ENCRYPTION_KEY is the key-encryption key already in use")
        try:
            keys, secrets_count = await PgKeyStore(pool).rewrap(functools.partial(kek_box.reseal, database.kek, new))
        except RewrapError as exc:
            raise CommandError(f"{exc}; nothing was changed") from None
        _emit(
            args,
            {"keys": keys, "secrets": secrets_count},
            f"re-sealed {keys} private keys and {secrets_count} server secrets under the new key-encryption key; "
            "next: set TESSERA_KEY_ENCRYPTION_KEY to it, unset TESSERA_NEW_KEY_ENCRYPTION_KEY, restart one by one",
        )
        return 0

    return _with_database(settings, action)


def migrate_command(args: argparse.Namespace, settings: Settings) -> int:
    async def action(pool: Any) -> int:
        return 0

    return _with_store(settings, action)


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    from tessera.server.serve import serve

    return serve(settings)


# --- parser ------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera OAuth 2.0 token server")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, handler: Handler, help_text: str, *, json_flag: bool = True) -> Any:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler, needs_kek=False)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print one JSON value on stdout")
        return sub

    serve = command(commands, "serve", serve_command, "migrate the schema, then serve HTTP", json_flag=False)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(needs_kek=True)
    command(commands, "migrate", migrate_command, "apply pending schema migrations", json_flag=False)

    clients = commands.add_parser("clients", help="manage OAuth clients").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    create = command(clients, "create", clients_create, "register a client; prints its secret once")
    create.add_argument("client_id", metavar="CLIENT_ID")
    create.add_argument("--grant-types", required=True, help="comma-separated: " + ",".join(GRANT_TYPES))
    create.add_argument("--scopes", default="", help="space-separated scopes the client may request")
    create.add_argument("--audiences", required=True, help="space-separated audiences; the first is the default")
    create.add_argument("--public", action="store_true", help="a public client: no secret")
    create.add_argument(
        "--redirect-uris", default="", help="space-separated redirect URIs, compared exactly (authorization_code)"
    )
    create.add_argument("--first-party", action="store_true", help="the operator's own app: no consent page")
    create.add_argument("--secret-stdin", action="store_true", help="read the secret from standard input")
    create.add_argument(
        "--token-endpoint-auth-method", choices=AUTH_METHODS, metavar="M",
        help=f"how it authenticates: {', '.join(AUTH_METHODS)} (default: client_secret_basic, or none with --public)",
    )
    create_keys = create.add_mutually_exclusive_group()
    create_keys.add_argument("--jwks-file", metavar="F", help="private_key_jwt: a JWK Set of its public keys")
    create_keys.add_argument("--jwks-uri", metavar="URL", help="private_key_jwt: where its JWK Set is (https)")
    create.add_argument(
        "--exchange-from", default="",
        help="space-separated audiences whose access tokens the client may exchange (RFC 8693 token exchange)",
    )
    create.add_argument(
        "--allowed-origins", default="",
        help="space-separated origins of a browser app (https://spa.example): CORS at /token, /revoke, /userinfo",
    )
    create.add_argument(
        "--refresh-token-cookie", action="store_true",
        help="a public browser app: its refresh token in an HttpOnly cookie, never in the JSON (docs/browser-apps.md)",
    )
    apply = command(clients, "apply", clients_apply, "make the clients match a TOML file (clients as code)")
    apply.add_argument("file", metavar="FILE", help="one [[client]] table per client (docs/operations.md)")
    apply.add_argument("--prune", action="store_true", help="also delete the clients the file does not name")
    command(clients, "list", clients_list, "list clients")
    show = command(clients, "show", clients_show, "show one client")
    show.add_argument("client_id", metavar="ID")
    delete = command(clients, "delete", clients_delete, "delete a client")
    delete.add_argument("client_id", metavar="ID")
    set_jwks = command(clients, "set-jwks", clients_set_jwks, "replace a private_key_jwt client's public keys")
    set_jwks.add_argument("client_id", metavar="ID")
    set_jwks_from = set_jwks.add_mutually_exclusive_group(required=True)
    set_jwks_from.add_argument("--jwks-file", metavar="F", help="a JWK Set of its public keys")
    set_jwks_from.add_argument("--jwks-uri", metavar="URL", help="where its JWK Set is (https)")
    rotate = command(clients, "rotate-secret", clients_rotate_secret, "give a client a new secret; prints it once")
    rotate.add_argument("client_id", metavar="ID")
    rotate.add_argument("--secret-stdin", action="store_true", help="read the new secret from standard input")

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    ucreate = command(users, "create", users_create, "create a user")
    ucreate.add_argument("username", metavar="USERNAME")
    ucreate.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    command(users, "list", users_list, "list users")
    setpw = command(users, "set-password", users_set_password, "change a user's password")
    setpw.add_argument("username", metavar="USERNAME")
    setpw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    disable = command(users, "disable", users_disable, "disable a user")
    disable.add_argument("username", metavar="USERNAME")
    udelete = command(users, "delete", users_delete, "delete a user")
    udelete.add_argument("username", metavar="USERNAME")

    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    command(keys, "list", keys_list, "list signing keys")
    rotate_keys = command(keys, "rotate", keys_rotate, "the next key signs, a new next key is made, the old one retires")
    rotate_keys.add_argument(
        "--force", action="store_true", help="rotate even if the next key has not been published long enough"
    )
    rotate_keys.set_defaults(needs_kek=True)
    revoke_key = command(keys, "revoke", keys_revoke, "take a key out of the JWKS now (the active key rotates first)")
    revoke_key.add_argument("kid", metavar="KID")
    revoke_key.set_defaults(needs_kek=True)
    rewrap = command(keys, "rewrap", keys_rewrap, "re-seal every private key and server secret under a new KEK")
    rewrap.set_defaults(needs_kek=True)

    sessions = commands.add_parser("sessions", help="manage refresh-token sessions").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    srevoke = command(sessions, "revoke", sessions_revoke, "revoke refresh-token families (sessions) at once")
    which = srevoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", metavar="USERNAME", help="every session of this user")
    which.add_argument("--client", metavar="CLIENT_ID", help="every session of this client")
    which.add_argument("--family", metavar="FAMILY_ID", help="one session (the sid of its access tokens)")
    command(commands, "gc", gc_command, "delete expired refresh-token families, old security events and keys")
    return parser


def fail(message: str, status: int = 1) -> NoReturn:
    print(f"tessera: {message}", file=sys.stderr)
    raise SystemExit(status)


# A kid is an RFC 7638 thumbprint in base64url, so one in 64 begins with "-", and argparse would read
# it as an option ("the following arguments are required: KID"). After `keys revoke`, a word that is
# not one of that command's own options is the KID, and goes after "--" so argparse takes it as one.
_KEYS_REVOKE_OPTIONS = frozenset({"-h", "--help", "--json"})


def _dash_safe(argv: list[str]) -> list[str]:
    if argv[:2] != ["keys", "revoke"]:
        return argv
    words = argv[2:]
    options = [word for word in words if word in _KEYS_REVOKE_OPTIONS]
    kids = [word for word in words if word not in _KEYS_REVOKE_OPTIONS and word != "--"]
    return ["keys", "revoke", *options, "--", *kids]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_dash_safe(list(sys.argv[1:] if argv is None else argv)))
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "workers")}
    try:
        settings = load_settings(require_kek=args.needs_kek, **overrides)
        return int(args.handler(args, settings))
    except SettingsError as exc:
        fail(str(exc), 2)
    except CommandError as exc:
        fail(str(exc))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.TargetServerAttributeNotMatched) as exc:
        fail(f"database error: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
