"""Prometheus series for GET /metrics, kept with prometheus-client.

One ``Metrics`` per server process. ``tessera.server.ops.events`` counts what happened (tokens issued,
refresh rotations, reuse, revocations, key rotations), ``tessera.server.http.answering`` times every request,
``tessera.server.store.db.MeteredPool`` reports the connection pool, and the signing keys' ages are read from the
keyring at scrape time.

Several worker processes (``tessera serve --workers N``): the supervisor points
``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before it starts them, so prometheus-client
keeps each worker's values in files there (its multiprocess mode), and /metrics, from whichever
worker answers, adds up all of them. Counters of a worker that died stay in the sum, so totals
never go backwards; its gauges leave with it.

Labels are bounded on purpose: ``client_id`` appears only on series counted after the client
authenticated (registered clients, not whatever a caller typed), ``endpoint`` is the route (or
``unmatched``), never the raw path, and a username never becomes a label.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from tessera.keys.keyring import Keyring
from tessera.server.ops.end_of_turn import EndOfTurn

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Token requests take milliseconds (argon2 for a password login: tens of them); the upper buckets
# catch a database that stalls.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ACQUIRE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class Metrics:
    """The series of one process. In multiprocess mode the values live in files, so nothing is
    registered here and each scrape reads the directory."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        values = None if multiprocess_dir else CollectorRegistry(auto_describe=True)
        self._values = values
        self._live = CollectorRegistry(auto_describe=False)  # read at scrape time, from this process

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, text, labels, registry=values)

        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, text, labels, registry=values, multiprocess_mode="livesum")

        self.tokens_issued = counter(
            "tessera_tokens_issued", "Access tokens issued, by grant type and client", ("grant_type", "client_id")
        )
        self.oauth_errors = counter(
            "tessera_oauth_errors", "Requests answered with an error, by endpoint and RFC 6749 error code",
            ("endpoint", "error"),
        )
        self.refresh_rotations = counter(
            "tessera_refresh_rotations", "Refresh tokens rotated (successful refresh_token grants)", ("client_id",)
        )
        self.refresh_retries = counter(
            "tessera_refresh_retries", "Retries inside the reuse grace, answered with the same successor",
            ("client_id",),
        )
        self.refresh_reuse = counter(
            "tessera_refresh_reuse_detected", "Spent refresh tokens presented again (family revoked)", ("client_id",)
        )
        self.families_revoked = counter(
            "tessera_refresh_families_revoked", "Refresh-token families revoked, by reason", ("reason",)
        )
        self.login_failures = counter(
            "tessera_login_failures", "Failed password logins (user) and client authentications (client)", ("kind",)
        )
        self.key_rotations = counter("tessera_key_rotations", "Signing key rotations")
        self.key_revocations = counter("tessera_key_revocations", "Signing keys revoked")
        self.requests = counter(
            "tessera_http_requests", "HTTP requests answered, by endpoint, method and status",
            ("endpoint", "method", "status"),
        )
        self.request_seconds = Histogram(
            "tessera_http_request_duration_seconds", "Time to answer an HTTP request, by endpoint and method",
            ("endpoint", "method"), registry=values, buckets=LATENCY_BUCKETS,
        )
        self.in_flight = gauge("tessera_http_requests_in_flight", "HTTP requests being handled now")
        self.pool_in_use = gauge("tessera_db_pool_connections_in_use", "Database connections lent to requests now")
        self.pool_max = gauge("tessera_db_pool_max_connections", "Largest size the pools may grow to")
        self.pool_acquire_seconds = Histogram(
            "tessera_db_pool_acquire_seconds", "Time a request waited to get a database connection",
            registry=values, buckets=ACQUIRE_BUCKETS,
        )
        self.rotation_batch_rows = Histogram(
            "tessera_refresh_rotation_batch_rows", "Refresh rotations sent to the database in one statement and commit",
            registry=values, buckets=BATCH_BUCKETS,
        )
        # What this turn of the event loop counted, written to the series at its end (``count``).
        self._counts: dict[tuple[Counter, tuple[Any, ...]], float] = {}
        # The labelled children, looked up once per (series, labels): bounded by the routes and clients.
        self._children: dict[tuple[Any, tuple[Any, ...]], Any] = {}
        self._in_flight = 0
        self._in_flight_written = 0
        self._turn: EndOfTurn[tuple[str, str, int, float, str | None]] = EndOfTurn(self._settle_turn)
        self.pool_waits = counter(
            "tessera_db_pool_waits", "Connection acquisitions that found every connection of the pool in use"
        )
        # private_key_jwt (tessera.server.oauth.client_assertions): a refused assertion is counted by
        # reason only (its client id is whatever the caller wrote); a replay carries a signature
        # that verified, so its client is a registered one.
        self.client_assertions_refused = counter(
            "tessera_client_assertions_refused", "private_key_jwt client assertions refused, by reason", ("reason",)
        )
        self.client_assertion_replays = counter(
            "tessera_client_assertion_replays", "private_key_jwt client assertions presented again (refused)",
            ("client_id",),
        )
        self.token_exchanges_refused = counter(
            "tessera_token_exchanges_refused", "Token exchanges (RFC 8693) refused, by client and reason",
            ("client_id", "reason"),
        )

    @classmethod
    def for_this_process(cls) -> Metrics:
        """Multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` names a directory."""
        return cls(os.environ.get(MULTIPROC_ENV) or None)

    # --- what the rest of the server reports ----------------------------------------------------

    def request_started(self) -> None:
        """A request came in: in flight until its ``request_done``."""
        self._in_flight += 1
        self._turn.mark()

    def request_done(self, endpoint: str, method: str, status: int, seconds: float, error: str | None) -> None:
        """A request was answered (after its ``request_started``). Counted at the end of this turn
        of the event loop, with the other requests that ended in it, as the request log lines are
        written (tessera.server.ops.logs): one run of prometheus-client calls per turn, not several per request
        in between the rest. A scrape counts what is pending first."""
        self._in_flight -= 1
        self._turn.add((endpoint, method, status, seconds, error))

    def request_dropped(self) -> None:
        """A request ended without an answer of the application's (cancelled)."""
        self._in_flight -= 1
        self._turn.mark()

    def count(self, counter: Counter, labels: tuple[Any, ...] = (), amount: float = 1.0) -> None:
        """Add ``amount`` to ``counter`` (with ``labels``) at the end of this turn: the counts of one
        turn are summed first, so a hundred tokens issued to one client are one ``inc``."""
        key = (counter, labels)
        counts = self._counts
        counts[key] = counts.get(key, 0.0) + amount
        self._turn.mark()

    def _child(self, key: tuple[Any, tuple[Any, ...]]) -> Any:
        child = self._children.get(key)
        if child is None:
            series, labels = key
            child = self._children[key] = series.labels(*labels) if labels else series
        return child

    def _settle_turn(self, done: list[tuple[str, str, int, float, str | None]]) -> None:
        counts, self._counts = self._counts, {}
        for endpoint, method, status, seconds, error in done:
            self._child((self.request_seconds, (endpoint, method))).observe(seconds)
            key: tuple[Counter, tuple[Any, ...]] = (self.requests, (endpoint, method, status))
            counts[key] = counts.get(key, 0.0) + 1.0
            if error is not None:
                key = (self.oauth_errors, (endpoint, error))
                counts[key] = counts.get(key, 0.0) + 1.0
        for key, amount in counts.items():
            self._child(key).inc(amount)
        if self._in_flight != self._in_flight_written:
            self.in_flight.set(self._in_flight)
            self._in_flight_written = self._in_flight

    def pool_opened(self, max_size: int) -> None:
        self.pool_max.set(max_size)

    def pool_acquired(self, seconds: float, exhausted: bool) -> None:
        self.pool_in_use.inc()
        self.pool_acquire_seconds.observe(seconds)
        if exhausted:
            self.pool_waits.inc()

    def pool_released(self) -> None:
        self.pool_in_use.dec()

    def watch_keyring(self, keyring: Keyring, clock: Callable[[], float]) -> None:
        self._live.register(KeyAgeCollector(keyring, clock))

    # --- the scrape -----------------------------------------------------------------------------

    def _render_sync(self) -> bytes:
        if self.multiprocess_dir is not None:
            values = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(values, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            assert self._values is not None
            values = self._values
        return generate_latest(values) + generate_latest(self._live)

    async def render(self) -> bytes:
        """The text exposition; reading the multiprocess files is disk I/O, so off the loop."""
        self._turn.flush()
        if self.multiprocess_dir is None:
            return self._render_sync()
        return await asyncio.get_running_loop().run_in_executor(None, self._render_sync)


METRICS = web.AppKey("metrics", Metrics)


class KeyAgeCollector(Collector):
    """``tessera_signing_key_age_seconds{state, kid}``: how long the active key has signed, the next
    key has been published, and each retired key has been retired. An active key far older than
    TESSERA_KEY_ROTATION_INTERVAL means rotation has stopped."""

    def __init__(self, keyring: Keyring, clock: Callable[[], float]) -> None:
        self._keyring = keyring
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tessera_signing_key_age_seconds",
            "Seconds since the key entered its state (active: activated, next: created, retired: retired)",
            labels=("state", "kid"),
        )
        if self._keyring.loaded:
            now = self._clock()
            for key in self._keyring.snapshot.keys:
                since: datetime | None = {
                    "active": key.activated_at or key.created_at,
                    "next": key.created_at,
                    "retired": key.retired_at,
                }.get(key.state)
                if since is not None:
                    family.add_metric((key.state, key.kid), max(0.0, now - since.timestamp()))
        yield family


# --- the process's current series -------------------------------------------------------------
# ``tessera.server.ops.events`` is called from grants, stores and the key lifecycle, which hold no reference to
# the app; prometheus-client's values are per process anyway. So the running app binds its Metrics
# here for its lifetime (tests run several apps one after another in one process).

_bound: list[Metrics] = []


def current() -> Metrics | None:
    """The series of the app running in this process, if any (a CLI command has none)."""
    return _bound[-1] if _bound else None


@contextlib.contextmanager
def bound(metrics: Metrics) -> Iterator[Metrics]:
    _bound.append(metrics)
    try:
        yield metrics
    finally:
        _bound.remove(metrics)


# --- the multiprocess directory, owned by ``tessera serve`` ----------------------------------------


def reset_multiprocess_dir(path: Path) -> None:
    """Start a run with an empty directory: files left by an earlier run would be added in."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def worker_exited(pid: int, path: Path) -> None:
    """Drop a dead worker's live gauges (in flight, pool); its counters stay in the sums."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


__all__ = ["CONTENT_TYPE", "METRICS", "MULTIPROC_ENV", "Metrics", "bound", "current", "reset_multiprocess_dir", "worker_exited"]
