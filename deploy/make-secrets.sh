#!/bin/sh
# Makes the secrets docker-compose.yml reads, once: the key-encryption key (32 random bytes,
# base64url), a PostgreSQL password, and the database URL that carries it. Existing files are kept:
# a new key-encryption key would make the stored signing keys unreadable.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
umask 077
random() { python3 -c "import base64, secrets; print(base64.urlsafe_b64encode(secrets.token_bytes($1)).decode().rstrip('='))"; }
[ -s secrets/key_encryption_key ] || random 32 > secrets/key_encryption_key
[ -s secrets/postgres_password ] || random 24 > secrets/postgres_password
[ -s secrets/database_url ] || printf 'postgresql://tessera:%s@postgres:5432/tessera?sslmode=disable\n' \
    "$(cat secrets/postgres_password)" > secrets/database_url
# Compose mounts these files as they are, and the containers run as uid 10001, not as you: make
# them readable there. On a shared host prefer `sudo chown 10001 secrets/*` and keep mode 0600.
chmod 0644 secrets/key_encryption_key secrets/postgres_password secrets/database_url
echo "secrets in $(pwd)/secrets; keep a copy of key_encryption_key: without it the signing keys are lost"
