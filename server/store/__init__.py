"""PostgreSQL storage, one module per domain; SQL lives beside the function that runs it."""

from tessera.server.store.clients import Client, ClientStore
from tessera.server.store.keys import PgKeyStore
from tessera.server.store.users import User, UserStore

__all__ = ["Client", "ClientStore", "PgKeyStore", "User", "UserStore"]
