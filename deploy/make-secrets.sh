#!/bin/sh
# Makes the secrets docker-compose.yml reads, once: the key-encryption key (32 random bytes,
# base64url), a PostgreSQL password, the database URL that carries it, and the client secret of
# the example client in clients.toml. Existing files are kept: a new key-encryption key would make
# the stored signing keys unreadable.
#
# The folder is 0700 and each file 0400. Compose mounts the files into the containers as they are
# (a bind mount: the uid, gid and mode of a secret's long syntax are not applied to a file secret),
# so the owner on this host is the owner inside the container:
#   - run as root, the files Tessera reads (uid 10001 in the image) are chowned to 10001:10001, and
#     postgres_password stays root's: the PostgreSQL image's entrypoint reads it as root;
#   - run as another user, nobody but you can open the folder on this host, and the files are
#     made 0444 so that the containers' users can read them through the mount; to keep them 0400,
#     run this script with sudo instead.
set -eu
cd "$(dirname "$0")"
TESSERA_UID=10001
umask 077
mkdir -p secrets
chmod 0700 secrets
random() { python3 -c "import base64, secrets; print(base64.urlsafe_b64encode(secrets.token_bytes($1)).decode().rstrip('='))"; }
[ -s secrets/key_encryption_key ] || random 32 > secrets/key_encryption_key
[ -s secrets/postgres_password ] || random 24 > secrets/postgres_password
[ -s secrets/database_url ] || printf 'postgresql://tessera:%s@postgres:5432/tessera?sslmode=disable\n' \
    "$(cat secrets/postgres_password)" > secrets/database_url
[ -s secrets/orders_service_secret ] || random 32 > secrets/orders_service_secret
tessera_files="secrets/key_encryption_key secrets/database_url secrets/orders_service_secret"
if [ "$(id -u)" = 0 ]; then
    # shellcheck disable=SC2086
    chown "$TESSERA_UID:$TESSERA_UID" $tessera_files
    chown 0:0 secrets/postgres_password
    # shellcheck disable=SC2086
    chmod 0400 $tessera_files secrets/postgres_password
    echo "secrets in $(pwd)/secrets (folder 0700, files 0400; Tessera's owned by uid $TESSERA_UID)"
else
    # shellcheck disable=SC2086
    chmod 0444 $tessera_files secrets/postgres_password
    echo "secrets in $(pwd)/secrets (folder 0700, files 0444: run with sudo to make them 0400 owned by uid $TESSERA_UID)"
fi
echo "keep a copy of secrets/key_encryption_key: without it the signing keys are lost"
