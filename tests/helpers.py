"""Small helpers shared by the tests, each the one definition of its kind: the test credentials,
the hand-moved clock, the polling helper (:func:`eventually`) and the in-process Tessera server
(:func:`tessera_server`, on :func:`served`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jws, jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet

from tessera.server.app import create_app
from tessera.server.settings import Settings, load_settings

T = TypeVar("T")

FORM = "application/x-www-form-urlencoded"

# The test credentials: every test client's secret (conftest's ``admin.client`` default), every test
# user's password (``admin.user``'s), and a well-formed key-encryption key for tests that never
# open a key (the ``kek`` fixture is a random one for those that do).
SECRET = "s3cret-s3cret-s3cret"
PASSWORD = "correct horse battery staple"
KEK = "A" * 43


class FakeClock:
    """A clock the test moves by hand: ``clock.advance(3600)``. It starts at ``start`` (a Unix
    time), or at the real time now when none is given."""

    def __init__(self, start: float | None = None) -> None:
        self.now = start if start is not None else time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    timeout: float = 5.0,
    *,
    interval: float = 0.02,
    what: str = "condition",
    fail: bool = True,
    details: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` (a function or a coroutine function) every ``interval`` seconds until it
    returns something truthy, and return that. After ``timeout`` seconds: fail the test with
    "``what`` not reached" (plus ``details()``, read then), or with ``fail=False`` return the last
    result. ``check`` may itself fail the test early (an exited process, an unexpected answer).

    Also for changes made behind the server's back (another pool, the CLI): the server learns of
    them from a PostgreSQL notification, milliseconds after the commit (docs/performance.md)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            if not fail:
                return result  # type: ignore[return-value]
            more = f":\n{details()}" if details is not None else ""
            raise AssertionError(f"{what} not reached within {timeout} s{more}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    """Any aiohttp app served in this process on 127.0.0.1 (aiohttp's TestServer), and an HTTP
    client for it; both closed when the block ends."""
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        yield http


@contextlib.asynccontextmanager
async def tessera_server(
    config: Mapping[str, str] | Settings, clock: Callable[[], float] = time.time, **extra: str
) -> AsyncIterator[TestClient[Any, Any]]:
    """A Tessera app (``create_app``) served in this process on 127.0.0.1, and an HTTP client for it.

    ``config`` is the environment, to which ``extra`` adds or overrides settings
    (``tessera_server(env, clock, TESSERA_REFRESH_REUSE_GRACE="30")``), or Settings already loaded."""
    if isinstance(config, Settings):
        assert not extra, "extra settings go with an environment, not with loaded Settings"
        settings = config
    else:
        settings = load_settings({**config, **extra})
    async with served(create_app(settings, clock=clock)) as http:
        yield http


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def post_token(http: TestClient[Any, Any], data: dict[str, str] | str | bytes, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    response = await http.post("/token", data=data, **kwargs)
    body = await response.json(content_type=None)
    return response.status, body, response


async def fetch_jwks(http: TestClient[Any, Any]) -> KeySet:
    response = await http.get("/.well-known/jwks.json")
    assert response.status == 200
    return KeySet.import_key_set(await response.json(content_type=None))


def decode_segment(segment: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def verify_with_joserfc(token: str, key_set: KeySet, algorithms: list[str] | None = None) -> jwt.Token:
    """Verify the way any resource server would: signature via the JWKS, kid from the header."""
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864 (in favour of "Ed25519"); the contract
        # names EdDSA, which every JOSE library still accepts.
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.decode(token, key_set, algorithms=algorithms or ["ES256", "ES384", "EdDSA", "RS256", "PS256"])


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


__all__ = [
    "FORM", "KEK", "PASSWORD", "SECRET", "FakeClock", "basic", "decode_segment", "eventually", "fetch_jwks", "jws",
    "post_token", "served", "tessera_server", "verify_with_joserfc", "with_database",
]


async def only_the_locked_row_waits(
    pool: Any, lock_sql: str, locked: Hashable, writes: Mapping[Hashable, Callable[[], Awaitable[Any]]]
) -> None:
    """Group commit's rule that one row does not hold up its batch: every write of ``writes`` is
    started while another transaction holds the row lock ``lock_sql`` takes on ``locked``. The batch
    gives up on the lock after its lock_timeout and the others go through row by row (each answers
    something, not None); ``locked``'s write waits for its lock, as it would alone, and is answered
    once the other transaction rolls back."""
    async with pool.acquire() as blocker:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(lock_sql, locked)
        started = {key: asyncio.ensure_future(write()) for key, write in writes.items()}
        others = [task for key, task in started.items() if key != locked]
        done, _ = await asyncio.wait(others, timeout=5)
        assert len(done) == len(others) and all(task.result() is not None for task in done)
        assert not started[locked].done()
        await transaction.rollback()
        assert await asyncio.wait_for(started[locked], 5) is not None
