"""Request limits, proven over raw sockets: slow clients are dropped in time, big bodies and
headers are refused without being read, and idle connections never delay anyone else."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import SECRET, basic, post_token

CLIENT_TIMEOUT = 1.5


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "TESSERA_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT)}


async def _connect(http: TestClient[Any, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(http.server.host, http.server.port)


async def _read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it has not by ``within``."""
    received = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            received += chunk
    return received


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_a_client_sending_its_headers_byte_by_byte_is_dropped(client):
    reader, writer = await _connect(client)
    started = time.monotonic()
    request = b"POST /token HTTP/1.1\r\nHost: tessera.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"

    async def trickle() -> None:
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        await _read_until_closed(reader, within=CLIENT_TIMEOUT + 2)
    finally:
        sender.cancel()
        writer.close()
    elapsed = time.monotonic() - started
    print(f"\nslow-loris dropped after {elapsed:.2f} s (client timeout {CLIENT_TIMEOUT} s)")
    assert elapsed < CLIENT_TIMEOUT + 1
    assert not sender.done() or sender.cancelled()  # it was still sending when it was dropped


async def test_a_connection_that_sends_nothing_is_dropped(client):
    reader, writer = await _connect(client)
    started = time.monotonic()
    try:
        assert await _read_until_closed(reader, within=CLIENT_TIMEOUT + 2) == b""
    finally:
        writer.close()
    assert time.monotonic() - started < CLIENT_TIMEOUT + 1


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(client):
    reader, writer = await _connect(client)
    started = time.monotonic()
    writer.write(
        b"POST /token HTTP/1.1\r\nHost: tessera.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 100\r\n\r\ngrant_type=client"
    )
    try:
        response = await _read_until_closed(reader, within=CLIENT_TIMEOUT + 5)
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    assert _status(response) == 408
    assert b'"error":"invalid_request"' in response
    assert elapsed < CLIENT_TIMEOUT + 3  # the timeout, then at most the short drain before closing


async def test_a_body_sent_in_pieces_within_the_timeout_is_read_whole(client, admin):
    await admin.client("svc")
    body = b"grant_type=client_credentials&scope=read"
    reader, writer = await _connect(client)
    head = (
        "POST /token HTTP/1.1\r\nHost: tessera.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Authorization: {basic('svc', SECRET)['Authorization']}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head + body[:12])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(body[12:])
    try:
        response = await _read_until_closed(reader, within=5)
    finally:
        writer.close()
    assert _status(response) == 200, response


async def test_a_100_mb_body_is_refused_without_being_read(client):
    reader, writer = await _connect(client)
    started = time.monotonic()
    writer.write(
        b"POST /token HTTP/1.1\r\nHost: tessera.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 104857600\r\n\r\n" + b"a" * 65536
    )
    try:
        status_line = await asyncio.wait_for(reader.readline(), 2)
        assert _status(status_line) == 413
        await _read_until_closed(reader, within=5)  # and the connection is closed, not drained
    finally:
        writer.close()
    assert time.monotonic() - started < 5


async def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(client, settings):
    reader, writer = await _connect(client)
    writer.write(
        b"POST /token HTTP/1.1\r\nHost: tessera.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    sent = 0

    async def keep_sending() -> None:
        nonlocal sent
        with_errors = (ConnectionError, OSError)
        try:
            while sent < 100 * 1024 * 1024:
                writer.write(chunk)
                await writer.drain()
                sent += 65536
        except with_errors:
            pass

    sender = asyncio.create_task(keep_sending())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        sender.cancel()
        writer.close()
    assert _status(status_line) == 413
    print(f"\nchunked upload refused after {sent / 1024:.0f} KiB sent (limit {settings.max_body_bytes / 1024:.0f} KiB)")
    assert sent < 100 * 1024 * 1024


@pytest.mark.parametrize(
    "what,request_head",
    [
        ("a header line over 8 KiB", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"),
        ("a request line over 8 KiB", b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("more than 64 header lines", b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n"),
        ("a malformed request line", b"NOT HTTP AT ALL\r\n\r\n"),
    ],
)
async def test_oversized_or_malformed_headers_get_a_4xx_at_once_and_no_version(client, what, request_head):
    reader, writer = await _connect(client)
    writer.write(request_head)
    try:
        response = await _read_until_closed(reader, within=3)
    finally:
        writer.close()
    assert 400 <= _status(response) < 500, what
    headers = response.split(b"\r\n\r\n", 1)[0].lower()
    assert b"aiohttp" not in headers and b"python" not in headers, headers


async def test_idle_and_slow_connections_do_not_delay_other_requests(client, admin):
    await admin.client("svc")
    idle = [await _connect(client) for _ in range(200)]
    slow = [await _connect(client) for _ in range(50)]
    for _, writer in slow:
        writer.write(b"POST /token HTTP/1.1\r\nHost: t\r\n")
    try:
        await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
        latencies = []
        for _ in range(50):
            started = time.perf_counter()
            status, _, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
            latencies.append((time.perf_counter() - started) * 1000)
            assert status == 200
        print(f"\nwith 200 idle and 50 slow connections open: token p50 {statistics.median(latencies):.1f} ms,"
              f" max {max(latencies):.1f} ms")
        assert max(latencies) < 1000
    finally:
        for _, writer in idle + slow:
            writer.close()


# --- the server's clock (tessera.server.http.limits.Deadlines), one timer for every request in flight -----------


def _bounded(handler: Any, answer_within: float) -> tuple[Any, Any, Any]:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from tessera.server.http.limits import DEADLINES, Deadlines, with_deadline

    app = web.Application()
    keeper = Deadlines(client_timeout=5.0, answer_within=answer_within)
    app[DEADLINES] = keeper
    return with_deadline(handler), lambda: make_mocked_request("POST", "/token", app=app), keeper


async def test_an_answer_not_ready_in_time_is_a_timeout_error_a_tick_after_its_deadline():
    from aiohttp import web

    from tessera.server.http.limits import DEADLINE_TICK_SECONDS

    async def stuck(request: Any) -> web.Response:
        await asyncio.sleep(60)
        return web.Response()

    async def quick(request: Any) -> web.Response:
        await asyncio.sleep(0.01)
        return web.Response(text="ok")

    bounded, request, keeper = _bounded(stuck, answer_within=0.3)
    quick_bounded = _bounded(quick, 0.3)[0]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await bounded(request())
    waited = time.monotonic() - started
    assert 0.3 <= waited <= 0.3 + DEADLINE_TICK_SECONDS + 0.2, waited
    # Requests that finish in time are untouched, and with none in flight the timer stops.
    assert all(r.text == "ok" for r in await asyncio.gather(*(quick_bounded(request()) for _ in range(20))))
    await asyncio.sleep(DEADLINE_TICK_SECONDS * 1.5)
    assert keeper._timer is None and not keeper._running


async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    from aiohttp import web

    async def stuck(request: Any) -> web.Response:
        await asyncio.sleep(60)
        return web.Response()

    bounded, request, keeper = _bounded(stuck, answer_within=30)
    task = asyncio.ensure_future(bounded(request()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not keeper._running
