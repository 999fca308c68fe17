"""Requests aiohttp's HTTP parser refuses, and requests no route can match, answered by a real
`tessera serve` over raw sockets: the same RFC 6749 JSON body and headers as every other error,
one log line without any of the request's content, and a count in the metrics."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.helpers import SECRET
from tests.processes import Process, Processes, free_port, parse_metrics, sample, wait_until_ready

CREDENTIALS = base64.b64encode(f"svc:{SECRET}".encode()).decode()
PASSWORD = "hunter2-Pa55word-in-a-request-line"
REFUSED = "request refused by the parser"


@dataclass
class Tessera:
    port: int
    process: Process

    async def exchange(self, raw: bytes, within: float = 5.0) -> Answer:
        """``raw`` sent on a new connection; the answer is what arrives until the server closes it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        received = b""
        try:
            writer.write(raw)
            await writer.drain()
            async with asyncio.timeout(within):
                while chunk := await reader.read(65536):
                    received += chunk
        except ConnectionResetError:
            pass  # the server closed with unread bytes of ours; what it answered first still counts
        finally:
            writer.close()
        return Answer.parse(received)

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.port}/metrics") as response:
                return parse_metrics(await response.text())

    def stopped_log(self) -> tuple[str, list[dict[str, Any]]]:
        """The whole log, once the server has stopped (so every buffered line is written)."""
        assert self.process.stop() == 0
        return self.process.stderr(), self.process.log_lines()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Answer:
        assert raw, "the connection closed without an answer"
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(int(status_line.split(" ", 2)[1]), headers, body[: int(headers.get("content-length", len(body)))])

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@pytest.fixture
async def tessera(processes: Processes, env: dict[str, str]) -> Tessera:
    port = free_port()
    server = processes.serve("tessera", {**env, "TESSERA_PORT": str(port)})
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", server)
    return Tessera(port, server)


def assert_answered_like_every_other_error(answer: Answer, status: int, error: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    assert answer.json()["error"] == error
    assert set(answer.json()) == {"error", "error_description"}
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-request-id"]
    assert answer.headers["server"] == "tessera"  # no aiohttp or Python version


def refusal_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("msg") == REFUSED]


def quiet(line: dict[str, Any]) -> bool:
    """Not a line a refused request could have caused before: no traceback, no error, nothing of aiohttp's."""
    return "exception" not in line and line["level"] != "error" and not line["logger"].startswith("aiohttp")


async def test_a_header_the_parser_refuses_is_answered_json_and_never_logged(tessera):
    raw = (
        f"POST /token HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {CREDENTIALS}\x01x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n"
        "grant_type=client_credentials"
    ).encode()
    answer = await tessera.exchange(raw)

    assert_answered_like_every_other_error(answer, 400, "invalid_request")
    assert CREDENTIALS.encode() not in answer.body and b"Authorization" not in answer.body
    log, lines = tessera.stopped_log()
    assert CREDENTIALS not in log and SECRET not in log and "Authorization" not in log
    [refused] = refusal_lines(lines)
    assert refused["error_class"] == "BadHttpMessage"
    assert refused["request_id"] == answer.headers["x-request-id"]
    assert refused["status"] == 400
    assert not [line for line in lines if not quiet(line)]


async def test_a_request_line_with_a_password_is_logged_without_it(tessera):
    answers = [
        await tessera.exchange(f"GET /token?password={PASSWORD} HTTP/1.1 extra\r\nHost: t\r\n\r\n".encode()),
        await tessera.exchange(f"GET /token?password={PASSWORD}\x01 HTTP/1.1\r\nHost: t\r\n\r\n".encode()),
    ]

    for answer in answers:
        assert_answered_like_every_other_error(answer, 400, "invalid_request")
        assert PASSWORD.encode() not in answer.body
    log, lines = tessera.stopped_log()
    assert PASSWORD not in log and "/token" not in log
    assert [line["error_class"] for line in refusal_lines(lines)] == ["BadStatusLine", "InvalidURLError"]


async def test_an_oversized_basic_client_id_is_answered_json_with_security_headers(tessera):
    oversized = base64.b64encode(("c" * 10_000 + f":{SECRET}").encode()).decode()
    raw = (
        f"POST /token HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {oversized}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n"
        "grant_type=client_credentials"
    ).encode()
    answer = await tessera.exchange(raw)

    assert_answered_like_every_other_error(answer, 400, "invalid_request")
    assert b"ccc" not in answer.body and oversized[:40].encode() not in answer.body
    log, lines = tessera.stopped_log()
    assert oversized[:40] not in log
    assert [line["error_class"] for line in refusal_lines(lines)] == ["LineTooLong"]


@pytest.mark.parametrize("path", ["/x%0aY", "/x%0d%0aY", "/x%00Y", "/%0a", "/token%0a"])
async def test_an_encoded_newline_in_the_path_reaches_the_json_404(tessera, path):
    answer = await tessera.exchange(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())

    assert_answered_like_every_other_error(answer, 404, "not_found")
    m = await tessera.metrics()
    assert sample(m, "tessera_http_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert sample(m, "tessera_oauth_errors_total", endpoint="unmatched", error="not_found") == 1
    _, lines = tessera.stopped_log()
    [request] = [line for line in lines if line.get("msg") == "request" and line["status"] == 404]
    assert request["request_id"] == answer.headers["x-request-id"] and request["error"] == "not_found"


async def test_requests_no_route_can_take_are_answered_json_too(tessera):
    """What aiohttp answers before any route runs: the asterisk form and an unknown expectation."""
    star = await tessera.exchange(b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    expect = await tessera.exchange(
        b"POST /token HTTP/1.1\r\nHost: t\r\nExpect: banana\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )

    assert_answered_like_every_other_error(star, 404, "not_found")
    assert_answered_like_every_other_error(expect, 417, "invalid_request")
    m = await tessera.metrics()
    assert sample(m, "tessera_http_requests_total", endpoint="unmatched", method="OPTIONS", status="404") == 1
    assert sample(m, "tessera_http_requests_total", endpoint="unmatched", method="POST", status="417") == 1
    _, lines = tessera.stopped_log()
    answered = {line["request_id"] for line in lines if line.get("msg") == "request"}
    assert {star.headers["x-request-id"], expect.headers["x-request-id"]} <= answered


async def test_parser_refusals_cost_one_log_line_each_without_a_traceback(tessera):
    refused = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz HTTP/9.x\r\nHost: t\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,  # TLS on the HTTP port
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Name: 1\r\n\r\n",
    ] * 5
    answers = [await tessera.exchange(raw) for raw in refused]

    for answer in answers:
        assert_answered_like_every_other_error(answer, 400, "invalid_request")
    m = await tessera.metrics()
    assert sample(m, "tessera_http_requests_total", endpoint="unparsed", method="other", status="400") == len(refused)
    assert sample(m, "tessera_oauth_errors_total", endpoint="unparsed", error="invalid_request") == len(refused)
    log, lines = tessera.stopped_log()
    assert len(refusal_lines(lines)) == len(refused)
    assert [line["request_id"] for line in refusal_lines(lines)] == [a.headers["x-request-id"] for a in answers]
    # One line each, nothing else about them: no traceback, no error, none of what was sent.
    assert "Traceback" not in log and "aaaaaaaa" not in log and "NOT HTTP" not in log and "X-Big" not in log
    assert not [line for line in lines if not quiet(line)]
    assert {line["error_class"] for line in refusal_lines(lines)} == {"BadStatusLine", "BadHttpMethod", "LineTooLong", "BadHttpMessage"}
