"""argon2id hashing of user passwords and client secrets, off the event loop and bounded.

Verification runs in a small thread pool (argon2-cffi releases the GIL), so a flood of logins
queues there instead of stalling the loop that serves every other request. The queue is bounded
too: past ``threads + queue`` checks admitted at once, another is refused at once with 503
``temporarily_unavailable`` and ``Retry-After`` instead of waiting behind a flood (and holding its
connection and memory) for seconds. A dummy hash of the same parameters is verified when a
username is unknown, so that case costs what a wrong password costs and usernames cannot be told
apart by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tessera.server.ops import events
from tessera.server.oauth.errors import TemporarilyUnavailable
from tessera.server.settings import Argon2Profile

T = TypeVar("T")


class SecretHasher:
    def __init__(self, profile: Argon2Profile, *, threads: int = 2, queue: int = 16) -> None:
        self._hasher = PasswordHasher(
            time_cost=profile.time_cost,
            memory_cost=profile.memory_kib,
            parallelism=profile.parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._capacity = threads + queue
        self._admitted = 0
        self._dummy_hash: str | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def hash_sync(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def refuse_if_full(self) -> None:
        """503 at once when no check could be admitted now: callers ask before doing any other work
        for a check (the login throttle's write), so a flood past the queue costs almost nothing."""
        if self._admitted >= self._capacity:
            events.hasher_saturated()
            raise TemporarilyUnavailable("too many password checks in progress", retry_after=1)

    async def _run(self, work: Callable[..., T], *args: str) -> T:
        """Run ``work`` in the pool if there is room; a slot is freed when the work really ends."""
        self.refuse_if_full()
        loop = asyncio.get_running_loop()
        self._admitted += 1
        future: Future[T] = self._pool.submit(work, *args)
        # Freed when the work ends, not when the awaiting request gives up: a started argon2 run
        # keeps its thread busy whatever happens to the request.
        future.add_done_callback(lambda _: self._release_from_any_thread(loop))
        return await asyncio.wrap_future(future)

    def _release_from_any_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is counting any more
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._admitted -= 1

    async def hash(self, secret: str) -> str:
        return await self._run(self._hasher.hash, secret)

    def _verify_sync(self, stored_hash: str, secret: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored_hash: str | None, secret: str) -> bool:
        """True if ``secret`` matches; with ``stored_hash`` None, spend the same time and say False."""
        if stored_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
            await self._run(self._verify_sync, self._dummy_hash, secret)
            return False
        return await self._run(self._verify_sync, stored_hash, secret)

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return False

    async def warm_up(self) -> None:
        """Make the dummy hash before the first request, so the first unknown user costs the same."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
