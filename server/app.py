"""The aiohttp application: its resources opened and closed in order with ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp import web

from tessera.keys.kek import KekRing
from tessera.keys.keyring import Keyring
from tessera.server.clients_file import apply_at_start
from tessera.server.store import db
from tessera.server.ops import metrics
from tessera.server.oauth.client_auth import ClientAuthenticator, VerifiedSecretCache
from tessera.server.oauth.client_assertions import ClientAssertions, ClientKeySets
from tessera.server.store.assertions import AssertionJtiStore
from tessera.server.store.caches import ChangeFeed, ClientCache, RecentFailures
from tessera.server.http.cors import install_cors
from tessera.server.oauth.families import RefreshFamilies
from tessera.server.oauth.grants import build_grants
from tessera.server.oauth.introspection import AccessTokenReader, Introspection
from tessera.server.tasks.key_scheduler import KeyScheduler, key_lifecycle
from tessera.server.http.limits import DEADLINES, connection_limits, deadlines
from tessera.server.ops.metrics import METRICS, Metrics
from tessera.server.http.answering import hide_server_version
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.oauth.revocation import Revocation, endpoint_metadata
from tessera.server.services import SERVICES, Services
from tessera.server.http.pages import Pages, PageSettings, Seal
from tessera.server.oauth.password_check import PasswordCheck
from tessera.server.oauth.sign_in import SignIn, sign_in_metadata
from tessera.server.oauth.userinfo import UserInfo
from tessera.server.store.sign_in import SignInStore
from tessera.server.tasks.janitor import Janitor
from tessera.server.tasks.listener import ChangeListener
from tessera.server.settings import Settings
from tessera.server.store import ClientStore, PgKeyStore, UserStore
from tessera.server.store.login_failures import LoginFailureStore
from tessera.server.store.secrets import server_secret
from tessera.server.oauth.throttle import WINDOW_SECONDS, LoginThrottle
from tessera.server.oauth.tokens import AccessTokenIssuer
from tessera.server.http.views import add_routes, metadata_document

log = logging.getLogger("tessera")


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    # No middleware: each route is wrapped instead (tessera.server.http.answering.answering, tessera.server.http.views).
    app = web.Application(client_max_size=settings.max_body_bytes, handler_args=connection_limits(settings))
    app[METRICS] = Metrics.for_this_process()
    app[DEADLINES] = deadlines(settings)
    hide_server_version()
    install_cors(app, settings.cors_origins)
    add_routes(app, app[METRICS], settings.cors_origins)

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        with metrics.bound(app[METRICS]):
            async with open_services(settings, clock, app[METRICS]) as services:
                app[SERVICES] = services
                yield
                services.shutting_down = True

    app.cleanup_ctx.append(services_ctx)
    return app


async def prepare_database(pool: asyncpg.Pool, settings: Settings, keks: KekRing, clock: Callable[[], float]) -> None:
    """Migrate, make the first keys and apply TESSERA_CLIENTS_FILE: idempotent, so instances
    starting together are safe."""
    async with pool.acquire() as connection:
        await db.migrate(connection)
    await key_lifecycle(settings, PgKeyStore(pool), keks, clock).prepare()
    await apply_at_start(pool, settings)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, clock: Callable[[], float], series: Metrics | None = None
) -> AsyncIterator[Services]:
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as stack:
        # Starting the embedded PostgreSQL blocks for a moment; do it off the loop.
        database = await loop.run_in_executor(None, stack.enter_context, db.open_database(settings))
        pool = await db.create_pool_when_reachable(
            database.dsn,
            size=settings.db_pool_size,
            statement_timeout=settings.db_statement_timeout,
            wait=settings.db_startup_wait,
            observer=series,
        )
        try:
            await prepare_database(pool, settings, database.keks, clock)
            key_store = PgKeyStore(pool)
            keyring = Keyring(key_store, database.keks, clock=clock)
            client_rows = ClientCache()
            recent_failures = RecentFailures(WINDOW_SECONDS, clock)
            key_scheduler = KeyScheduler(
                keyring,
                key_lifecycle(settings, key_store, database.keks, clock),
                reload_interval=settings.key_reload_interval,
                clock=clock,
            )
            listener = ChangeListener(
                database.dsn, keys_changed=key_scheduler.wake, feed=ChangeFeed(client_rows, recent_failures)
            )
            await key_scheduler.prepare()
            if series is not None:
                series.watch_keyring(keyring, clock)
            hasher = SecretHasher(settings.argon2, threads=settings.argon2_threads, queue=settings.argon2_queue)
            # Client secrets get a lane of their own: a flood of wrong passwords cannot starve it.
            client_hasher = SecretHasher(settings.argon2, threads=1, queue=settings.argon2_queue)
            await hasher.warm_up()
            await client_hasher.warm_up()
            throttle = LoginThrottle(
                LoginFailureStore(pool),
                await server_secret(pool, database.keks, "login-throttle"),
                max_failures=settings.login_max_failures,
                max_failures_per_address=settings.login_max_failures_per_address,
                clock=clock,
                recent_failures=recent_failures,
            )
            clients, users = ClientStore(pool), UserStore(pool)
            tokens = AccessTokenIssuer(keyring, issuer=settings.issuer, ttl=settings.access_token_ttl, clock=clock)
            families = await RefreshFamilies.open(
                pool,
                database.keks,
                refresh_token_ttl=settings.refresh_token_ttl,
                session_ttl=settings.session_ttl,
                reuse_grace=settings.refresh_reuse_grace,
                clock=clock,
            )
            codes = SignInStore(pool)
            passwords = PasswordCheck(users, hasher, throttle)
            reader = AccessTokenReader(keyring, issuer=settings.issuer, clock=clock)
            grants = build_grants(
                tokens=tokens, families=families, passwords=passwords, codes=codes, clock=clock, reader=reader
            )
            sign_in = SignIn(
                codes, clients, passwords, keyring, issuer=settings.issuer,
                code_ttl=settings.authorization_code_ttl, session_ttl=settings.login_session_ttl, clock=clock,
            )
            pages = Pages(
                sign_in,
                Seal(await server_secret(pool, database.keks, "sign-in-pages"), clock),
                PageSettings(
                    issuer=settings.issuer, max_body_bytes=settings.max_body_bytes,
                    trusted_proxies=settings.trusted_proxies, session_ttl=settings.login_session_ttl,
                    templates_dir=settings.templates_dir,
                ),
            )
            janitor = Janitor(pool, clock)
            assertions = ClientAssertions(
                ClientKeySets(clock=clock), AssertionJtiStore(pool), issuer=settings.issuer, clock=clock
            )
            services = Services(
                settings=settings,
                pool=pool,
                keyring=keyring,
                authenticator=ClientAuthenticator(
                    clients, client_hasher, VerifiedSecretCache(), throttle, client_rows, recent_failures,
                    assertions=assertions,
                ),
                grants=grants,
                revocation=Revocation(families, reader),
                introspection=Introspection(families, reader),
                pages=pages,
                userinfo=UserInfo(reader, families, users),
                metadata_body=metadata_document(
                    settings.issuer, sorted(grants), {**endpoint_metadata(settings.issuer), **sign_in_metadata(settings)}
                ),
            )
            log.info("ready", extra={"issuer": settings.issuer, "kid": keyring.snapshot.signer.kid})
            janitor.start()
            try:
                async with listener.running(), key_scheduler.running():
                    yield services
            finally:
                await janitor.stop()
                await assertions.close()
                hasher.close()
                client_hasher.close()
        finally:
            await db.close_pool(pool, timeout=settings.db_statement_timeout)
