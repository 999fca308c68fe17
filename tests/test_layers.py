"""The folders are the layers, and imports run one way, down them (docs/architecture.md):
http and tasks on top, then oauth, then store, with ops beside every layer and keys below all."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A module in the first layer may not import from any of the others named with it.
FORBIDDEN = {
    "tessera.server.store": ("tessera.server.http", "tessera.server.oauth", "tessera.server.tasks"),
    "tessera.server.oauth": ("tessera.server.http", "tessera.server.tasks"),
    "tessera.server.tasks": ("tessera.server.http",),
    "tessera.server.ops": ("tessera.server.http", "tessera.server.oauth", "tessera.server.store", "tessera.server.tasks"),
    "tessera.keys": ("tessera.server",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "tessera." + ".".join(part for part in parts if part != "__init__")


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_imports_run_down_the_layers():
    offences = []
    for path in [*(ROOT / "server").rglob("*.py"), *(ROOT / "keys").rglob("*.py")]:
        module = _module_name(path)
        for layer, forbidden in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                offences += [
                    f"{module} imports {name}" for name in _imports(path)
                    if any(name == f or name.startswith(f + ".") for f in forbidden)
                ]
    assert offences == []
