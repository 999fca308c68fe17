"""PostgreSQL storage, one module per domain; SQL lives beside the function that runs it."""

from server.store.clients import Client, ClientStore
from server.store.keys import PgKeyStore
from server.store.users import User, UserStore

__all__ = ["Client", "ClientStore", "PgKeyStore", "User", "UserStore"]
