"""Logs: one JSON object per line on stderr, one line per request with the fields an operator
searches by, and never a secret, token, password or private key, even when a caller puts one
where it does not belong."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tessera.keys import kek as kek_box
from tessera.server.ops import logs
from tessera.server.settings import decode_kek
from tests.helpers import basic
from tests.processes import cli, free_port, wait_until_ready

DB_PASSWORD = "db-pa55word-that-must-not-leak"
ALICE_PASSWORD = "alice's correct horse battery staple"
WRONG_PASSWORD = "alice's wrong horse battery staple"
WRONG_SECRET = "tsc_this-is-not-the-secret-of-svc-at-all"


def with_password(url: str, password: str) -> str:
    """The same DSN with a password (trust authentication ignores it; the logs must too)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{parts.username}:{password}@{hosts}", parts.path, parts.query, parts.fragment))


async def test_a_full_flow_leaves_no_secret_token_or_password_in_the_logs(processes, env, db_conn):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**env, "TESSERA_PORT": str(port), "TESSERA_DATABASE_URL": with_password(env["TESSERA_DATABASE_URL"], DB_PASSWORD)}
    server = processes.serve("tessera", env)
    await wait_until_ready(f"{base}/readyz", server)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/.well-known/oauth-authorization-server") as response:
            grants = (await response.json())["grant_types_supported"]
    user_grants = "password,refresh_token" if "refresh_token" in grants else "password"

    commands = [
        cli(env, "clients", "create", "svc", "--grant-types", "client_credentials", "--scopes", "read",
            "--audiences", "https://orders.example", "--json"),
        cli(env, "clients", "create", "web", "--grant-types", user_grants, "--scopes", "profile",
            "--audiences", "https://api.example", "--json"),
        cli(env, "users", "create", "alice", "--password-stdin", "--json", stdin=ALICE_PASSWORD + "\n"),
    ]
    assert [c.returncode for c in commands] == [0, 0, 0], [c.stderr for c in commands]
    svc_secret = json.loads(commands[0].stdout)["client_secret"]
    web_secret = json.loads(commands[1].stdout)["client_secret"]
    secrets = {svc_secret, web_secret, ALICE_PASSWORD, WRONG_PASSWORD, WRONG_SECRET, DB_PASSWORD}
    secrets.add(env["TESSERA_KEY_ENCRYPTION_KEY"])

    async def token(form: dict[str, str], headers: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
        async with http.post(f"{base}/token", data=form, headers=headers or {}) as response:
            body = await response.json(content_type=None)
            for name in ("access_token", "refresh_token"):
                if name in body:
                    secrets.add(body[name])
                    secrets.add(body[name].rsplit(".", 1)[-1])  # a JWS's signature alone is enough to look for
            return body

    login = {"grant_type": "password", "username": "alice", "password": ALICE_PASSWORD}
    async with aiohttp.ClientSession() as http:
        cc = await token({"grant_type": "client_credentials"}, basic("svc", svc_secret))
        await token({"grant_type": "client_credentials", "client_id": "svc", "client_secret": svc_secret})
        user = await token(login, basic("web", web_secret))
        assert "access_token" in cc and "access_token" in user
        assert (await token({**login, "password": WRONG_PASSWORD}, basic("web", web_secret)))["error"] == "invalid_grant"
        assert (await token({"grant_type": "client_credentials"}, basic("svc", WRONG_SECRET)))["error"] == "invalid_client"
        if "refresh_token" in user:  # the refresh-token feature: rotate, then replay the spent token
            rotated = await token({"grant_type": "refresh_token", "refresh_token": user["refresh_token"]}, basic("web", web_secret))
            assert "refresh_token" in rotated
            replay = await token({"grant_type": "refresh_token", "refresh_token": user["refresh_token"]}, basic("web", web_secret))
            assert replay["error"] == "invalid_grant"
        # Credentials where they do not belong: in a path, in a query string, in a header.
        async with http.get(f"{base}/introspect/{cc['access_token']}") as response:
            assert response.status in (404, 405)
        async with http.get(f"{base}/healthz?access_token={cc['access_token']}&password={ALICE_PASSWORD}") as response:
            assert response.status == 200
        async with http.get(f"{base}/.well-known/jwks.json", headers={"Authorization": f"Bearer {cc['access_token']}"}):
            pass
        async with http.get(f"{base}/healthz", headers={"X-Request-Id": "lb-0123456789abcdef"}) as response:
            assert response.headers["X-Request-Id"] == "lb-0123456789abcdef"
    assert server.stop() == 0

    for row in await db_conn.fetch("SELECT kid, private_sealed FROM signing_keys"):
        private = json.loads(kek_box.unseal(decode_kek(env["TESSERA_KEY_ENCRYPTION_KEY"], "kek"), row["private_sealed"], row["kid"].encode()))
        secrets.add(private["d"])
    secrets.add(base64.urlsafe_b64encode(decode_kek(env["TESSERA_KEY_ENCRYPTION_KEY"], "kek")).decode().rstrip("="))

    logs = server.stderr() + "".join(c.stderr for c in commands)
    assert [s for s in secrets if s in logs] == []

    lines = server.log_lines()  # each line is one JSON object
    requests = [line for line in lines if line.get("msg") == "request"]
    assert all({"request_id", "method", "path", "status", "duration_ms", "remote"} <= set(r) for r in requests)
    token_lines = [r for r in requests if r["path"] == "/token" and r["status"] == 200]
    assert token_lines and all(r.get("client_id") and r.get("grant_type") for r in token_lines)
    assert [r for r in requests if r["request_id"] == "lb-0123456789abcdef"]
    assert [r for r in requests if r["path"].startswith("/introspect/") and "[redacted]" in r["path"]]


def test_a_credential_that_reaches_a_log_line_by_accident_is_masked():
    from tessera.server.ops.logs import JsonFormatter

    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzdmMifQ.c2lnbmF0dXJl"
    message = f"boom postgresql://tessera:hunter2@db:5432/x tsr_{'a' * 43} {jwt} {jwt[:30]}"
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, None, None)
    record.path = f"/introspect/{jwt}"
    line = json.loads(JsonFormatter().format(record))
    assert "hunter2" not in line["msg"] and "tsr_aaaa" not in line["msg"] and "eyJ" not in line["msg"]
    assert line["msg"].count("[redacted]") == 4 and line["path"] == "/introspect/[redacted]"


