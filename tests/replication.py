"""Two PostgreSQL clusters on 127.0.0.1, a primary and a streaming standby, for the failover test
(tests/test_failover.py) and its figures (``python -m tests.test_failover``).

They are made with the server binaries of the machine's PostgreSQL (Debian's
/usr/lib/postgresql/NN/bin, or ``TESSERA_PG_BIN``), not the embedded pgserver, whose wheel cannot
take a base backup of itself. PostgreSQL refuses to run as root: as root, every command runs as the
``postgres`` user (``runuser``) in a temporary directory given to it.

- ``synchronous=True``: the primary names the standby in ``synchronous_standby_names`` with
  ``synchronous_commit=on``, so a commit is answered only once the standby has flushed it. The
  standby's own configuration names no synchronous standby: once promoted it commits alone.
- ``synchronous=False``: plain asynchronous streaming, with the primary's ``synchronous_commit`` as
  given (``off`` answers a commit before even the primary's WAL is flushed).

``fsync=off`` on both: the failure played here is the primary's processes dying (SIGKILL), which
the operating system's page cache survives; a machine losing power is another test.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncpg

from tests.processes import free_port

STANDBY_NAME = "tessera_standby"


def server_binaries() -> Path | None:
    """The folder with initdb, pg_ctl and pg_basebackup: ``TESSERA_PG_BIN``, else the newest
    /usr/lib/postgresql/NN/bin."""
    configured = os.environ.get("TESSERA_PG_BIN")
    candidates = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for candidate in candidates:
        folder = Path(candidate)
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "pg_basebackup", "postgres")):
            return folder
    return None


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def unavailable() -> str | None:
    """Why two clusters cannot be started here, or None when they can."""
    if server_binaries() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup): install postgresql or set TESSERA_PG_BIN"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to run PostgreSQL as the postgres user"
    return None


class ReplicatedPostgres:
    """A primary and a standby streaming from it, in one temporary directory. ``dsn`` names both
    hosts with ``target_session_attrs=read-write``; ``primary_dsn`` and ``standby_dsn`` one each."""

    def __init__(self, *, synchronous: bool, synchronous_commit: str = "on", database: str = "tessera") -> None:
        binaries = server_binaries()
        assert binaries is not None, unavailable()
        self.bin = binaries
        self.synchronous = synchronous
        self.database = database
        self.root = Path(tempfile.mkdtemp(prefix="tessera-failover-"))
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.primary_dir = self.root / "primary"
        self.standby_dir = self.root / "standby"
        self.primary_port = free_port()
        self.standby_port = free_port()
        while self.standby_port == self.primary_port:
            self.standby_port = free_port()
        self._synchronous_commit = synchronous_commit

    # --- addresses ----------------------------------------------------------------------------------

    def _url(self, hosts: str, query: str = "") -> str:
        return f"postgresql://postgres@{hosts}/{self.database}{query}"

    @property
    def dsn(self) -> str:
        return self._url(
            f"127.0.0.1:{self.primary_port},127.0.0.1:{self.standby_port}", "?target_session_attrs=read-write"
        )

    @property
    def primary_dsn(self) -> str:
        return self._url(f"127.0.0.1:{self.primary_port}")

    @property
    def standby_dsn(self) -> str:
        return self._url(f"127.0.0.1:{self.standby_port}")

    # --- commands -----------------------------------------------------------------------------------

    def _command(self, name: str, *args: str) -> list[str]:
        command = [str(self.bin / name), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self._as_postgres else command

    def _run(self, name: str, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            self._command(name, *args), capture_output=True, text=True, timeout=timeout, cwd=self.root,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")

    def _configure(self, data: Path, settings: Sequence[str]) -> None:
        # postgresql.auto.conf is read last; pg_basebackup -R also writes there, so append.
        with open(data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join(settings) + "\n")

    def _start(self, data: Path) -> None:
        self._run("pg_ctl", "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "30", "start")

    # --- the life of the pair -----------------------------------------------------------------------

    def start(self) -> None:
        """initdb the primary, start it, make the database, base-backup the standby, start it, and
        return once the standby streams (and, synchronous, is the primary's synchronous standby)."""
        self._run("initdb", "-D", str(self.primary_dir), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        common = [
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            "fsync = off",
            "full_page_writes = on",
            "wal_level = replica",
            "max_wal_senders = 4",
            "hot_standby = on",
            "max_connections = 100",
            "shared_buffers = '32MB'",
            "wal_sender_timeout = '5s'",
            "wal_receiver_status_interval = '1s'",
        ]
        primary = [
            *common,
            f"port = {self.primary_port}",
            f"synchronous_commit = {self._synchronous_commit}",
            f"synchronous_standby_names = '{STANDBY_NAME if self.synchronous else ''}'",
        ]
        self._configure(self.primary_dir, primary)
        with open(self.primary_dir / "pg_hba.conf", "a", encoding="utf-8") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        self._start(self.primary_dir)
        asyncio.run(self._create_database())
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres",
            "-D", str(self.standby_dir), "-X", "stream", "-R", "--no-sync", "-c", "fast",
        )
        self._configure(self.standby_dir, [
            *common,
            f"port = {self.standby_port}",
            # Once promoted, the standby is a primary without a standby of its own: it must not wait
            # for one, or every commit after the failover would hang.
            "synchronous_standby_names = ''",
            "synchronous_commit = on",
            f"primary_conninfo = 'host=127.0.0.1 port={self.primary_port} user=postgres application_name={STANDBY_NAME}'",
        ])
        self._start(self.standby_dir)
        asyncio.run(self._wait_streaming())

    async def _create_database(self) -> None:
        connection = await asyncpg.connect(self._url(f"127.0.0.1:{self.primary_port}").rsplit("/", 1)[0] + "/postgres")
        try:
            # No standby yet to confirm this commit: it is the standby's base backup.
            await connection.execute("SET synchronous_commit = local")
            await connection.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await connection.close()

    async def _wait_streaming(self, timeout: float = 30.0) -> None:
        wanted = "sync" if self.synchronous else "async"
        deadline = time.monotonic() + timeout
        connection = await asyncpg.connect(self.primary_dsn)
        try:
            while True:
                state = await connection.fetchval(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                    STANDBY_NAME,
                )
                if state == wanted:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby is not streaming ({wanted}) after {timeout} s: {state}")
                await asyncio.sleep(0.05)
        finally:
            await connection.close()

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster: its backends and WAL sender exit on noticing it gone."""
        os.kill(_postmaster(self.primary_dir), signal.SIGKILL)

    def kill_standby(self) -> None:
        """SIGKILL the standby's postmaster and every process of it, and return once they are gone.
        The postmaster alone is not enough: its WAL receiver notices only moments later and may
        still confirm a commit meanwhile."""
        postmaster = _postmaster(self.standby_dir)
        processes = [postmaster, *_children(postmaster)]
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in processes):
            if time.monotonic() > deadline:
                raise RuntimeError("the standby's processes did not exit after SIGKILL")
            time.sleep(0.01)

    async def restart_standby(self) -> None:
        """Start the killed standby again (crash recovery, then streaming) and return once the
        primary counts it as its synchronous (or asynchronous) standby again."""
        for attempt in range(20):
            # The killed postmaster's children leave moments later; until then its shared memory
            # is in use and the new postmaster refuses to start.
            try:
                await asyncio.to_thread(self._start, self.standby_dir)
                break
            except RuntimeError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.25)
        await self._wait_streaming()

    async def promote(self) -> None:
        """``pg_ctl promote -w``: returns once the standby accepts writes."""
        process = await asyncio.create_subprocess_exec(
            *self._command("pg_ctl", "-D", str(self.standby_dir), "-w", "-t", "30", "promote"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            cwd=self.root,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"pg_ctl promote exited with {process.returncode}: {output.decode(errors='replace')}")

    def logs(self) -> str:
        parts = []
        for data in (self.primary_dir, self.standby_dir):
            log = data / "server.log"
            if log.exists():
                parts.append(f"--- {data.name} ---\n" + log.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def close(self) -> None:
        """Stop whatever still runs (immediately: nothing here is kept) and delete the directory."""
        for data in (self.primary_dir, self.standby_dir):
            pid_file = data / "postmaster.pid"
            if not pid_file.exists():
                continue
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "20", "stop", timeout=30)
        # A killed postmaster leaves its pid file; its children exit on their own within moments.
        shutil.rmtree(self.root, ignore_errors=True)


def _postmaster(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split("\n", 1)[0])


@contextlib.contextmanager
def replicated_postgres(*, synchronous: bool, synchronous_commit: str = "on") -> Iterator[ReplicatedPostgres]:
    pair = ReplicatedPostgres(synchronous=synchronous, synchronous_commit=synchronous_commit)
    try:
        pair.start()
        yield pair
    finally:
        pair.close()


__all__ = ["ReplicatedPostgres", "replicated_postgres", "server_binaries", "unavailable"]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The fields after the command's closing parenthesis: state, then the parent's pid.
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
