"""One distribution, `tessera`: the base install is the offline verifier alone, under Tessera's own
name; the token server is the extra `server` (CONTRACT.md, "Layout" and "Offline verification")."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import SECRET, basic, post_token

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = {"asyncpg", "argon2-cffi", "argon2_cffi", "pgserver", "prometheus-client", "prometheus_client"}


def _python_files() -> list[Path]:
    """The project's own Python files (not what npm installs beside the node scripts)."""
    return [
        path for folder in ("server", "keys", "tests", "bench", "deploy") for path in (ROOT / folder).rglob("*.py")
        if "node_modules" not in path.parts
    ]


def test_nothing_imports_a_top_level_server_or_keys():
    """Two names for one module would be two copies of its state; only tessera.server/tessera.keys exist."""
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] in ("server", "keys")]
    assert offenders == []


def test_every_package_folder_is_installed_under_tessera():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"tessera.server": "server", "tessera.keys": "keys"}
    folders = {
        "tessera." + str(init.parent.relative_to(ROOT)).replace("/", ".")
        for folder in ("server", "keys")
        for init in (ROOT / folder).rglob("__init__.py")
    }
    # Folders of data only (the sign-in pages' templates and stylesheet) are listed too, so that
    # setuptools ships them without warning that they look like packages nobody named.
    data = {"tessera.server.http.static", "tessera.server.http.templates"}
    assert set(config["packages"]) == folders | data


def test_keys_never_imports_the_server():
    """A resource server installs tessera.keys alone: nothing in keys/ may need the server extra."""
    for path in (ROOT / "keys").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("tessera.server"), path
                assert node.module.split(".")[0] not in ("asyncpg", "argon2", "prometheus_client", "pgserver"), path


@pytest.mark.skipif(shutil.which("git") is None, reason="copies the checkout's tracked files with git")
async def test_the_base_install_verifies_tokens_without_the_server_dependencies(tmp_path, client, admin):
    """A fresh venv, `pip install <repo>` without extras: tessera.keys.Verifier verifies a token from a
    running Tessera, and nothing of the token server comes along."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "build", ".venv", "*.egg-info", ".git", ".tessera", "__pycache__", ".pytest_cache", "tests", "bench"))
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}

    async def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ, cwd=tmp_path
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        return subprocess.CompletedProcess(argv, process.returncode or 0, out.decode(), err.decode())

    made = await run(sys.executable, "-m", "venv", str(venv))
    assert made.returncode == 0, made.stderr
    installed = await run(str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source))
    if installed.returncode != 0 and "Could not find a version" in installed.stderr:
        pytest.skip("no package index reachable for a fresh venv")
    assert installed.returncode == 0, installed.stderr[-3000:]

    listed = await run(str(python), "-m", "pip", "list", "--format", "json")
    names = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "tessera" in names
    assert not names & SERVER_ONLY, names & SERVER_ONLY
    site = Path((await run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")).stdout.strip())
    assert not (site / "server").exists() and not (site / "keys").exists()
    assert (site / "tessera" / "keys" / "verifier.py").exists()

    # The console script, without the extra, says which extra to install, in one line.
    command = await run(str(venv / "bin" / "tessera"), "serve")
    assert command.returncode != 0
    assert command.stderr.count("\n") == 1 and "tessera[server]" in command.stderr

    await admin.client("svc")
    status, body, _ = await post_token(
        client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET)
    )
    assert status == 200, body
    jwks_url = str(client.make_url("/.well-known/jwks.json"))
    script = (
        "import asyncio, sys\n"
        "from tessera.keys import Verifier, InvalidToken\n"
        "async def main():\n"
        f"    async with Verifier(issuer='https://tessera.test', audience='https://orders.example', jwks_url={jwks_url!r}) as v:\n"
        "        claims = await v.verify(sys.argv[1])\n"
        "        print(claims['client_id'])\n"
        "        try:\n"
        "            await v.verify(sys.argv[1][:-4] + 'AAAA')\n"
        "        except InvalidToken as exc:\n"
        "            print(type(exc).__name__)\n"
        "    print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg', 'argon2', 'pgserver', 'prometheus_client', 'server', 'keys')))\n"
        "asyncio.run(main())\n"
    )
    verified = await run(str(python), "-c", script, body["access_token"], timeout=60)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.split("\n")[:3] == ["svc", "BadSignature", "[]"]
