"""Fault injection for the tests: a PostgreSQL that can be stopped and started, and a TCP proxy in
front of one that shows what a client sent and can turn into a black hole (accepts connections,
never answers)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit


class StoppablePostgres:
    """A throw-away PostgreSQL from the pgserver wheel, in a temporary directory, that a test may
    stop and start again (same socket, same data). ``close`` always stops and deletes it."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="tessera-fault-pg-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
            from pgserver import _commands

            self._server: Any = pgserver.get_server(self._dir, cleanup_mode="delete")
        self._pg_ctl: Any = getattr(_commands, "pg_ctl")
        info = self._server.get_postmaster_info()
        self._socket_dir = str(info.socket_dir)
        self.url = self._server.get_uri()

    def stop(self) -> None:
        # "immediate": what a crash or a pulled cable looks like to the clients.
        self._pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self._dir, user=self._server.system_user, timeout=30)

    def start(self) -> None:
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self._dir / "log"), "start"],
            pgdata=self._dir,
            user=self._server.system_user,
            timeout=30,
        )

    def running(self) -> bool:
        try:
            self._pg_ctl(["status"], pgdata=self._dir, user=self._server.system_user, timeout=10)
        except Exception:  # pg_ctl status exits 3 when stopped; anything else also means "not running"
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop()
        with contextlib.suppress(Exception):
            self._server.cleanup()
        shutil.rmtree(self._dir, ignore_errors=True)


class TcpProxy:
    """Relays 127.0.0.1:port to a PostgreSQL (TCP or Unix socket) until told to ``blackhole``;
    ``async with TcpProxy(url) as proxy`` starts and closes it.

    ``first_bytes`` keeps each relayed connection's first eight bytes: what the driver opened with
    (a TLS request or the startup message). In black-hole mode new connections are accepted and
    never answered, and connections already open stop relaying for good (bytes are swallowed both
    ways): a database that accepts connections but does not answer. ``forward`` relays new
    connections again.
    """

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        socket_dir = parse_qs(parts.query).get("host", [None])[0]
        self._unix_path = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir else None
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._parts = parts
        self.database = parts.path.lstrip("/")
        self.blackholed = False
        self.first_bytes: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        user = self._parts.username or "postgres"
        password = f":{self._parts.password}" if self._parts.password else ""
        return urlunsplit(("postgresql", f"{user}{password}@127.0.0.1:{self.port}", self._parts.path, "", ""))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def blackhole(self) -> None:
        self.blackholed = True

    def forward(self) -> None:
        self.blackholed = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            first = await reader.readexactly(8)  # PostgreSQL clients speak first
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        if self.blackholed:
            await self._swallow(reader)
            return
        self.first_bytes.append(first)
        if self._unix_path:
            up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers.add(up_writer)
        up_writer.write(first)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._relay(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    async def _relay(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if self.blackholed:
                    await self._swallow(source)  # this connection is dead for good
                    return
                sink.write(data)
                await sink.drain()
        sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
