"""`tessera serve` as a child process, the way an operator runs it, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def tessera_serve(env: dict[str, str], log_path: Path, *, ready_within: float = 30.0) -> Iterator[str]:
    """Start `tessera serve` with ``env`` (which sets TESSERA_PORT), wait until /readyz says 200,
    yield its base URL; always stop it. Its stderr goes to ``log_path``: a file, because a pipe
    nobody reads while it runs fills up and stalls the server."""
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=log_file)
    base = f"http://127.0.0.1:{env['TESSERA_PORT']}"
    try:
        deadline = time.monotonic() + ready_within
        while not _ready(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tessera serve did not become ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
