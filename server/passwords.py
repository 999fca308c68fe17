"""argon2id hashing of user passwords and client secrets, off the event loop and bounded.

Verification runs in a small thread pool (argon2-cffi releases the GIL), so a flood of logins
queues there instead of stalling the loop that serves every other request. A dummy hash of the
same parameters is verified when a username is unknown, so that case costs what a wrong password
costs and usernames cannot be told apart by timing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from server.settings import Argon2Profile


class SecretHasher:
    def __init__(self, profile: Argon2Profile, *, threads: int | None = None) -> None:
        if threads is None:
            # One argon2 thread per core this process may run on: more only thrash the caches,
            # since each verification walks its whole memory block.
            threads = max(1, len(os.sched_getaffinity(0)))
        self._hasher = PasswordHasher(
            time_cost=profile.time_cost,
            memory_cost=profile.memory_kib,
            parallelism=profile.parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._dummy_hash: str | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def hash_sync(self, secret: str) -> str:
        return self._hasher.hash(secret)

    async def hash(self, secret: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._hasher.hash, secret)

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
            await asyncio.get_running_loop().run_in_executor(
                self._pool, self._verify_sync, self._dummy_hash, secret
            )
            return False
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._verify_sync, stored_hash, secret)

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return False

    async def warm_up(self) -> None:
        """Make the dummy hash before the first request, so the first unknown user costs the same."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
