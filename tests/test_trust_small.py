"""Smaller trust guarantees (CONTRACT.md, Robustness and Command line): the development KEK is never
used quietly or on a network address by accident, timing does not tell which client ids exist,
one username is one user however its characters are encoded, and a new password has a minimum."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SECRET, basic, post_token
from tests.processes import Process, Processes, cli, free_port, wait_until_ready

MIN_PASSWORD_LENGTH = 8  # the documented minimum for a password being set
NFC = unicodedata.normalize("NFC", "jos\u00e9")
NFD = unicodedata.normalize("NFD", "jos\u00e9")
assert NFC != NFD


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its base directory is mode 0700, which the unprivileged user the
    # embedded PostgreSQL runs as (when tests run as root) cannot enter.
    parent = Path(tempfile.mkdtemp(prefix="tessera-devkek-"))
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _development_kek_warnings(server: Process) -> list[dict[str, Any]]:
    return [line for line in server.log_lines() if line.get("event") == "development_kek"]


def _serve_embedded(processes: Processes, name: str, data_dir: Path, **extra: str) -> tuple[Process, int]:
    port = free_port()
    server = processes.serve(name, {"TESSERA_DATA_DIR": str(data_dir), "TESSERA_PORT": str(port), **extra})
    return server, port


async def test_the_development_kek_is_warned_about_at_every_start(processes, data_dir):
    for start in ("first", "second"):
        server, port = _serve_embedded(processes, f"tessera-{start}", data_dir)
        await wait_until_ready(f"http://127.0.0.1:{port}/readyz", server, timeout=60)
        assert server.stop() == 0
        warnings = _development_kek_warnings(server)
        assert len(warnings) == 1 and warnings[0]["level"] == "warning", (start, warnings)
        assert "TESSERA_KEY_ENCRYPTION_KEY" in warnings[0]["msg"]


async def test_a_network_address_with_the_development_kek_is_refused_unless_the_operator_allows_it(processes, data_dir):
    refused, _ = _serve_embedded(processes, "refused", data_dir, TESSERA_HOST="0.0.0.0")
    assert refused.wait(timeout=30) == 2
    assert refused.stderr().startswith("tessera: TESSERA_HOST: ") and refused.stderr().count("\n") == 1
    assert "TESSERA_ALLOW_DEV_KEK_ON_NETWORK" in refused.stderr()
    assert not (data_dir / "pg").exists()  # refused before anything was started

    allowed, port = _serve_embedded(
        processes, "allowed", data_dir, TESSERA_HOST="0.0.0.0", TESSERA_ALLOW_DEV_KEK_ON_NETWORK="1"
    )
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", allowed, timeout=60)
    assert allowed.stop() == 0
    assert len(_development_kek_warnings(allowed)) == 1


async def test_an_unknown_client_id_takes_as_long_as_a_known_one(client, admin):
    await admin.client("svc")
    # The client is in use, so everything this instance keeps about it is warm.
    assert (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET)))[0] == 200

    async def answer_time(client_id: str) -> float:
        started = time.perf_counter()
        status, body, _ = await post_token(client, {"grant_type": "client_credentials", "client_id": client_id})
        elapsed = time.perf_counter() - started
        # A confidential client's id alone is refused exactly as an unknown id is.
        assert (status, body["error"]) == (401, "invalid_client")
        return elapsed

    for n in range(30):
        await answer_time("svc")
        await answer_time(f"warm-up-{n}")
    known: list[float] = []
    unknown: list[float] = []
    for n in range(300):
        # Each unknown id asked once, as someone enumerating ids would; in alternating order.
        pair = [("svc", known), (f"no-such-client-{n}", unknown)]
        for client_id, times in (pair if n % 2 else reversed(pair)):
            times.append(await answer_time(client_id))
    known_median, unknown_median = statistics.median(known), statistics.median(unknown)
    # Medians of one kind of request agree to a few per cent; a database round trip that one of
    # them makes and the other does not is a difference of tens of per cent.
    assert abs(unknown_median - known_median) <= 0.25 * known_median, (known_median, unknown_median)


async def test_a_username_in_nfd_is_the_same_user_as_in_nfc(env, client, admin):
    await admin.client("app", grant_types=("password",))
    created = cli(env, "users", "create", NFC, "--password-stdin", "--json", stdin="jose-password-1\n")
    assert created.returncode == 0, created.stderr
    again = cli(env, "users", "create", NFD, "--password-stdin", stdin="another-password-2\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    form = {"grant_type": "password", "username": NFD, "password": "jose-password-1"}
    status, body, _ = await post_token(client, form, headers=basic("app", SECRET))
    assert status == 200, body
    assert [user["username"] for user in json.loads(cli(env, "users", "list", "--json").stdout)] == [NFC]


def test_usernames_with_surrounding_space_or_control_characters_are_refused(env):
    for username in ("alice ", " alice", "alice\u00a0", "ali\u0085ce", "ali\u200bce", "alice\u2028bob"):
        result = cli(env, "users", "create", username, "--password-stdin", stdin="a-good-password\n")
        assert result.returncode != 0, repr(username)
        assert result.stderr.startswith("tessera: USERNAME: ") and result.stderr.count("\n") == 1, result.stderr
    assert cli(env, "users", "list", "--json").stdout.strip() == "[]"


async def test_guesses_for_one_username_in_nfc_and_nfd_are_counted_together(client, admin, settings):
    await admin.client("app", grant_types=("password",))
    await admin.user(NFC, "jose-password-1")
    for n in range(settings.login_max_failures):
        form = {"grant_type": "password", "username": NFC if n % 2 else NFD, "password": f"guess-{n}"}
        assert (await post_token(client, form, headers=basic("app", SECRET)))[0] == 400
    for username in (NFC, NFD):
        form = {"grant_type": "password", "username": username, "password": "one-more-guess"}
        assert (await post_token(client, form, headers=basic("app", SECRET)))[0] == 429


def test_a_password_shorter_than_the_minimum_is_refused_when_it_is_set(env):
    short = "x" * (MIN_PASSWORD_LENGTH - 1)
    for password in ("1", short):
        result = cli(env, "users", "create", "alice", "--password-stdin", stdin=password + "\n")
        assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
        assert f"at least {MIN_PASSWORD_LENGTH} characters" in result.stderr
    assert cli(env, "users", "create", "alice", "--password-stdin", stdin="x" * MIN_PASSWORD_LENGTH + "\n").returncode == 0
    changed = cli(env, "users", "set-password", "alice", "--password-stdin", stdin=short + "\n")
    assert changed.returncode != 0 and f"at least {MIN_PASSWORD_LENGTH} characters" in changed.stderr
