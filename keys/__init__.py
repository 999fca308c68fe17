"""Tessera's keys: the signing-key lifecycle used by the server, and the offline verifier
that resource servers import (``from keys import Verifier, InvalidToken``).

Nothing in this package imports ``server`` or asyncpg.
"""
