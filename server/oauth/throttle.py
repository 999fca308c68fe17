"""Brute-force throttling of the password grant and of client authentication.

Failed attempts are counted per (username, address) and per (client, address), in PostgreSQL so
every instance shares them, in a fixed window of 15 minutes that starts with the first failure.
Past the limit the answer is 429 with ``Retry-After`` until the window ends.

Nobody can lock out anybody else. Per address: an attacker on another address can never lock the
victim out, which a counter per username alone would let anyone do. Per username or client:
failures for one name never refuse another name's right password or secret, also when both come
from one address (a NAT, a proxy, a service retrying a stale secret beside its neighbours).

The cap per address across all usernames and clients (``max_failures_per_address``) is an
operator's opt-in, off (0) by default. It slows one address spraying a common password over many
accounts, at a price: once an address has that many failures, every user and client behind it is
refused, right password or not, until the window ends, so anyone sharing the address (or able to
send from it) can lock all the others out. Turn it on only where one address is one person.

An attempt is charged *before* argon2 runs (``reserve``), in one statement, so a burst of
concurrent guesses cannot all pass a check made before any of them failed; a throttled attempt
never reaches argon2. A success takes the charge back. Identical attempts in flight together
(same subject, address and secret: a client's first burst of requests, a double-submitted
login) are one attempt: one charge, one argon2 run, one answer for all of them. Unknown
usernames and clients are counted exactly like known ones, so neither the answers nor the
throttle tell whether one exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tessera.server.ops import events
from tessera.server.store.caches import RecentFailures
from tessera.server.oauth.errors import TemporarilyUnavailable, TooManyAttempts
from tessera.server.store.login_failures import Counter, FailureCount, LoginFailureStore
from tessera.server.store.users import canonical_username

T = TypeVar("T")

WINDOW_SECONDS = 900.0
PRUNE_EVERY_SECONDS = 60.0
ATTEMPTS_REMEMBERED = 4096


def address_key(remote: str | None) -> str:
    """The address attempts are counted against: an IPv6 client owns a whole /64, so count that."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The counters one login or client authentication is charged to."""

    subject: Counter  # the username's or the client's counter for this address
    address: Counter | None  # the address's own counter, if the per-address cap is on

    @property
    def counters(self) -> tuple[Counter, ...]:
        return (self.subject,) if self.address is None else (self.subject, self.address)


class LoginThrottle:
    def __init__(
        self,
        store: LoginFailureStore,
        key: bytes,
        *,
        max_failures: int,
        max_failures_per_address: int,
        clock: Callable[[], float],
        recent_failures: RecentFailures | None = None,
    ) -> None:
        self._store = store
        self._recent = recent_failures
        self._key = key
        self._max_failures = max_failures
        self._per_address = max_failures_per_address
        self._clock = clock
        self._next_prune = 0.0
        self._in_flight: dict[bytes, asyncio.Future[Any]] = {}
        self._attempts: dict[tuple[str, str, str | None], Attempt] = {}

    def _counter(self, kind: str, subject: str, remote: str, limit: int) -> Counter:
        digest = hmac.new(self._key, "\x00".join((kind, subject, remote)).encode(), hashlib.sha256).digest()
        return Counter(digest, kind, remote, limit)

    def attempt(self, kind: str, subject: str, remote: str | None) -> Attempt:
        """``kind`` is "user" (``subject`` the username) or "client" (the client id)."""
        # Two HMACs and an address parse per request: remembered for the pairs seen lately.
        known = self._attempts.get((kind, subject, remote))
        if known is None:
            if len(self._attempts) >= ATTEMPTS_REMEMBERED:
                self._attempts.clear()
            known = self._attempts[(kind, subject, remote)] = self._new_attempt(kind, subject, remote)
        return known

    def _new_attempt(self, kind: str, subject: str, remote: str | None) -> Attempt:
        if kind == "user":
            # One user, one counter: the same name in NFC and NFD is not twice the guesses.
            subject = canonical_username(subject)
        where = address_key(remote)
        address = self._counter("address", "", where, self._per_address) if self._per_address else None
        return Attempt(self._counter(kind, subject, where, self._max_failures), address)

    def _retry_after(self, count: FailureCount, now: float) -> int:
        # Rounded to the millisecond first: the database keeps microseconds, the clock more.
        return max(1, math.ceil(round(count.window_start + WINDOW_SECONDS - now, 3)))

    def refuse_if_blocked(self, attempt: Attempt, count: FailureCount | None) -> None:
        """The read-only check: ``count`` is the subject counter as just read with the client."""
        now = self._clock()
        if count is not None and count.failures >= attempt.subject.limit and count.window_start + WINDOW_SECONDS > now:
            events.login_throttled(attempt.subject.kind, attempt.subject.remote)
            raise TooManyAttempts("too many failed attempts; try again later", self._retry_after(count, now))

    async def attempt_once(
        self, attempt: Attempt, secret: str, check: Callable[[], Awaitable[T]], succeeded: Callable[[T], bool],
        *, against: str = "",
    ) -> T:
        """Charge ``attempt``, run ``check`` (argon2), and settle: a success takes the charge back.

        Concurrent calls with the same attempt and secret, checked ``against`` the same stored hash,
        share one run and its outcome (or its error); a caller that gives up does not cancel it for
        the others. The hash belongs in the key: a caller that read the row after the secret was
        rotated must not take the outcome of a check against the hash before.
        """
        material = attempt.subject.key + secret.encode() + b"\x00" + against.encode()
        key = hmac.new(self._key, material, hashlib.sha256).digest()
        running = self._in_flight.get(key)
        if running is None:
            running = asyncio.ensure_future(self._settle(attempt, check, succeeded))
            self._in_flight[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        outcome: T = await asyncio.shield(running)
        return outcome

    def _finished(self, key: bytes, done: asyncio.Future[Any]) -> None:
        self._in_flight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved, so an outcome nobody waited for is not reported as lost

    async def _settle(self, attempt: Attempt, check: Callable[[], Awaitable[T]], succeeded: Callable[[T], bool]) -> T:
        await self.reserve(attempt)
        try:
            outcome = await check()
        except TemporarilyUnavailable:
            await self.not_checked(attempt)
            raise
        if succeeded(outcome):
            await self.succeeded(attempt)
        return outcome

    async def reserve(self, attempt: Attempt) -> None:
        """Charge the attempt before the secret is checked; 429 if that goes past a limit."""
        now = self._clock()
        counts = await self._store.reserve(attempt.counters, now=now, window=WINDOW_SECONDS)
        if self._recent is not None:
            # This instance knows at once; the others learn it from the notification of the charge.
            for key, count in counts.items():
                self._recent.mark(key, count.window_start)
        over = [counts[c.key] for c in attempt.counters if c.key in counts and counts[c.key].failures > c.limit]
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_SECONDS
            await self._store.prune(before=now - WINDOW_SECONDS)
        if over:
            events.login_throttled(attempt.subject.kind, attempt.subject.remote)
            raise TooManyAttempts(
                "too many failed attempts; try again later", max(self._retry_after(c, now) for c in over)
            )

    async def succeeded(self, attempt: Attempt) -> None:
        """The secret was right: its own counter starts over; the address keeps its other failures."""
        await self._store.release(
            clear=[attempt.subject.key], take_back=[attempt.address.key] if attempt.address else []
        )

    async def not_checked(self, attempt: Attempt) -> None:
        """The attempt was charged but its secret never checked (overload): take the charge back."""
        await self._store.release(clear=[], take_back=[c.key for c in attempt.counters])


__all__ = ["WINDOW_SECONDS", "Attempt", "LoginThrottle", "address_key"]
