#!/usr/bin/env bash
# Benchmark of the Incus backend (issues 3 and 14) against the test bed's real
# incusd, every figure next to a reference measured in the same run:
#   1. GET /api/v1/instances through lxgate (with its list cache, and a second
#      lxgate with it off) vs GET /1.0/instances straight to incusd's unix
#      socket and through a plain nginx reverse proxy of that socket (the
#      floor a gateway is held to), recursion 0 and 1; then
#      GET /api/v1/auth/me vs GET /health on lxgate. BENCH_ROUNDS alternating
#      rounds, medians reported.
#   2. event fan-out: BENCH_SUBSCRIBERS WebSocket clients on lxgate's relay vs
#      one direct /1.0/events subscriber, while instances are PATCHed on incusd
#   3. exec relay throughput: bytes through `cat` in an interactive exec,
#      lxgate's WebSocket vs Incus's own exec websocket
# The load generator is benches/incus.rs (cargo bench --bench incus).
#
# Usage: bash scripts/bench-incus.sh   (part of `make bench`)
# Knobs: BENCH_DURATION=10 (s per run), BENCH_ROUNDS=3, BENCH_CONNECTIONS=16, BENCH_INSTANCES=100,
#        BENCH_SUBSCRIBERS=1000, BENCH_EXEC_MIB=64, BENCH_SKIP_BUILD=1,
#        BENCH_OUT (default target/bench/incus.md)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export BENCH_DURATION="${BENCH_DURATION:-10}"
export BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
export BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-16}"
export BENCH_SUBSCRIBERS="${BENCH_SUBSCRIBERS:-1000}"
export BENCH_EXEC_MIB="${BENCH_EXEC_MIB:-64}"
INSTANCES="${BENCH_INSTANCES:-100}"
OUT="${BENCH_OUT:-$ROOT/target/bench/incus.md}"
BIN="$ROOT/target/release/lxgate"

log() { printf '[bench-incus] %s\n' "$*" >&2; }
die() { printf '[bench-incus] ERROR: %s\n' "$*" >&2; exit 1; }

for v in BENCH_DURATION BENCH_ROUNDS BENCH_CONNECTIONS BENCH_SUBSCRIBERS BENCH_EXEC_MIB INSTANCES; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

log "test bed (private incusd with the busybox image)"
bash scripts/testbed.sh >/dev/null
# shellcheck disable=SC1091
source target/testbed.env
export INCUS_DIR="$LXGATE_TEST_INCUS_DIR"
SOCKET="$LXGATE_TEST_INCUS_SOCKET"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release, and the load generator"
    cargo build --release --quiet
    cargo bench --bench incus --no-run --quiet 2>/dev/null
fi
[ -x "$BIN" ] || die "$BIN not found"

if ! command -v nginx >/dev/null; then
    # Debian's nginx, only as the benchmark's floor: its init script must not
    # start the default site (port 80 on every address) while it installs.
    log "apt: installing nginx-light (the reverse-proxy floor)"
    BACKPORTS_SOURCES=/dev/null
    apt_log="$(mktemp)"
    # shellcheck source=scripts/lib/apt.sh
    source scripts/lib/apt.sh
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        trap 'rm -f /usr/sbin/policy-rc.d "$apt_log"' EXIT
        printf '#!/bin/sh\n# temporary, scripts/bench-incus.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
    fi
    apt_install_retry nginx-light --no-install-recommends nginx-light
    rm -f /usr/sbin/policy-rc.d "$apt_log"
    trap - EXIT
    # Nor at boot, nor ever on port 80: the package's service and default
    # site are not wanted on a test host.
    rm -f /etc/nginx/sites-enabled/default
    systemctl disable nginx >/dev/null 2>&1 || true
    update-rc.d nginx disable >/dev/null 2>&1 || true
fi

WORK="$(mktemp -d /tmp/lxgate-bench-incus.XXXXXX)"
SERVER_PID=""
UNCACHED_PID=""
NGINX_PID=""
PREFIX="bench-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cleanup() {
    [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; }
    [ -z "$UNCACHED_PID" ] || { kill "$UNCACHED_PID" 2>/dev/null; wait "$UNCACHED_PID" 2>/dev/null || true; }
    [ -z "$NGINX_PID" ] || { kill "$NGINX_PID" 2>/dev/null; wait "$NGINX_PID" 2>/dev/null || true; }
    for n in $(incus list --format csv --columns n 2>/dev/null | grep "^$PREFIX-" || true); do
        incus delete --force "$n" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "creating $INSTANCES stopped containers and one running one ($PREFIX-*)"
for i in $(seq 1 "$INSTANCES"); do
    incus init "$LXGATE_TEST_INCUS_IMAGE_ALIAS" "$PREFIX-$i" >/dev/null 2>&1 || die "incus init $PREFIX-$i failed"
