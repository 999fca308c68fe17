"""Clients as code: `tessera clients apply FILE [--prune]` and TESSERA_CLIENTS_FILE (CONTRACT.md,
"Clients as code"), run as an operator runs them: the CLI and `tessera serve` as subprocesses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from joserfc.jwk import ECKey

from tessera.server.clients_file import ClientsFileError, apply_clients, load_clients_file
from tessera.server.oauth.passwords import SecretHasher
from tessera.server.settings import SettingsError, load_settings
from tests.helpers import PASSWORD, SECRET, basic, eventually, post_token
from tests.processes import Processes, cli, free_port, wait_until_ready
from tests.sessions import family_row, login, refresh

ORDERS, BILLING = "https://orders.example", "https://billing.example"
NEW_SECRET = "a-brand-new-secret-0123456789"


def secret_file(folder: Path, name: str, secret: str) -> Path:
    path = folder / name
    path.write_text(secret + "\n")  # as `echo` or a compose secret writes it
    return path


def service(client_id: str = "svc", *, secret_path: str = "svc.secret", **fields: Any) -> dict[str, Any]:
    return {
        "client_id": client_id, "grant_types": ["client_credentials"], "scopes": ["read", "write"],
        "audiences": [ORDERS, BILLING], "client_secret_file": secret_path, **fields,
    }


def app(**fields: Any) -> dict[str, Any]:
    """A first-party app with the password grant and refresh tokens (tests.sessions logs in to it)."""
    return service("app", secret_path="app.secret", **{"grant_types": ["password", "refresh_token"], **fields})


def spa() -> dict[str, Any]:
    return {
        "client_id": "spa", "public": True, "grant_types": ["authorization_code", "refresh_token"],
        "scopes": ["openid", "read"], "audiences": [ORDERS], "redirect_uris": ["https://spa.example/callback"],
        "allowed_origins": ["https://spa.example"], "refresh_token_cookie": True, "first_party": True,
    }


def keyed() -> dict[str, Any]:
    """private_key_jwt with an inline JWK Set, and token exchange."""
    return {
        "client_id": "keyed", "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "scopes": ["read"], "audiences": [BILLING], "exchange_from": [ORDERS],
        "jwks": {"keys": [{**ECKey.generate_key("P-256", private=True).as_dict(private=False), "kid": "k1"}]},
    }


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(value)


def write_clients(path: Path, *clients: dict[str, Any]) -> Path:
    path.write_text("".join(
        "[[client]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in client.items()) + "\n"
        for client in clients
    ))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    secret_file(tmp_path, "svc.secret", SECRET)
    secret_file(tmp_path, "app.secret", SECRET)
    return tmp_path


def apply(env: dict[str, str], path: Path, *flags: str) -> dict[str, Any]:
    result = cli(env, "clients", "apply", str(path), "--json", *flags)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr and NEW_SECRET not in result.stdout + result.stderr
    applied: dict[str, Any] = json.loads(result.stdout)
    return applied


async def stored(db_conn: Any) -> list[dict[str, Any]]:
    """Every client row, everything included (the secret hash, when it was set)."""
    return [dict(row) for row in await db_conn.fetch("SELECT * FROM clients ORDER BY client_id")]


# --- applying -------------------------------------------------------------------------------------


async def test_applying_the_same_file_twice_changes_nothing(env, folder, db_conn):
    path = write_clients(folder / "clients.toml", service(), app(), spa(), keyed())
    first = apply(env, path)
    assert (first["created"], first["updated"], first["unchanged"], first["deleted"]) == (4, 0, 0, 0)
    assert first["clients"] == {"app": "created", "keyed": "created", "spa": "created", "svc": "created"}
    rows = await stored(db_conn)
    second = apply(env, path)
    assert (second["created"], second["updated"], second["unchanged"], second["deleted"]) == (0, 0, 4, 0)
    assert await stored(db_conn) == rows  # the same secret hashes, the same secret_changed_at
    by_id = {row["client_id"]: row for row in rows}
    assert by_id["spa"]["token_endpoint_auth_method"] == "none" and by_id["spa"]["refresh_token_cookie"]
    assert by_id["keyed"]["token_endpoint_auth_method"] == "private_key_jwt" and by_id["keyed"]["secret_hash"] is None
    assert by_id["svc"]["secret_hash"].startswith("$argon2id$")


async def test_the_command_lines_word_lists_are_read_as_arrays(env, folder, db_conn):
    arrays = write_clients(folder / "arrays.toml", service())
    words = write_clients(folder / "words.toml", service(grant_types="client_credentials", scopes="read write",
                                                         audiences=f"{ORDERS} {BILLING}"))
    apply(env, arrays)
    assert apply(env, words)["unchanged"] == 1


async def test_a_client_created_from_the_file_gets_tokens(env, folder, client):
    apply(env, write_clients(folder / "clients.toml", service()))
    status, body, _ = await post_token(client, {"grant_type": "client_credentials", "scope": "read"},
                                       headers=basic("svc", SECRET))
    assert status == 200, body
    assert body["scope"] == "read"


async def test_a_changed_field_updates_that_client_alone(env, folder, db_conn):
    apply(env, write_clients(folder / "clients.toml", service(), spa()))
    before = {row["client_id"]: row for row in await stored(db_conn)}
    changed = apply(env, write_clients(folder / "clients.toml", service(scopes=["read", "write", "admin"]), spa()))
    assert changed["clients"] == {"svc": "updated", "spa": "unchanged"}
    after = {row["client_id"]: row for row in await stored(db_conn)}
    assert after["svc"]["scopes"] == ["read", "write", "admin"]
    # Neither the secret nor its version moved: sign-ins in flight and cached secrets stay good.
    assert after["svc"]["secret_hash"] == before["svc"]["secret_hash"]
    assert after["svc"]["secret_changed_at"] == before["svc"]["secret_changed_at"]
    assert after["spa"] == before["spa"]


async def test_a_changed_secret_replaces_the_old_one_on_every_instance_at_once(env, folder, client, db_conn):
    path = write_clients(folder / "clients.toml", service())
    apply(env, path)
    form = {"grant_type": "client_credentials"}
    assert (await post_token(client, form, headers=basic("svc", SECRET)))[0] == 200  # now cached as verified
    hash_before = await db_conn.fetchval("SELECT secret_hash FROM clients WHERE client_id = 'svc'")
    secret_file(folder, "svc.secret", NEW_SECRET)
    assert apply(env, path)["clients"] == {"svc": "updated"}
    assert await db_conn.fetchval("SELECT secret_hash FROM clients WHERE client_id = 'svc'") != hash_before

    async def old_secret_refused() -> bool:
        return (await post_token(client, form, headers=basic("svc", SECRET)))[0] == 401

    await eventually(old_secret_refused, what="the old secret refused")
    assert (await post_token(client, form, headers=basic("svc", NEW_SECRET)))[0] == 200
    assert apply(env, path)["clients"] == {"svc": "unchanged"}


async def test_a_narrowed_client_is_refused_what_it_lost_at_once(env, folder, client):
    path = write_clients(folder / "clients.toml", service())
    apply(env, path)
    form = {"grant_type": "client_credentials", "scope": "write"}
    assert (await post_token(client, form, headers=basic("svc", SECRET)))[0] == 200
    apply(env, write_clients(path, service(scopes=["read"])))

    async def write_refused() -> bool:
        status, body, _ = await post_token(client, form, headers=basic("svc", SECRET))
        return status == 400 and body["error"] == "invalid_scope"

    await eventually(write_refused, what="the scope it lost refused")


async def test_prune_deletes_the_clients_the_file_does_not_name(env, folder, admin, db_conn):
    await admin.client("by-hand")
    path = write_clients(folder / "clients.toml", service())
    assert apply(env, path)["clients"] == {"svc": "created"}  # without --prune, the others stay
    assert {row["client_id"] for row in await stored(db_conn)} == {"by-hand", "svc"}
    pruned = apply(env, path, "--prune")
    assert pruned["clients"] == {"by-hand": "deleted", "svc": "unchanged"} and pruned["deleted"] == 1
    assert [row["client_id"] for row in await stored(db_conn)] == ["svc"]


async def test_the_text_output_names_what_changed(env, folder):
    path = write_clients(folder / "clients.toml", service(), spa())
    result = cli(env, "clients", "apply", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "created spa", "created svc",
        "clients: 2 created, 0 updated, 0 unchanged, 0 deleted; 0 refresh-token families revoked",
    ]
    assert SECRET not in result.stdout + result.stderr


# --- a file with an error changes nothing -----------------------------------------------------------


BAD_FILES = {
    # name: (the second client of the file, as text or a table; what the error line says)
    "unknown key": ({**service("bad"), "client_secret": SECRET}, ["'bad'", "client_secret: unknown key"]),
    "bad redirect URI": (
        {**spa(), "client_id": "bad", "redirect_uris": ["http://spa.example/cb"]},
        ["'bad'", "redirect_uris: 'http://spa.example/cb'", "loopback"],
    ),
    "duplicate id": (service("svc"), ["'svc'", "client_id: named twice"]),
    "missing secret file": (service("bad", secret_path="nowhere.secret"), ["'bad'", "client_secret_file: cannot read"]),
    "short secret": (service("bad", secret_path="short.secret"), ["'bad'", "client_secret_file", "at least 16"]),
    "no secret file": ({k: v for k, v in service("bad").items() if k != "client_secret_file"},
                       ["'bad'", "client_secret_file", "client_secret_basic"]),
    "wrong type": ({**service("bad"), "first_party": "yes"}, ["'bad'", "first_party: expected true or false"]),
    "scope with a space": ({**service("bad"), "scopes": ["read write"]}, ["'bad'", "scopes: 'read write'"]),
    "secret for a public client": ({**spa(), "client_id": "bad", "client_secret_file": "svc.secret"},
                                   ["'bad'", "client_secret_file"]),
    "cookie without origins": ({**spa(), "client_id": "bad", "allowed_origins": []},
                               ["'bad'", "refresh_token_cookie needs allowed_origins"]),
    "bad key set": ({**keyed(), "client_id": "bad", "jwks": {"keys": []}}, ["'bad'", "jwks: the JWK Set has no keys"]),
    "keys and a secret": ({**keyed(), "client_id": "bad", "client_secret_file": "svc.secret"},
                          ["'bad'", "private_key_jwt", "client_secret_file"]),
    "no client_id": ({k: v for k, v in service().items() if k != "client_id"}, ["[[client]] number 2", "client_id: required"]),
    "bad TOML": ("[[client]]\nclient_id = \n", ["not valid TOML", "line 2"]),
    "top-level key": ("prune = true\n", ["unknown key 'prune'"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_a_file_with_an_error_changes_nothing_and_says_where_in_one_line(env, folder, db_conn, case):
    secret_file(folder, "short.secret", "too-short")
    path = write_clients(folder / "clients.toml", service(), spa())
    apply(env, path)
    rows = await stored(db_conn)
    second, says = BAD_FILES[case]
    # The first client changes too: an apply that went part of the way would show on it.
    write_clients(path, service(scopes=["read"], first_party=True))
    if isinstance(second, str):
        path.write_text(second + path.read_text())  # before the tables, or TOML would put a key in the last one
    else:
        path.write_text(path.read_text() + write_clients(folder / "second.toml", second).read_text())
    for flags in ((), ("--prune",)):
        result = cli(env, "clients", "apply", str(path), *flags)
        assert result.returncode != 0
        assert result.stderr.startswith("tessera: ") and result.stderr.count("\n") == 1, result.stderr
        assert all(part in result.stderr for part in says), result.stderr
        assert "Traceback" not in result.stderr and SECRET not in result.stderr and "too-short" not in result.stderr
        assert result.stdout == ""
    assert await stored(db_conn) == rows


def test_a_file_that_does_not_exist_is_one_line(env, folder):
    result = cli(env, "clients", "apply", str(folder / "missing.toml"))
    assert result.returncode != 0 and result.stderr.count("\n") == 1 and "cannot read" in result.stderr


def test_the_example_file_is_a_valid_clients_file(tmp_path):
    example = Path(__file__).parent.parent / "docs" / "clients.example.toml"
    with pytest.raises(ClientsFileError, match="client 'orders': client_secret_file: cannot read"):
        load_clients_file(example)  # its secret lives where compose puts it, not here
    secret_file(tmp_path, "orders.secret", SECRET)
    local = tmp_path / "clients.toml"
    local.write_text(example.read_text().replace("/run/secrets/orders-client-secret", "orders.secret"))
    loaded = load_clients_file(local)
    assert [c.registration.client_id for c in loaded.clients] == ["orders", "checkout", "shop-web"]
    assert SECRET not in repr(loaded)


# --- refresh-token families of a changed client -----------------------------------------------------


async def test_families_stay_through_a_compatible_change_and_go_when_it_no_longer_allows_them(
    env, folder, client, admin, db_conn
):
    path = write_clients(folder / "clients.toml", app())
    apply(env, path)
    await admin.user("alice", PASSWORD)
    wide = (await login(client, "alice"))["refresh_token"]  # scope read write
    narrow = (await login(client, "alice", scope="read"))["refresh_token"]

    widened = apply(env, write_clients(path, app(scopes=["read", "write", "admin"], audiences=[ORDERS, BILLING,
                                                                                             "https://c.example"])))
    assert widened["clients"] == {"app": "updated"} and widened["families_revoked"] == 0
    status, body = await refresh(client, wide)
    assert status == 200, body
    wide = body["refresh_token"]

    narrowed = apply(env, write_clients(path, app(scopes=["read"])))  # write, and the audience c, are gone
    assert narrowed["families_revoked"] == 1
    assert (await family_row(db_conn, wide))["revoked_reason"] == "client_changed"
    assert (await refresh(client, wide))[1]["error"] == "invalid_grant"
    status, body = await refresh(client, narrow)
    assert status == 200, body
    narrow = body["refresh_token"]

    no_refresh = apply(env, write_clients(path, app(grant_types=["password"], scopes=["read"])))
    assert no_refresh["families_revoked"] == 1
    assert (await family_row(db_conn, narrow))["revoked_reason"] == "client_changed"


async def test_a_family_of_an_audience_the_client_lost_is_revoked(env, folder, client, admin, db_conn):
    path = write_clients(folder / "clients.toml", app())
    apply(env, path)
    await admin.user("alice", PASSWORD)
    to_billing = (await login(client, "alice", audience=BILLING))["refresh_token"]
    to_orders = (await login(client, "alice"))["refresh_token"]
    assert apply(env, write_clients(path, app(audiences=[ORDERS])))["families_revoked"] == 1
    assert (await family_row(db_conn, to_billing))["revoked_reason"] == "client_changed"
    assert (await family_row(db_conn, to_orders))["revoked_at"] is None


# --- TESSERA_CLIENTS_FILE ---------------------------------------------------------------------------


async def test_two_applies_at_once_create_each_client_once(settings, folder, db_conn):
    desired = load_clients_file(write_clients(folder / "clients.toml", service(), app(), spa(), keyed()))
    pools = [await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2) for _ in range(2)]
    hashers = [SecretHasher(settings.argon2) for _ in range(2)]
    try:
        results = await asyncio.gather(*(apply_clients(pool, desired, hasher) for pool, hasher in zip(pools, hashers)))
    finally:
        for pool, hasher in zip(pools, hashers):
            hasher.close()
            await pool.close()
    assert sorted((r.count("created"), r.count("unchanged")) for r in results) == [(0, 4), (4, 0)]
    assert len(await stored(db_conn)) == 4


def test_the_setting_names_a_file_that_exists(env, folder):
    with pytest.raises(SettingsError, match="TESSERA_CLIENTS_FILE: .* is not a file"):
        load_settings({**env, "TESSERA_CLIENTS_FILE": str(folder / "missing.toml")})
    path = write_clients(folder / "clients.toml", service())
    assert load_settings({**env, "TESSERA_CLIENTS_FILE": str(path)}).clients_file == path
    assert load_settings(env).clients_file is None


async def test_instances_starting_together_apply_the_file_once(env, folder, processes: Processes, db_conn):
    path = write_clients(folder / "clients.toml", service(), app(), spa(), keyed())
    ports = [free_port(), free_port()]
    started = [
        processes.serve(f"tessera-{n}", {**env, "TESSERA_CLIENTS_FILE": str(path), "TESSERA_PORT": str(port)})
        for n, port in enumerate(ports)
    ]
    await asyncio.gather(*(wait_until_ready(f"http://127.0.0.1:{port}/readyz", process)
                           for port, process in zip(ports, started)))
    applied = [[line for line in p.log_lines() if line.get("event") == "clients_applied"] for p in started]
    assert [len(lines) for lines in applied] == [1, 1]
    counts = sorted((lines[0]["clients_created"], lines[0]["clients_unchanged"]) for lines in applied)
    assert counts == [(0, 4), (4, 0)]  # one applied it, the other found it applied
    assert {row["client_id"] for row in await stored(db_conn)} == {"svc", "app", "spa", "keyed"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{ports[1]}/token", data={"grant_type": "client_credentials"},
                             headers=basic("svc", SECRET)) as response:
            assert response.status == 200, await response.text()
    for process in started:
        assert process.stop() == 0
        assert SECRET not in process.stderr() + process.stdout()


async def test_with_workers_the_supervisor_applies_the_file_once(env, folder, processes: Processes, db_conn):
    path = write_clients(folder / "clients.toml", service())
    port = free_port()
    server = processes.serve("tessera", {**env, "TESSERA_CLIENTS_FILE": str(path), "TESSERA_PORT": str(port),
                                         "TESSERA_WORKERS": "2"})
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", server)
    await eventually(lambda: sum(line["msg"] == "listening" for line in server.log_lines()) == 2, timeout=30,
                     what="both workers listening")
    applied = [line for line in server.log_lines() if line.get("event") == "clients_applied"]
    assert [line["clients"] for line in applied] == [{"svc": "created"}]
    assert server.stop() == 0


async def test_a_restart_with_a_changed_file_applies_the_change(env, folder, processes: Processes, db_conn):
    path = write_clients(folder / "clients.toml", service())
    port = free_port()
    server_env = {**env, "TESSERA_CLIENTS_FILE": str(path), "TESSERA_PORT": str(port)}
    first = processes.serve("first", server_env)
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", first)
    assert first.stop() == 0
    write_clients(path, service(scopes=["read"]))
    second = processes.serve("second", server_env)
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", second)
    line = next(line for line in second.log_lines() if line.get("event") == "clients_applied")
    assert line["clients"] == {"svc": "updated"}
    assert await db_conn.fetchval("SELECT scopes FROM clients WHERE client_id = 'svc'") == ["read"]


async def test_a_bad_clients_file_stops_the_start_with_one_line(env, folder, processes: Processes, db_conn):
    path = write_clients(folder / "clients.toml", service(), {**spa(), "redirect_uris": ["https://spa.example/#x"]})
    server = processes.serve("tessera", {**env, "TESSERA_CLIENTS_FILE": str(path), "TESSERA_PORT": str(free_port())})
    assert server.wait(timeout=60) == 2
    lines = [line for line in server.stderr().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tessera: TESSERA_CLIENTS_FILE: "), lines
    assert "client 'spa': redirect_uris:" in lines[0]
    assert await stored(db_conn) == []