def test_the_request_line_shortcut_writes_what_the_formatter_would():
    from tessera.server.ops.logs import JsonFormatter, JsonLineHandler

    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzdmMifQ.c2ln"
    cases = (
        ("r1", "127.0.0.1", {"client_id": "svc", "grant_type": "password"}),
        ("r1", None, {}),
        # One serializer for both: a credential in any value is masked exactly as the formatter
        # masks it.
        (jwt, "127.0.0.1", {"client_id": f"tsc_{'b' * 20}", "grant_type": "https://u:hunter2@x/", "n": 3}),
    )
    for request_id, remote, extra in cases:
        fields = {"request_id": request_id, "method": "GET", "path": f'/x/"\u00e9/{jwt}',
                  "status": 200, "duration_ms": 1.5, "remote": remote, **extra}
        stream = io.StringIO()
        JsonLineHandler(stream).write_request("tessera.http", *list(fields.values())[:6], extra)
        record = logging.LogRecord("tessera.http", logging.INFO, __file__, 1, "request", None, None)
        record.__dict__.update(fields)
        shortcut, formatted = json.loads(stream.getvalue()), json.loads(JsonFormatter().format(record))
        assert stream.getvalue().count("\n") == 1
        assert {k: v for k, v in shortcut.items() if k != "ts"} == {k: v for k, v in formatted.items() if k != "ts"}
        assert list(shortcut) == list(formatted)
        assert "[redacted]" in shortcut["path"]
        assert "eyJ" not in stream.getvalue() and "tsc_bbbb" not in stream.getvalue() and "hunter2" not in stream.getvalue()


