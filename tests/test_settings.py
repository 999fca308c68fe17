"""Settings are read once, validated, and a bad one names its variable."""

from __future__ import annotations

import pytest

from tessera.server.settings import SettingsError, load_settings
from tests.helpers import KEK


def test_defaults_follow_the_contract(tmp_path):
    settings = load_settings({"TESSERA_DATA_DIR": str(tmp_path)})
    assert (settings.host, settings.port, settings.issuer) == ("127.0.0.1", 8080, "http://127.0.0.1:8080")
    assert settings.signing_alg == "ES256"
    assert (settings.access_token_ttl, settings.refresh_token_ttl, settings.session_ttl) == (900, 1209600, 2592000)
    assert (settings.refresh_reuse_grace, settings.key_rotation_interval, settings.jwks_max_age) == (0, 604800, 300)
    assert (settings.workers, settings.login_max_failures, settings.shutdown_timeout) == (1, 10, 10.0)
    assert settings.embedded_database and settings.key_encryption_key is None


def test_flags_override_the_environment(tmp_path):
    settings = load_settings({"TESSERA_PORT": "9000"}, port=9100, host="0.0.0.0")
    assert settings.port == 9100 and settings.issuer == "http://0.0.0.0:9100"


@pytest.mark.parametrize(
    "name,value",
    [
        ("TESSERA_PORT", "eighty"),
        ("TESSERA_PORT", "70000"),
        ("TESSERA_SIGNING_ALG", "HS256"),
        ("TESSERA_SIGNING_ALG", "none"),
        ("TESSERA_ACCESS_TOKEN_TTL", "-5"),
        ("TESSERA_ISSUER", "ftp://x"),
        ("TESSERA_ISSUER", "https://x/?q=1"),
        ("TESSERA_KEY_ENCRYPTION_KEY", "short"),
        ("TESSERA_DATABASE_URL", "mysql://x"),
        ("TESSERA_WORKERS", "0"),
        ("TESSERA_SHUTDOWN_TIMEOUT", "soon"),
    ],
)
def test_a_bad_value_stops_with_one_line_naming_the_variable(name, value):
    env = {name: value}
    if name != "TESSERA_KEY_ENCRYPTION_KEY":
        env.setdefault("TESSERA_KEY_ENCRYPTION_KEY", KEK)
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    message = str(raised.value)
    assert message.startswith(name) and "\n" not in message


def test_an_external_database_requires_a_key_encryption_key():
    with pytest.raises(SettingsError, match="^TESSERA_KEY_ENCRYPTION_KEY"):
        load_settings({"TESSERA_DATABASE_URL": "postgresql://localhost/x"})


def test_key_encryption_key_can_come_from_a_file(tmp_path):
    path = tmp_path / "kek"
    path.write_text(KEK + "\n")
    settings = load_settings({"TESSERA_DATABASE_URL": "postgresql://h/x", "TESSERA_KEY_ENCRYPTION_KEY_FILE": str(path)})
    assert settings.key_encryption_key == b"\x00" * 32
