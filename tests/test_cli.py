"""The ``tessera`` command line, run as a user runs it: a subprocess with settings in its environment."""

from __future__ import annotations

import json
import shutil
import tempfile
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.helpers import SECRET, basic, post_token


def tessera(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "tessera.server.cli", *args],
        input=stdin,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_clients_create_prints_a_256_bit_secret_once_that_works(env, client):
    result = tessera(env, "clients", "create", "svc", "--grant-types", "client_credentials",
                     "--scopes", "read write", "--audiences", "https://orders.example https://billing.example", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    secret = created["client_secret"]
    assert created["client_id"] == "svc"
    assert len(secret) >= 43 + 4  # 32 random bytes in base64url, plus the tsc_ prefix
    status, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", secret))
    assert status == 200, body
    shown = tessera(env, "clients", "show", "svc", "--json")
    assert secret not in shown.stdout and "argon2" not in shown.stdout
    assert json.loads(shown.stdout)["audiences"] == ["https://orders.example", "https://billing.example"]


async def test_clients_create_with_secret_stdin_and_rotate_secret(env, client):
    created = tessera(env, "clients", "create", "svc", "--grant-types", "client_credentials", "--audiences", "https://a.example",
                      "--secret-stdin", "--json", stdin="my-chosen-secret-value\n")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["client_secret"] == "my-chosen-secret-value"
    assert (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", "my-chosen-secret-value")))[0] == 200
    rotated = tessera(env, "clients", "rotate-secret", "svc", "--json")
    new_secret = json.loads(rotated.stdout)["client_secret"]
    assert (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", "my-chosen-secret-value")))[0] == 401
    assert (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", new_secret)))[0] == 200


async def test_public_client_has_no_secret(env):
    result = tessera(env, "clients", "create", "spa", "--grant-types", "password,refresh_token", "--audiences", "https://a.example",
                     "--public", "--json")
    assert result.returncode == 0, result.stderr
    assert "client_secret" not in json.loads(result.stdout)


def test_clients_list_and_delete(env):
    tessera(env, "clients", "create", "a1", "--grant-types", "client_credentials", "--audiences", "https://a.example")
    listed = json.loads(tessera(env, "clients", "list", "--json").stdout)
    assert [c["client_id"] for c in listed] == ["a1"]
    assert tessera(env, "clients", "delete", "a1").returncode == 0
    missing = tessera(env, "clients", "delete", "a1")
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "a1" in missing.stderr


def test_refusals_are_one_line_on_stderr_with_a_nonzero_status(env):
    cases = [
        ("clients", "create", "bad id!", "--grant-types", "client_credentials", "--audiences", "x"),
        ("clients", "create", "c", "--grant-types", "implicit", "--audiences", "x"),
        ("clients", "create", "c", "--grant-types", "client_credentials", "--audiences", "x", "--public"),
        ("clients", "create", "c", "--grant-types", "client_credentials", "--audiences", ""),
        ("users", "create", "bob"),  # no --password-stdin
    ]
    for args in cases:
        result = tessera(env, *args)
        assert result.returncode != 0, args
        assert result.stderr.startswith("tessera: ") and result.stderr.count("\n") == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_duplicate_client_is_refused(env):
    args = ("clients", "create", "dup", "--grant-types", "client_credentials", "--audiences", "https://a.example")
    assert tessera(env, *args).returncode == 0
    second = tessera(env, *args)
    assert second.returncode == 1 and "already exists" in second.stderr


async def test_users_create_and_login(env, client, admin):
    await admin.client("app", grant_types=("password",))
    created = tessera(env, "users", "create", "alice", "--password-stdin", "--json", stdin="pw-alice-pw-alice\n")
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    assert set(user) == {"user_id", "username"} and user["username"] == "alice"
    form = {"grant_type": "password", "username": "alice", "password": "pw-alice-pw-alice"}
    status, body, _ = await post_token(client, form, headers=basic("app", SECRET))
    assert status == 200, body
    changed = tessera(env, "users", "set-password", "alice", "--password-stdin", stdin="a-new-password-123")
    assert changed.returncode == 0, changed.stderr
    assert (await post_token(client, form, headers=basic("app", SECRET)))[0] == 400
    assert tessera(env, "users", "disable", "alice").returncode == 0
    form["password"] = "a-new-password-123"
    assert (await post_token(client, form, headers=basic("app", SECRET)))[0] == 400
    assert tessera(env, "users", "delete", "alice").returncode == 0
    assert tessera(env, "users", "delete", "alice").returncode == 1


async def test_keys_list_json(env, client):
    result = tessera(env, "keys", "list", "--json")
    assert result.returncode == 0, result.stderr
    keys = json.loads(result.stdout)
    assert sorted(k["state"] for k in keys) == ["active", "next"]
    assert all({"kid", "alg", "state"} <= set(k) for k in keys)


def test_a_bad_setting_stops_the_command_with_one_line(env):
    result = tessera({**env, "TESSERA_ACCESS_TOKEN_TTL": "soon"}, "migrate")
    assert result.returncode == 2
    assert result.stderr == "tessera: TESSERA_ACCESS_TOKEN_TTL: expected a whole number, got 'soon'\n"


def test_embedded_database_and_dev_kek_work_without_any_server():
    # Not under pytest's tmp_path: pytest keeps its base directory at mode 0700, which the
    # unprivileged user that the embedded PostgreSQL runs as (when tests run as root) cannot enter.
    data_dir = Path(tempfile.mkdtemp(prefix="tessera-cli-")) / "data"
    env = {"TESSERA_DATA_DIR": str(data_dir)}
    created = tessera(env, "clients", "create", "svc", "--grant-types", "client_credentials",
                      "--audiences", "https://a.example", "--json")
    assert created.returncode == 0, created.stderr
    # A command run where no database is (another directory than the server's) says so.
    assert f"tessera: no database in {data_dir}: making a new, empty one there" in created.stderr
    listed = tessera(env, "clients", "list", "--json")
    assert [c["client_id"] for c in json.loads(listed.stdout)] == ["svc"]
    assert "no database" not in listed.stderr
    assert (data_dir / "pg" / "PG_VERSION").exists()
    kek = data_dir / "key-encryption-key"
    assert kek.exists() and stat.S_IMODE(kek.stat().st_mode) == 0o600
    shutil.rmtree(data_dir.parent, ignore_errors=True)
