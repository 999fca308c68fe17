"""SIGTERM and a request whose body is still arriving, against a real `tessera serve` over a raw
socket: the request is answered (within TESSERA_SHUTDOWN_TIMEOUT), then the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time

from tests.helpers import SECRET, basic, eventually
from tests.processes import free_port, wait_until_ready

SHUTDOWN_TIMEOUT = 8.0


async def _refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_sigterm_answers_a_request_whose_body_is_still_arriving(processes, env, admin):
    await admin.client("svc")
    port = free_port()
    server = processes.serve("tessera", {**env, "TESSERA_PORT": str(port), "TESSERA_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)})
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", server)

    body = b"grant_type=client_credentials&scope=read"
    head = (
        "POST /token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Authorization: {basic('svc', SECRET)['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body[:12])
        await writer.drain()
        await asyncio.sleep(0.3)  # the headers are in and the request is being handled: it waits for its body
        server.signal(signal.SIGTERM)
        # Shutdown is under way once the listener has closed; the idle connections go right after it.
        await eventually(lambda: _refuses_connections(port), timeout=5, what="the listener closed")
        await asyncio.sleep(0.3)
        writer.write(body[12:])
        await writer.drain()
        sent = time.monotonic()
        async with asyncio.timeout(SHUTDOWN_TIMEOUT + 2):
            status_line = await reader.readline()
            answer = status_line + await reader.read()
        answered_after = time.monotonic() - sent
    finally:
        writer.close()

    assert status_line.startswith(b"HTTP/1.1 200 "), answer
    assert "access_token" in json.loads(answer.partition(b"\r\n\r\n")[2])
    assert answered_after < SHUTDOWN_TIMEOUT
    assert await asyncio.to_thread(server.wait, 20) == 0
    messages = [line["msg"] for line in server.log_lines()]
    assert messages.index("shutting down") < messages.index("stopped")