done
incus start "$PREFIX-1" 2>/dev/null   # the exec target; the others stay stopped
export BENCH_EXEC_INSTANCE="$PREFIX-1"
export BENCH_EVENT_INSTANCES="$PREFIX-2,$PREFIX-3,$PREFIX-4,$PREFIX-5"
# Anything else in the default project would make the two lists differ.
others="$(incus list --format csv --columns n | grep -vc "^$PREFIX-" || true)"
[ "$others" = 0 ] || log "note: $others other instance(s) in the default project are listed too"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
BENCH_USER=bench-admin
BENCH_PASSWORD="bench-password-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# start_lxgate NAME PORT [VAR=value...]: an lxgate of its own (database and
# DATA_DIR under $WORK/NAME) in front of the same incusd; its PID in $STARTED.
start_lxgate() {
    local name="$1" port="$2" pid
    shift 2
    mkdir -p "$WORK/$name"
    (
        cd "$WORK"
        exec env APP_HOST=127.0.0.1 APP_PORT="$port" \
            DATA_DIR="$WORK/$name" DATABASE_URL="sqlite://$WORK/$name/lxgate.db" \
            JWT_SECRET="bench-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
            SEED_ADMIN_USERNAME="$BENCH_USER" SEED_ADMIN_PASSWORD="$BENCH_PASSWORD" \
            BACKEND=incus INCUS_SOCKET_PATH="$SOCKET" \
            MAX_WEBSOCKETS_PER_USER=$((BENCH_SUBSCRIBERS + 100)) \
            LOG_FORMAT=json LOG_LEVEL=warn "$@" "$BIN" serve
    ) >"$WORK/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/health" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "lxgate ($name) exited"; }
        sleep 0.2
    done
    STARTED="$pid"
}
login() {
    curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"username\":\"$BENCH_USER\",\"password\":\"$BENCH_PASSWORD\"}" \
        "$1/api/v1/auth/login" | jq -er .access_token
}
PORT="$(free_port)"
export BENCH_LXGATE_URL="http://127.0.0.1:$PORT"
start_lxgate data "$PORT"
SERVER_PID="$STARTED"
# The same lxgate with its list cache off: the uncached path's figures.
UNCACHED_PORT="$(free_port)"
export BENCH_UNCACHED_URL="http://127.0.0.1:$UNCACHED_PORT"
start_lxgate uncached "$UNCACHED_PORT" LIST_CACHE_MIB=0
UNCACHED_PID="$STARTED"
# The floor: Debian's nginx as a plain reverse proxy of incusd's socket, with
# keepalive to it, on loopback only, in the foreground with files of its own.
# incusd's socket is root's whole API: nginx serves only requests carrying a
# key made for this run (as a bearer token, which it does not pass on).
NGINX_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
# root: incusd's socket is root's alone (nginx's workers are www-data otherwise).
user root;
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream incus { server unix:$SOCKET; keepalive 32; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            if (\$http_authorization != "Bearer $NGINX_KEY") { return 403; }
            proxy_set_header Authorization "";
            proxy_pass http://incus;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
    }
}
NGINX
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
export BENCH_NGINX_URL="http://127.0.0.1:$NGINX_PORT" BENCH_NGINX_KEY="$NGINX_KEY"
for _ in $(seq 1 50); do
    curl -fsS -o /dev/null --max-time 1 -H "Authorization: Bearer $NGINX_KEY" "$BENCH_NGINX_URL/1.0" 2>/dev/null && break
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$WORK/nginx/"*.log >&2; die "nginx exited"; }
    sleep 0.2
done
curl -fsS -o /dev/null --max-time 5 -H "Authorization: Bearer $NGINX_KEY" "$BENCH_NGINX_URL/1.0" \
    || die "nginx does not answer on $BENCH_NGINX_URL"
[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BENCH_NGINX_URL/1.0")" = 403 ] \
    || die "nginx answers without the run's key"

BENCH_TOKEN="$(login "$BENCH_LXGATE_URL")" || die "login failed"
BENCH_UNCACHED_TOKEN="$(login "$BENCH_UNCACHED_URL")" || die "login failed (uncached)"
export BENCH_UNCACHED_TOKEN
export BENCH_TOKEN BENCH_INCUS_SOCKET="$SOCKET" BENCH_LXGATE_PID="$SERVER_PID"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

cargo bench --quiet --bench incus >"$WORK/tables.md" || {
    tail -n 50 "$WORK/data.log" >&2
    cat "$WORK/tables.md" >&2
    die "the load generator failed"
}
RSS_PEAK_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")

GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- src Cargo.toml Cargo.lock benches 2>/dev/null || GIT_REV="$GIT_REV (+ uncommitted changes)"
{
    cat "$WORK/tables.md"
    echo "Peak RSS (VmHWM) of lxgate over all runs: $((RSS_PEAK_KB / 1024)) MiB."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(uname -sr); incusd, lxgate and the load generator share it (load average before: $LOAD_BEFORE)"
    echo "- incus $(incus version 2>/dev/null | awk '/^Server/ {print $3}'), unix socket; lxgate $GIT_REV release build, SQLite, LOG_LEVEL=warn"
    echo "- nginx $(nginx -v 2>&1 | sed 's|.*/||') (worker_processes auto, keepalive 32 to the socket) as the proxy floor"
    echo "- ${BENCH_DURATION}s per run, $BENCH_ROUNDS alternating rounds (medians shown), $BENCH_CONNECTIONS concurrent requests, $INSTANCES containers, $BENCH_SUBSCRIBERS event subscribers, $BENCH_EXEC_MIB MiB through cat"
} | tee "$WORK/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
log "report also written to $OUT"
