#!/bin/sh
# Restart the Tessera instances of the compose deployment one at a time, losing no request:
#
#     deploy/rolling-restart.sh [--recreate] [SERVICE...]      (default: tessera-1 tessera-2)
#
# For each instance: nginx stops sending it new requests (the file /run/tessera-drain/SERVICE in
# lb, which nginx.conf looks for at each request: no reload), the instance is restarted
# (`restart`; with --recreate, a new container from the current image and settings, as for an
# upgrade), once Docker reports it healthy and its /readyz answers 200 nginx sends to it again,
# then the next one. Without the drain, the instant an instance's listener closes can reset a
# connection nginx has just sent a request on, and nginx never retries a POST: a 502.
#
# COMPOSE is the compose command (default: docker compose -f deploy/docker-compose.yml), run from
# the repository root.
set -eu
cd "$(dirname "$0")/.."
COMPOSE=${COMPOSE:-docker compose -f deploy/docker-compose.yml}
say() { echo "== rolling-restart $(date +%T) $*"; }
recreate=0
if [ "${1:-}" = "--recreate" ]; then recreate=1; shift; fi
[ "$#" -gt 0 ] || set -- tessera-1 tessera-2

drain() { $COMPOSE exec -T lb touch "/run/tessera-drain/$1"; }
undrain() { $COMPOSE exec -T lb rm -f "/run/tessera-drain/$1"; }

ready_within() {
    waited=0
    while :; do
        container=$($COMPOSE ps -q "$1")
        if [ -n "$container" ] && [ "$(docker inspect -f '{{.State.Health.Status}}' "$container" 2>/dev/null)" = healthy ] \
            && $COMPOSE exec -T "$1" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)" \
                >/dev/null 2>&1; then
            return 0
        fi
        [ "$waited" -lt "$2" ] || return 1
        sleep 1
        waited=$((waited + 1))
    done
}

for service in "$@"; do
    started=$(date +%s)
    drain "$service"
    sleep 1  # a request nginx routed just before the file appeared reaches the instance meanwhile
    say "$service drained from nginx; restarting it"
    if [ "$recreate" = 1 ]; then
        $COMPOSE up -d --no-deps --force-recreate "$service" 2>/dev/null
    else
        $COMPOSE restart "$service" 2>/dev/null
    fi
    if ! ready_within "$service" 120; then
        undrain "$service"
        say "$service is not ready 120 s after its restart: stopped here, nginx sends to every instance again" >&2
        exit 1
    fi
    undrain "$service"
    say "$service healthy, ready and back in nginx's rotation, $(( $(date +%s) - started )) s after it was drained"
done