def test_the_request_lines_timestamp_is_the_formatters_to_the_millisecond():
    import time

    from tessera.server.ops.logs import _timestamp, _Timestamps

    stamp = _Timestamps()  # one per turn of the loop, remembering the second
    for now in (1_700_000_000.0, 1_700_000_000.0004, 1_700_000_000.9996, 1_700_000_001.0, 1_700_000_059.999, 1_700_000_060.25):
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now))) + f".{int(now * 1000) % 1000:03d}Z"
        assert _timestamp(now) == expected
        assert stamp(now) == expected and stamp(now) == expected


def test_request_lines_go_through_logging_whenever_anything_else_would_see_them(caplog):
    """The shortcut is taken only when the root's JsonLineHandler alone would see the line; a test's
    capture (or an operator's handler) gets an ordinary record with the same fields."""
    logger = logging.getLogger("tessera.http")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        root.handlers[:] = [logs.JsonLineHandler(stream)]
        root.setLevel(logging.INFO)
        direct = logs.RequestLog(logger)
        direct.write("r1", "POST", "/token", 200, 0.002, "127.0.0.1", {"client_id": "svc"})
        root.handlers[0].flush()
        assert json.loads(stream.getvalue())["client_id"] == "svc"
        assert not [r for r in caplog.records if r.name == "tessera.http"]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    with caplog.at_level(logging.INFO, logger="tessera.http"):
        logs.RequestLog(logger).write("r2", "POST", "/token", 400, 0.002, None, {"error": "invalid_client"})
    (record,) = [r for r in caplog.records if r.name == "tessera.http"]
    assert record.getMessage() == "request" and record.request_id == "r2" and record.error == "invalid_client"


class _CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _line_handler() -> tuple[logs.JsonLineHandler, _CountingStream]:
    stream = _CountingStream()
    handler = logs.JsonLineHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    return handler, stream


async def test_request_lines_of_several_turns_go_in_one_write_within_the_flush_interval_in_order():
    handler, stream = _line_handler()
    for n in range(20):
        handler.write_request("tessera.http", "r", "GET", 'a "quoted" \\ path \u00e9', 200, 0.5, None, {"n": n, "x": None})
    assert stream.writes == 0  # not yet: formatted at the end of this turn of the loop
    await asyncio.sleep(0)
    handler.write_request("tessera.http", "r", "GET", "/", 200, 0.5, None, {"n": 20})
    await asyncio.sleep(0)
    assert stream.writes == 0  # two turns' lines wait in the buffer
    await asyncio.sleep(logs.LOG_FLUSH_SECONDS * 3)
    assert stream.writes == 1  # ... and go out together, with no further request to push them
    handler.write_request("tessera.http", "r", "GET", "/", 200, 0.5, None, {"n": 21})
    await asyncio.sleep(0)
    # Any other record first writes the waiting lines, so the order on stderr is the order of events.
    handler.handle(logging.LogRecord("tessera", logging.WARNING, __file__, 1, "after", None, None))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("n") for line in lines] == list(range(22)) + [None]
    assert lines[0]["path"] == 'a "quoted" \\ path \u00e9' and lines[0]["x"] is None and lines[-1]["msg"] == "after"


async def test_a_full_buffer_is_written_at_the_end_of_its_turn_and_flush_writes_the_rest(monkeypatch):
    handler, stream = _line_handler()
    monkeypatch.setattr(logs, "LOG_BUFFER_CHARS", 1000)
    for n in range(10):  # about 2,000 characters
        handler.write_request("tessera.http", "r", "GET", "/", 200, 0.5, None, {"n": n})
    await asyncio.sleep(0)
    assert stream.writes == 1 and stream.getvalue().count("\n") == 10
    handler.write_request("tessera.http", "r", "GET", "/", 200, 0.5, None, {"n": 10})
    await asyncio.sleep(0)
    assert stream.writes == 1
    handler.flush()  # what logging.shutdown does at exit: nothing is left behind
    assert stream.writes == 2 and stream.getvalue().count("\n") == 11


def test_outside_an_event_loop_request_lines_are_written_at_once():
    handler, stream = _line_handler()
    handler.write_request("tessera.http", "r", "GET", "/", 200, 0.5, None, {})
    assert stream.writes == 1 and stream.getvalue().count("\n") == 1
