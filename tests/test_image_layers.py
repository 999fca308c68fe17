"""The built images hold none of the deployment's secrets: `docker save` each image, then walk
every layer's tar (and the image's config and history) for a file under deploy/secrets and for the
bytes of each secret there, the key-encryption key above all (as its file holds it, and decoded).

Runs when TESSERA_TEST_IMAGE names the images (deploy/ci-compose.sh sets it after building them,
with deploy/make-secrets.sh run first, so that deploy/secrets existed when the context was sent)
and Docker answers; skips otherwise. The scan itself is checked here on an image made up in a
temporary folder, with a secret planted in it, so it runs without Docker too.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ROOT / "deploy" / "secrets"
IMAGES = os.environ.get("TESSERA_TEST_IMAGE", "").replace(",", " ").split()
# A file every image carries (the verifier is in both): proof that the walk read the layers.
EXPECTED_SUFFIX = "site-packages/tessera/keys/__init__.py"


@dataclass
class Scan:
    layers: int = 0
    files: int = 0
    paths: set[str] = field(default_factory=set)
    findings: list[str] = field(default_factory=list)


def needles_from(folder: Path) -> dict[str, bytes]:
    """What to look for: each secret file's content (without its trailing newline) and, for the
    key-encryption key, its 32 bytes as well."""
    needles: dict[str, bytes] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and (content := path.read_bytes().strip()):
            needles[path.name] = content
    if kek := needles.get("key_encryption_key"):
        try:
            needles["key_encryption_key (decoded)"] = base64.urlsafe_b64decode(kek + b"=" * (-len(kek) % 4))
        except (binascii.Error, ValueError):
            pass
    return needles


def is_secret_path(name: str, secret_names: set[str]) -> bool:
    parts = PurePosixPath(name.removeprefix("./").lstrip("/")).parts
    under_deploy_secrets = any(parts[i : i + 2] == ("deploy", "secrets") for i in range(len(parts) - 1))
    return under_deploy_secrets or (bool(parts) and parts[-1].removeprefix(".wh.") in secret_names)


def scan_saved_image(saved_path: Path, needles: dict[str, bytes], secret_names: set[str]) -> Scan:
    """Every layer of a `docker save` archive (the classic layout or the OCI one: manifest.json
    names the layers either way), and every other file in it (config, history)."""
    scan = Scan()

    def look(where: str, data: bytes) -> None:
        for name, needle in needles.items():
            if needle in data:
                scan.findings.append(f"{where}: holds the bytes of {name}")

    with tarfile.open(saved_path) as saved:
        manifest = json.load(saved.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer_names = {layer for entry in manifest for layer in entry["Layers"]}
        for member in saved:
            if not member.isfile():
                continue
            stream = saved.extractfile(member)
            assert stream is not None
            if member.name not in layer_names:
                look(member.name, stream.read())
                continue
            scan.layers += 1
            with tarfile.open(fileobj=stream, mode="r|*") as layer:
                for item in layer:
                    where = f"layer {member.name}: /{item.name.removeprefix('./').lstrip('/')}"
                    if is_secret_path(item.name, secret_names):
                        scan.findings.append(f"{where}: a file of deploy/secrets")
                    if item.isfile():
                        scan.files += 1
                        scan.paths.add(item.name)
                        content = layer.extractfile(item)
                        assert content is not None
                        look(where, content.read())
        assert scan.layers == len(layer_names), "a layer named in manifest.json is missing from the archive"
    return scan


# --- the scan, on a made-up image -------------------------------------------------------------------


def add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def made_up_image(path: Path, layers: list[dict[str, bytes]]) -> Path:
    """A `docker save` archive (classic layout) with these layers."""
    names = []
    with tarfile.open(path, "w") as saved:
        for n, files in enumerate(layers):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as layer:
                for name, data in files.items():
                    add_file(layer, name, data)
            names.append(f"layer{n}/layer.tar")
            add_file(saved, names[-1], buffer.getvalue())
        add_file(saved, "config.json", json.dumps({"config": {"Env": ["PATH=/usr/bin"]}}).encode())
        add_file(saved, "manifest.json", json.dumps([{"Config": "config.json", "Layers": names}]).encode())
    return path


def test_the_scan_finds_a_secret_file_and_the_keys_bytes_in_any_layer(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    kek = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=")
    (secrets / "key_encryption_key").write_bytes(kek + b"\n")
    (secrets / "database_url").write_bytes(b"postgresql://tessera:pw-" + os.urandom(8).hex().encode() + b"@postgres/tessera\n")
    needles = needles_from(secrets)
    names = {p.name for p in secrets.iterdir()}
    raw = needles["key_encryption_key (decoded)"]
    assert len(raw) == 32

    clean = made_up_image(tmp_path / "clean.tar", [
        {"opt/tessera/lib/python3.11/site-packages/tessera/keys/__init__.py": b"x = 1\n"},
        {"src/deploy/resource_server.py": b"print('ok')\n"},
    ])
    scan = scan_saved_image(clean, needles, names)
    assert scan.layers == 2 and scan.files == 2 and not scan.findings

    leaky = made_up_image(tmp_path / "leaky.tar", [
        {"opt/app/ok.txt": b"nothing here"},
        {"src/deploy/secrets/postgres_password": b"whatever"},  # a file of deploy/secrets, by its path
        {"opt/app/blob.bin": b"\x00" * 100 + raw + b"\x00" * 100},  # the key's bytes, elsewhere
        {"etc/app.conf": b"kek = " + kek + b"\n"},  # the key as its file holds it
    ])
    findings = scan_saved_image(leaky, needles, names).findings
    assert any("/src/deploy/secrets/postgres_password: a file of deploy/secrets" in f for f in findings), findings
    assert any("/opt/app/blob.bin: holds the bytes of key_encryption_key (decoded)" in f for f in findings), findings
    assert any("/etc/app.conf: holds the bytes of key_encryption_key" in f for f in findings), findings
    assert not any("ok.txt" in f for f in findings)


# --- the built images -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker() -> str:
    path = shutil.which("docker")
    if path is None or subprocess.run([path, "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("no Docker engine answers here")
    return path


@pytest.mark.skipif(not IMAGES, reason="TESSERA_TEST_IMAGE names no image (deploy/ci-compose.sh sets it after building)")
@pytest.mark.parametrize("image", IMAGES or ["-"])
def test_no_layer_of_the_image_holds_a_secret(image, docker, tmp_path):
    assert SECRETS.is_dir(), "run deploy/make-secrets.sh before building: the test needs the secrets to look for"
    try:
        needles = needles_from(SECRETS)
    except PermissionError:
        pytest.skip("deploy/secrets is not readable by this user (its files belong to uid 10001)")
    assert "key_encryption_key" in needles and "key_encryption_key (decoded)" in needles
    inspected = subprocess.run([docker, "image", "inspect", image], capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, f"TESSERA_TEST_IMAGE names {image}, which is not built: {inspected.stderr.strip()}"

    saved = tmp_path / "image.tar"
    result = subprocess.run([docker, "save", "-o", str(saved), image], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    scan = scan_saved_image(saved, needles, {name for name in os.listdir(SECRETS)})
    assert scan.layers >= 3 and scan.files > 1000, (scan.layers, scan.files)
    assert any(path.endswith(EXPECTED_SUFFIX) for path in scan.paths), "the walk never reached the installed package"
    assert not scan.findings, "\n".join(scan.findings)
