#!/usr/bin/env bash
# Load benchmark of the gateway itself (no backend involved), with wrk.
#
# Builds the release binary, starts it on 127.0.0.1 with a throwaway SQLite
# database, and measures in one run:
#   1. GET /health                  no auth, no DB: the baseline
#   2. GET /api/v1/auth/me          JWT check + user/grants lookup, no backend
#   3. POST /api/v1/auth/login      argon2id verify + token issue (throughput)
#   4. GET /api/v1/auth/me while another client hammers /auth/login at full
#      speed (argon2 must not starve the async executor)
# then the server's peak RSS (VmHWM). Prints a Markdown table for BENCHMARKS.md.
#
# Usage: make bench   (or: bash scripts/bench.sh)
# Knobs (environment):
#   BENCH_DURATION=10          seconds per measured run
#   BENCH_CONNECTIONS=64       connections for the GET runs
#   BENCH_THREADS=2            wrk threads for the GET runs
#   BENCH_LOGIN_CONNECTIONS=16 connections for the login runs (1 wrk thread)
#   BENCH_SKIP_BUILD=1         use the existing target/release/lxgate
#   BENCH_OUT=path             also write the Markdown report there
#                              (default target/bench/latest.md)
# All traffic stays on 127.0.0.1. Every run is bounded in time; the server and
# any wrk still running are killed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" # the Lua scripts load scripts/bench/report.lua relative to here

DURATION="${BENCH_DURATION:-10}"
CONNS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
LOGIN_CONNS="${BENCH_LOGIN_CONNECTIONS:-16}"
OUT="${BENCH_OUT:-$ROOT/target/bench/latest.md}"
BIN="$ROOT/target/release/lxgate"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

for v in DURATION CONNS THREADS LOGIN_CONNS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

# ------------------------------------------------------------------ tools ---
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || log "warning: apt-get update reported errors (continuing)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release (a few minutes from a cold cache)"
    cargo build --release --quiet
fi
[ -x "$BIN" ] || die "$BIN not found (build it with cargo build --release)"

# ----------------------------------------------------------------- server ---
WORK="$(mktemp -d /tmp/lxgate-bench.XXXXXX)"
SERVER_PID=""
HAMMER_PID=""
cleanup() {
    for pid in $HAMMER_PID $SERVER_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $HAMMER_PID $SERVER_PID; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18080)"
BASE="http://127.0.0.1:$PORT"
BENCH_USER=bench-admin
BENCH_PASSWORD="bench-password-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export BENCH_USER BENCH_PASSWORD

mkdir -p "$WORK/data"
log "starting $BIN on $BASE (data in $WORK)"
# cwd is the temp dir so that a developer's .env cannot change the setup.
(
    cd "$WORK"
    exec env \
        APP_HOST=127.0.0.1 APP_PORT="$PORT" \
        DATA_DIR="$WORK/data" DATABASE_URL="sqlite://$WORK/data/lxgate.db" \
        JWT_SECRET="bench-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
        SEED_ADMIN_USERNAME="$BENCH_USER" SEED_ADMIN_PASSWORD="$BENCH_PASSWORD" \
        AUTH_RATE_LIMIT_PER_MINUTE=1000000000 AUTH_RATE_LIMIT_BURST=1000000000 \
        LOGIN_MAX_FAILURES=1000000000 \
        LOG_FORMAT=json LOG_LEVEL=warn \
        "$BIN" serve
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 100); do
    curl -fsS -o /dev/null --max-time 1 "$BASE/health" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server exited"; }
    sleep 0.2
done
curl -fsS -o /dev/null --max-time 2 "$BASE/health" || { cat "$WORK/server.log" >&2; die "the server did not come up"; }
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
RSS_IDLE_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")

login() {
    curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"username\":\"$BENCH_USER\",\"password\":\"$BENCH_PASSWORD\"}" \
        "$BASE/api/v1/auth/login" | jq -er .access_token
}
BENCH_TOKEN="$(login)" || die "login failed"
export BENCH_TOKEN
[ "$(curl -fsS --max-time 5 -H "Authorization: Bearer $BENCH_TOKEN" "$BASE/api/v1/auth/me" | jq -r .username)" = "$BENCH_USER" ] \
    || die "GET /api/v1/auth/me with the token did not answer the bench user"

# ------------------------------------------------------------------- runs ---
# run NAME THREADS CONNS SCRIPT PATH: wrk, bounded; raw output kept in $WORK/NAME.txt
run() {
    local name=$1 threads=$2 conns=$3 script=$4 path=$5
    timeout $((DURATION + 30)) wrk --latency -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 10s \
        -s "scripts/bench/$script" "$BASE$path" >"$WORK/$name.txt" 2>&1 \
        || { cat "$WORK/$name.txt" >&2; die "wrk run '$name' failed"; }
}

