"""The ``tessera`` console script: the CLI when the token server is installed, and otherwise one
line that says how to install it (the base install is the offline verifier alone)."""

from __future__ import annotations

import sys

# What ``pip install 'tessera[server]'`` adds; the first one missing is named in the message.
SERVER_DEPENDENCIES = ("asyncpg", "argon2", "prometheus_client", "orjson")


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    missing = [name for name in SERVER_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"tessera: the token server is not installed ({missing[0]} is missing);"
            " install it with: pip install 'tessera[server]'",
            file=sys.stderr,
        )
        return 2
    from tessera.server.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
