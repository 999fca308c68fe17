"""PostgreSQL settings an operator needs: the URL from a file, TLS (``sslmode``), several hosts with
``target_session_attrs=read-write`` for failover. The URL goes to the driver as it is; a TCP proxy
in front of the test database shows what the driver did with it."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from tessera.server.settings import SettingsError, load_settings
from tests.faults import TcpProxy
from tests.helpers import KEK
from tests.processes import cli, free_port

SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL protocol: "may we speak TLS?"
PROTOCOL_3 = 196608


@pytest.fixture
async def proxy(clean_database: str) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(clean_database) as running:
        yield running


async def migrate_with(url: str) -> tuple[int, str]:
    result = await asyncio.to_thread(
        cli, {"TESSERA_DATABASE_URL": url, "TESSERA_KEY_ENCRYPTION_KEY": KEK}, "migrate"
    )
    return result.returncode, result.stderr


async def test_a_multi_host_url_fails_over_to_the_writable_host(proxy):
    dead = free_port()
    url = f"postgresql://postgres@127.0.0.1:{dead},127.0.0.1:{proxy.port}/{proxy.database}?target_session_attrs=read-write"
    assert await migrate_with(url) == (0, "")
    assert proxy.first_bytes  # it went on to the second host


async def test_target_session_attrs_reaches_the_driver(proxy):
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{proxy.database}?target_session_attrs=standby"
    returncode, stderr = await migrate_with(url)
    assert returncode != 0 and stderr.count("\n") == 1 and "target" in stderr.lower()


async def test_sslmode_reaches_the_driver(proxy):
    base = f"postgresql://postgres@127.0.0.1:{proxy.port}/{proxy.database}"
    returncode, stderr = await migrate_with(base + "?sslmode=require")
    # The test database speaks no TLS: with sslmode=require the start stops, in one line.
    assert returncode != 0 and stderr.count("\n") == 1 and "ssl" in stderr.lower()
    assert proxy.first_bytes == [SSL_REQUEST]
    assert await migrate_with(base + "?sslmode=disable") == (0, "")
    assert struct.unpack("!i", proxy.first_bytes[-1][4:])[0] == PROTOCOL_3  # straight to the startup message


def test_the_database_url_can_come_from_a_file(tmp_path):
    path = tmp_path / "database_url"
    path.write_text("postgresql://tessera:pw@db1:5432,db2:5432/tessera?target_session_attrs=read-write\n")
    settings = load_settings({"TESSERA_DATABASE_URL_FILE": str(path), "TESSERA_KEY_ENCRYPTION_KEY": KEK})
    assert settings.database_url == "postgresql://tessera:pw@db1:5432,db2:5432/tessera?target_session_attrs=read-write"


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"TESSERA_DATABASE_URL": "postgresql://h/x?sslmode=requir"}, "TESSERA_DATABASE_URL"),
        ({"TESSERA_DATABASE_URL": "postgresql://h/x?target_session_attrs=writable"}, "TESSERA_DATABASE_URL"),
        ({"TESSERA_DATABASE_URL": "postgresql://h/x", "TESSERA_DATABASE_URL_FILE": "/x"}, "TESSERA_DATABASE_URL"),
        ({"TESSERA_DATABASE_URL_FILE": "/nonexistent/url"}, "TESSERA_DATABASE_URL_FILE"),
        ({"TESSERA_WORKERS": "2", "TESSERA_PORT": "0"}, "TESSERA_WORKERS"),
        ({"TESSERA_SHUTDOWN_DELAY": "-1"}, "TESSERA_SHUTDOWN_DELAY"),
    ],
)
def test_a_bad_database_or_serving_setting_stops_with_one_line_naming_it(env, variable):
    with pytest.raises(SettingsError) as raised:
        load_settings({"TESSERA_KEY_ENCRYPTION_KEY": KEK, **env})
    assert str(raised.value).startswith(variable + ":") and "\n" not in str(raised.value)


def test_a_second_server_on_the_same_port_is_refused_in_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli({"TESSERA_DATA_DIR": str(tmp_path), "TESSERA_PORT": str(port), "TESSERA_WORKERS": "2"}, "serve")
    assert result.returncode == 2
    assert result.stderr.startswith("tessera: TESSERA_PORT:") and result.stderr.count("\n") == 1
