"""Real processes for the operational tests: ``tessera serve``, the CLI, nginx.

Every process is started through :class:`Processes`: in a test, the ``processes`` fixture, which
stops whatever is still running when the test ends (SIGTERM, then SIGKILL), pass or fail; outside
one (a module-scoped fixture, a bench script), :func:`tessera_serve`, which does the same around a
``with`` block. Output goes to files in a directory of the caller's so that it can read the logs
afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import eventually

TESSERA = [sys.executable, "-m", "tessera.server.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """The machine's environment without any TESSERA_ or PROMETHEUS_ setting, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "PROMETHEUS_"))}
    base.update(env)
    return base


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Tessera's stderr, one JSON object per line (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
            raise AssertionError(f"{self.name} did not stop within {timeout} s of SIGTERM") from None


@dataclass
class Processes:
    directory: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> Process:
        stdout_path = self.directory / f"{name}.stdout"
        stderr_path = self.directory / f"{name}.stderr"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            popen = subprocess.Popen(
                list(args), env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd
            )
        process = Process(name, popen, stdout_path, stderr_path)
        self.started.append(process)
        return process

    def serve(self, name: str, env: dict[str, str], *args: str) -> Process:
        return self.start(name, [*TESSERA, "serve", *args], clean_env(env))

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.started:
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TESSERA, *args], input=stdin, env=clean_env(env), capture_output=True, text=True, timeout=60
    )


async def wait_until_ready(url: str, process: Process | None = None, timeout: float = 30.0) -> None:
    """Poll ``url`` (a /readyz) until it answers 200; fail early if the process exits."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

        async def ready() -> bool:
            if process is not None and process.popen.poll() is not None:
                raise AssertionError(f"{process.name} exited with {process.popen.returncode}:\n{process.stderr()[-3000:]}")
            try:
                async with http.get(url) as response:
                    return response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        logs = (lambda: process.stderr()[-3000:]) if process is not None else None
        await eventually(ready, timeout=timeout, interval=0.05, what=f"{url} answering 200", details=logs)


@contextlib.contextmanager
def tessera_serve(env: dict[str, str], directory: Path, *, ready_within: float = 30.0) -> Iterator[tuple[str, Process]]:
    """`tessera serve` for callers outside a test's event loop: started with ``env`` (on its
    TESSERA_PORT, or a free port), logging to ``directory``; yields its base URL and the process once
    /readyz answers 200, and stops it however the block ends."""
    started = Processes(directory)
    try:
        port = env.get("TESSERA_PORT") or str(free_port())
        server = started.serve("tessera", {**env, "TESSERA_PORT": port})
        base = f"http://127.0.0.1:{port}"
        asyncio.run(wait_until_ready(f"{base}/readyz", server, timeout=ready_within))
        yield base, server
    finally:
        started.stop_all()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(sample name, labels): value}, with prometheus-client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


__all__ = [
    "Process", "Processes", "clean_env", "cli", "free_port", "parse_metrics", "processes", "sample",
    "tessera_serve", "wait_until_ready",
]
