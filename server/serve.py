"""``tessera serve``: one process, or a supervisor with N worker processes sharing the port.

Shutdown on SIGTERM (or SIGINT), in this order:

1. /readyz answers 503, so a load balancer that polls it stops sending new work;
2. after TESSERA_SHUTDOWN_DELAY seconds (0 by default) the listener closes: new connections are
   refused, and idle keep-alive connections are closed;
3. requests in flight finish, for up to TESSERA_SHUTDOWN_TIMEOUT seconds (then they are cancelled),
   also one whose body is still arriving: its connection keeps reading that body
   (tessera.server.http.answering.AnsweringConnection);
4. the database pool closes and the process exits with status 0.

With ``--workers N`` the supervisor starts the embedded PostgreSQL (if no TESSERA_DATABASE_URL),
migrates and makes the first keys once, then spawns N workers. Each binds the port with
SO_REUSEPORT (the kernel spreads connections over them) and has its own pool. The supervisor
passes SIGTERM and SIGINT on, waits for the workers and exits 0. A worker that dies is replaced;
if workers keep dying (more than ``CRASH_LIMIT`` times within ``CRASH_WINDOW`` seconds) the
supervisor stops the rest and exits 1, so that the container or systemd restarts it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from aiohttp import web

from tessera.server.store import db
from tessera.server.ops import logs
from tessera.server.ops import metrics
from tessera.server.app import create_app, prepare_database
from tessera.server.clients_file import load_setting_file
from tessera.server.http.answering import AnsweringRunner
from tessera.server.ops.metrics import METRICS
from tessera.server.services import SERVICES
from tessera.server.settings import Settings, SettingsError

log = logging.getLogger("tessera")

CRASH_LIMIT = 5
CRASH_WINDOW = 60.0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(settings: Settings) -> int:
    logs.configure()
    ensure_port_free(settings.host, settings.port)  # a refusal is the only line on stderr
    check_development_kek(settings)
    load_setting_file(settings)  # a bad clients file stops the start before the database is touched
    if settings.workers > 1:
        return Supervisor(settings).run()
    if given := os.environ.get(metrics.MULTIPROC_ENV):
        metrics.reset_multiprocess_dir(Path(given))
    return run_worker(settings, reuse_port=False)


# --- one serving process ------------------------------------------------------------------------


def settle_heap() -> int:
    """Once set up (modules, app, pool, keys, caches all made), before taking requests: collect
    once, then freeze what is left, so that the collector's full passes no longer walk it
    (``gc.freeze``, Python 3.7+: "to speed up collection", CPython bpo-31558). Returns the number
    of objects frozen.

    Measured at 64 connections of client_credentials on one core: without it the process made
    about one full collection a second over some 63,000 objects, each about 19 ms during which no
    request moved (a stall every request in flight feels at its p99), together about 1.5% of the
    CPU; with it a full pass walks some 6,000 objects in under 1 ms (docs/performance.md).
    Reference counting still frees frozen objects; only a reference cycle among them would
    stay, and they are what the process keeps until it exits anyway.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run_worker(settings: Settings, *, reuse_port: bool) -> int:
    _install_uvloop()
    return asyncio.run(_serve_until_signalled(settings, reuse_port))