log "warm-up (2 s)"
timeout 30 wrk -t"$THREADS" -c"$CONNS" -d2s -s scripts/bench/auth_get.lua "$BASE/api/v1/auth/me" >/dev/null

log "1/4 GET /health: ${DURATION}s, $CONNS connections"
run health "$THREADS" "$CONNS" plain_get.lua /health
log "2/4 GET /api/v1/auth/me: ${DURATION}s, $CONNS connections"
run me "$THREADS" "$CONNS" auth_get.lua /api/v1/auth/me
log "3/4 POST /api/v1/auth/login: ${DURATION}s, $LOGIN_CONNS connections"
run login 1 "$LOGIN_CONNS" login.lua /api/v1/auth/login

log "4/4 GET /api/v1/auth/me while POST /api/v1/auth/login is hammered"
# The hammer starts first and ends after the measured run. (`timeout` passes
# the TERM of the cleanup on to wrk.)
timeout $((DURATION + 30)) wrk --latency -t1 -c"$LOGIN_CONNS" -d"$((DURATION + 3))s" --timeout 10s \
    -s scripts/bench/login.lua "$BASE/api/v1/auth/login" >"$WORK/login_bg.txt" 2>&1 &
HAMMER_PID=$!
sleep 1.5
run me_under_login "$THREADS" "$CONNS" auth_get.lua /api/v1/auth/me
wait "$HAMMER_PID" || { cat "$WORK/login_bg.txt" >&2; die "the login hammer failed"; }
HAMMER_PID=""

RSS_PEAK_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
RSS_END_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")
kill -0 "$SERVER_PID" || die "the server died during the benchmark"

# ----------------------------------------------------------------- report ---
# field NAME KEY: a value from the BENCH_RESULT line of a run
field() {
    local line
    line=$(grep '^BENCH_RESULT ' "$WORK/$1.txt" | tail -n 1) || die "no result line in run '$1'"
    sed -n "s/.* $2=\([0-9]*\).*/\1/p" <<<" ${line#BENCH_RESULT}"
}
rps() { awk -v r="$(field "$1" requests)" -v d="$(field "$1" duration_us)" 'BEGIN { printf "%.0f", r / (d / 1e6) }'; }
ms() { awk -v us="$1" 'BEGIN { if (us < 10000) printf "%.2f ms", us / 1000; else printf "%.0f ms", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
errors() {
    local s t k
    s=$(field "$1" status_errors); t=$(field "$1" socket_errors); k=$(field "$1" timeouts)
    if [ "$s" = 0 ] && [ "$t" = 0 ] && [ "$k" = 0 ]; then echo 0; else echo "non-2xx $s, socket $t, timeout $k"; fi
}

BASE_RPS=$(rps health)
BASE_P99=$(field health p99_us)
row() { # NAME LABEL CONNECTIONS [noratio]
    local r p50 p99 rr=— pr=—
    r=$(rps "$1"); p50=$(field "$1" p50_us); p99=$(field "$1" p99_us)
    if [ "${4:-}" != noratio ]; then
        rr=$(ratio "$r" "$BASE_RPS"); pr=$(ratio "$p99" "$BASE_P99")
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$2" "$3" "$r" "$(ms "$p50")" "$(ms "$p99")" \
        "$rr" "$pr" "$(errors "$1")"
}

GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_REV="$GIT_REV (+ uncommitted changes)"
CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"

{
    echo "| scenario | connections | req/s | p50 | p99 | req/s vs baseline | p99 vs baseline | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    row health "\`GET /health\` (baseline: no auth, no DB)" "$CONNS"
    row me "\`GET /api/v1/auth/me\` (JWT + user lookup)" "$CONNS"
    row me_under_login "\`GET /api/v1/auth/me\` while \`/auth/login\` is hammered" "$CONNS (+ $LOGIN_CONNS login)"
    row login "\`POST /api/v1/auth/login\` (argon2id verify)" "$LOGIN_CONNS" noratio
    row login_bg "\`POST /api/v1/auth/login\`, the hammer during the run above" "$LOGIN_CONNS" noratio
    echo
    echo "Peak RSS (VmHWM) of the server: $((RSS_PEAK_KB / 1024)) MiB (after start-up: $((RSS_IDLE_KB / 1024)) MiB, at the end: $((RSS_END_KB / 1024)) MiB)."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($CPU), $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(uname -sr); wrk runs on the same machine (load average before the run: $LOAD_BEFORE)"
    echo "- lxgate: $GIT_REV, release build, SQLite, LOG_LEVEL=warn; $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo "- wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'), ${DURATION}s per run, $THREADS threads (1 for login), --latency"
} | tee "$WORK/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
log "report also written to $OUT; raw wrk output was in $WORK (removed on exit)"
