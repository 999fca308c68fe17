"""Background work of a server process: key rotation and reload, change notifications, garbage collection."""