async def _serve_until_signalled(settings: Settings, reuse_port: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(settings)
    # aiohttp's runner, with connections that answer what aiohttp would answer itself (requests its
    # parser refuses) as every other error, and that let a request finish its body on shutdown.
    runner = AnsweringRunner(
        app, series=app[METRICS], access_log=None, handle_signals=False, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()  # opens the pool, migrates, loads the keys
    try:
        frozen = settle_heap()  # before the port opens, so that its one full collection holds up no request
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port)
        await site.start()
        log.info("listening", extra={"addresses": [list(a)[:2] for a in runner.addresses], "gc_frozen_objects": frozen})
        await stop.wait()
        app[SERVICES].shutting_down = True  # /readyz: 503 from now on
        log.info(
            "shutting down",
            extra={"delay_s": settings.shutdown_delay, "timeout_s": settings.shutdown_timeout},
        )
        await asyncio.sleep(settings.shutdown_delay)
    finally:
        # Closes the listener, waits for requests in flight (up to the timeout), closes the pool.
        await runner.cleanup()
    log.info("stopped")
    return 0


# --- several worker processes -------------------------------------------------------------------


def _worker_main(settings: Settings) -> None:
    """Entry point of a spawned worker (a fresh interpreter)."""
    # Ctrl-C reaches the whole process group; the supervisor turns it into SIGTERM for us, and the
    # event loop takes SIGINT over once it runs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure()
    try:
        code = run_worker(settings, reuse_port=True)
    except Exception:
        log.exception("worker failed")
        code = 1
    raise SystemExit(code)


def check_development_kek(settings: Settings) -> None:
    """With the embedded database and no TESSERA_KEY_ENCRYPTION_KEY, private keys and server
    secrets are sealed with a key kept in a file beside the database they are sealed in: fine on a
    developer's machine, no protection anywhere else. Said at every start; on an address other
    than loopback, refused unless the operator says they mean it."""
    if not settings.development_kek:
        return
    if not _is_loopback(settings.host) and not settings.allow_dev_kek_on_network:
        raise SettingsError(
            f"TESSERA_HOST: {settings.host} is not a loopback address, and private keys would be sealed with"
            " the development key-encryption key kept beside the embedded database; set"
            " TESSERA_KEY_ENCRYPTION_KEY (and TESSERA_DATABASE_URL), or TESSERA_ALLOW_DEV_KEK_ON_NETWORK=1"
            " if that is what you mean"
        )
    log.warning(
        "development key-encryption key in use: private keys are sealed with a key stored beside the"
        " embedded database; set TESSERA_KEY_ENCRYPTION_KEY outside development",
        extra={"event": "development_kek", "path": str(settings.data_dir / "key-encryption-key"),
               "host": settings.host},
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def ensure_port_free(host: str, port: int) -> None:
    """Refuse to start beside another server on the port (SO_REUSEPORT would quietly share it),
    with one line, before the database is touched."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)  # EADDRINUSE while anything listens there
    except OSError as exc:
        raise SettingsError(f"TESSERA_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _multiprocess_dir(given: str | None) -> Iterator[Path]:
    """The directory for prometheus-client's multiprocess files: the operator's, emptied, or a
    fresh temporary one that is removed afterwards."""
    if given:
        path = Path(given)
        metrics.reset_multiprocess_dir(path)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="tessera-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.stopping = False
        self.workers: dict[int, BaseProcess] = {}  # slot -> process
        self.crashes: list[float] = []
        self.failed = False

    def run(self) -> int:
        settings = self.settings
        with db.open_database(settings) as database:
            asyncio.run(self._prepare(database))
            # The clients file was applied here (prepare_database): the workers need not again.
            worker_settings = dataclasses.replace(
                settings, database_url=database.dsn, key_encryption_key=database.kek, clients_file=None
            )
            with _multiprocess_dir(os.environ.get(metrics.MULTIPROC_ENV)) as metrics_dir:
                # Spawned workers inherit it and import prometheus-client with it set.
                os.environ[metrics.MULTIPROC_ENV] = str(metrics_dir)
                return self._supervise(worker_settings, metrics_dir)

    async def _prepare(self, database: db.Database) -> None:
        pool = await db.create_pool(database.dsn, size=1, statement_timeout=self.settings.db_statement_timeout)
        try:
            await prepare_database(pool, self.settings, database.keks, time.time)
        finally:
            await pool.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
        self.stopping = True
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, signum: int) -> None:
        for process in self.workers.values():
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _start(self, slot: int, settings: Settings) -> None:
        process = multiprocessing.get_context("spawn").Process(
            target=_worker_main, args=(settings,), name=f"tessera-worker-{slot}", daemon=False
        )
        process.start()
        self.workers[slot] = process
        log.info("worker started", extra={"slot": slot, "worker_pid": process.pid})

    def _supervise(self, settings: Settings, metrics_dir: Path) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(settings.workers):
                self._start(slot, settings)
            deadline: float | None = None
            while self.workers:
                if self.stopping and deadline is None:
                    deadline = self.clock() + settings.shutdown_delay + settings.shutdown_timeout + 5.0
                sentinels = {p.sentinel: slot for slot, p in self.workers.items()}
                for sentinel in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                    self._reap(sentinels[sentinel], settings, metrics_dir)  # type: ignore[index]
                if deadline is not None and self.clock() > deadline:
                    log.error("workers did not stop in time; killing them")
                    self._signal_workers(signal.SIGKILL)
                    deadline = float("inf")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 1 if self.failed else 0

    def _reap(self, slot: int, settings: Settings, metrics_dir: Path) -> None:
        process = self.workers.pop(slot)
        process.join()
        assert process.pid is not None
        metrics.worker_exited(process.pid, metrics_dir)
        if self.stopping:
            # -SIGTERM: stopped while still starting, before it could handle the signal.
            if process.exitcode not in (0, -signal.SIGTERM):
                self.failed = True
                log.error("worker stopped badly", extra={"worker_pid": process.pid, "exitcode": process.exitcode})
            return
        now = self.clock()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
        log.error("worker died", extra={"worker_pid": process.pid, "exitcode": process.exitcode, "slot": slot})
        if len(self.crashes) > CRASH_LIMIT:
            log.error("workers keep dying; stopping", extra={"crashes": len(self.crashes), "window_s": CRASH_WINDOW})
            self.failed = True
            self.stopping = True
            self._signal_workers(signal.SIGTERM)
            return
        self._start(slot, settings)
