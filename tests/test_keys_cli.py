"""`tessera keys rotate | revoke | rewrap | list`, run as an operator runs them."""

from __future__ import annotations

import base64
import json
import secrets

import pytest

from tessera.server.settings import SettingsError, load_settings
from tests.key_helpers import lifecycle_on
from tests.test_cli import tessera


def _one_line_refusal(result) -> str:
    assert result.returncode == 1, result
    assert result.stderr.startswith("tessera: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


async def _states(db_conn) -> dict[str, str]:
    return dict(await db_conn.fetch("SELECT kid, state FROM signing_keys"))


async def test_keys_rotate_refuses_a_next_key_not_published_long_enough_unless_forced(env, clock, db_conn):
    async with lifecycle_on(env, clock) as lifecycle:
        await lifecycle.prepare()
    before = await _states(db_conn)
    refusal = _one_line_refusal(tessera(env, "keys", "rotate"))
    assert "305 s" in refusal and "--force" in refusal  # TESSERA_JWKS_MAX_AGE 300 + reload interval 5 s
    assert await _states(db_conn) == before
    forced = tessera(env, "keys", "rotate", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    rotation = json.loads(forced.stdout)
    assert rotation["early"] is True and "warning" in forced.stderr
    states = await _states(db_conn)
    assert states[rotation["retired"]] == "retired" and states[rotation["active"]] == "active"
    assert states[rotation["next"]] == "next" and rotation["active"] == next(k for k, s in before.items() if s == "next")
    listed = {k["kid"]: k for k in json.loads(tessera(env, "keys", "list", "--json").stdout)}
    assert listed[rotation["retired"]]["expires_at"] == rotation["retired_expires_at"]
    assert listed[rotation["next"]]["may_activate_at"] > listed[rotation["next"]]["published_at"]


async def test_keys_revoke_takes_a_key_out_and_refuses_an_unknown_kid(env, clock, db_conn):
    async with lifecycle_on(env, clock) as lifecycle:
        await lifecycle.prepare()
        retired = (await lifecycle.rotate(force=True)).retired.kid
    revoked = tessera(env, "keys", "revoke", retired, "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {"kid": retired, "revoked": True, "previous_state": "retired"}
    assert (await _states(db_conn))[retired] == "revoked"
    assert "no-such-kid" in _one_line_refusal(tessera(env, "keys", "revoke", "no-such-kid"))


async def test_keys_revoke_reads_a_kid_that_begins_with_a_dash_as_the_kid(env, clock):
    # One thumbprint in 64 begins with "-"; argparse alone would take it for an option.
    async with lifecycle_on(env, clock) as lifecycle:
        await lifecycle.prepare()
    for argv in (["-no-such-kid"], ["--json", "-no-such-kid"], ["-no-such-kid", "--json"], ["--", "-no-such-kid"]):
        assert "-no-such-kid" in _one_line_refusal(tessera(env, "keys", "revoke", *argv)), argv
    assert "-h" in _one_line_refusal(tessera(env, "keys", "revoke", "-hXYZ"))  # not the help flag
    assert tessera(env, "keys", "revoke", "--help").returncode == 0
    assert tessera(env, "keys", "revoke").returncode == 2  # still: the KID is required


async def test_keys_rewrap_needs_a_different_new_kek_and_can_run_twice(env, clock):
    async with lifecycle_on(env, clock) as lifecycle:
        await lifecycle.prepare()
    assert "TESSERA_NEW_KEY_ENCRYPTION_KEY" in _one_line_refusal(tessera(env, "keys", "rewrap"))
    same = {**env, "TESSERA_NEW_KEY_ENCRYPTION_KEY": env["TESSERA_KEY_ENCRYPTION_KEY"]}
    assert "already in use" in _one_line_refusal(tessera(same, "keys", "rewrap"))
    new = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    change = {**env, "TESSERA_NEW_KEY_ENCRYPTION_KEY": new}
    first = tessera(change, "keys", "rewrap", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"keys": 2, "secrets": 0}
    assert json.loads(tessera(change, "keys", "rewrap", "--json").stdout) == {"keys": 0, "secrets": 0}
    # Afterwards the new KEK alone opens the keys; the old one alone no longer does.
    assert tessera({**env, "TESSERA_KEY_ENCRYPTION_KEY": new}, "keys", "rotate", "--force").returncode == 0
    assert "does not open" in _one_line_refusal(tessera(env, "keys", "rotate", "--force"))


@pytest.mark.parametrize(
    "name,value",
    [
        ("TESSERA_KEY_RELOAD_INTERVAL", "0"),
        ("TESSERA_KEY_RELOAD_INTERVAL", "often"),
        ("TESSERA_NEW_KEY_ENCRYPTION_KEY", "short"),
        ("TESSERA_NEW_KEY_ENCRYPTION_KEY_FILE", "/nonexistent/kek"),
    ],
)
def test_a_bad_key_setting_stops_with_one_line_naming_the_variable(name, value):
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    assert str(raised.value).startswith(name) and "\n" not in str(raised.value)


def test_the_new_kek_can_come_from_a_file(tmp_path):
    new = secrets.token_bytes(32)
    path = tmp_path / "new-kek"
    path.write_text(base64.urlsafe_b64encode(new).decode() + "\n")
    settings = load_settings({"TESSERA_NEW_KEY_ENCRYPTION_KEY_FILE": str(path)})
    assert settings.new_key_encryption_key == new and settings.key_reload_interval == 5.0
