#!/usr/bin/env bash
# Installs and starts what lxgate's test suite needs, then writes
# target/testbed.env (`export VAR=value` lines) for the Makefile to source.
#
# Idempotent and safe to rerun; on a machine where everything is already in place
# it only checks (a second or so). Must run as root (apt-get, and the private
# PostgreSQL cluster runs as the `postgres` OS user).
#
# What it provides:
#   * Debian packages: postgresql (15), chromium, wrk, curl, jq, python3-venv
#   * a private PostgreSQL 15 cluster (own data dir, 127.0.0.1:55432 only, plus a
#     unix socket in its own dir), role `lxgate`/`lxgate` with CREATEDB and the
#     database `lxgate_test`            -> LXGATE_TEST_POSTGRES_URL
#   * the chromium binary for the /docs browser test     -> LXGATE_TEST_CHROMIUM
#   * a Python venv (target/testbed-venv) with jsonschema, PyYAML and
#     check-jsonschema (which ships the Compose Specification schema) for
#     scripts/check-static.sh, and for scripts/check-contract.sh schemathesis,
#     openapi-python-client and mypy (all pinned)      -> LXGATE_TESTBED_PYTHON
#   * a project-local npm folder (target/contract-node) with openapi-typescript,
#     openapi-fetch and typescript (pinned), for scripts/check-contract.sh
#                                                      -> LXGATE_TESTBED_NODE_MODULES
#   * then scripts/testbed-incus.sh: a private incusd with a busybox image
#     (appends the LXGATE_TEST_INCUS_* lines)
#   * then scripts/testbed-cluster.sh: a two-member Incus cluster on
#     127.0.0.2 / 127.0.0.3 (appends the LXGATE_TEST_CLUSTER_* lines)
#   * last, scripts/testbed-embedded.sh: LXC and QEMU for the embedded drivers, a
#     busybox container image and a kernel+initrd VM image built here, checked
#     once by booting them (appends LXGATE_TEST_LXC, LXGATE_TEST_EMBEDDED_IMAGE_*
#     and LXGATE_TEST_VM_*)
#
# Environment knobs: LXGATE_TESTBED_DIR (default /var/tmp/lxgate-testbed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TESTBED_DIR="${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}"
ENV_FILE="$ROOT/target/testbed.env"

PG_VERSION=15
PG_BIN="/usr/lib/postgresql/$PG_VERSION/bin"
PG_PORT=55432
PG_HOST=127.0.0.1
PG_ROOT="$TESTBED_DIR/pg"      # owned by postgres; holds the unix socket
PG_DATA="$PG_ROOT/data"
PG_LOG="$PG_ROOT/postgres.log"
PG_ROLE=lxgate
PG_PASSWORD=lxgate
PG_DB=lxgate_test
PG_URL="postgres://$PG_ROLE:$PG_PASSWORD@$PG_HOST:$PG_PORT/$PG_DB"

VENV="$ROOT/target/testbed-venv"
# Pinned so every machine validates against the same vendored compose-spec.json,
# and tests the contract with the same schemathesis and generators.
VENV_REQUIREMENTS="check-jsonschema==0.39.0 jsonschema>=4.18,<5 PyYAML>=6,<7 schemathesis==4.32.5 openapi-python-client==0.29.1 mypy==2.4.1"
VENV_IMPORTS="import jsonschema, yaml, check_jsonschema, schemathesis, openapi_python_client, mypy"

# TypeScript side of the contract check: installed into a folder of the project's
# own (never globally), exact versions.
NODE_DIR="$ROOT/target/contract-node"
NODE_PACKAGES="openapi-typescript@7.13.0 openapi-fetch@0.17.0 typescript@5.9.3"

APT_PACKAGES=(postgresql chromium wrk curl jq python3-venv ca-certificates)

T0=$(date +%s%N)
log() { printf '[testbed] %s\n' "$*"; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages; runs PostgreSQL as the postgres user)"

mkdir -p "$TESTBED_DIR" "$ROOT/target"
chmod 755 "$TESTBED_DIR"

# One run at a time (parallel `make test` invocations would race on initdb/apt).
exec 9>"$TESTBED_DIR/testbed.lock"
flock -w 120 9 || die "could not lock $TESTBED_DIR/testbed.lock"

# ---------------------------------------------------------------- packages ---
is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A source that cannot be reached only warns; the install below is what must work.
    apt-get update -qq || log "warning: apt-get update reported errors (continuing)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}"
else
    log "packages: all present"
fi
[ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb not found (is postgresql-$PG_VERSION installed?)"

# --------------------------------------------------------------- postgresql ---
as_pg() { runuser -u postgres -- "$@"; }

install -d -m 700 -o postgres -g postgres "$PG_ROOT"

if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    if [ -e "$PG_DATA" ]; then
        log "postgres: removing half-initialised $PG_DATA"
        rm -rf "$PG_DATA"
    fi
    log "postgres: initdb $PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$PG_ROOT/initdb.log" 2>&1 \
        || { cat "$PG_ROOT/initdb.log" >&2; die "initdb failed"; }
fi

# Settings are managed declaratively: rewritten when they differ, which restarts
# the cluster. The cluster is throwaway test data, so durability is traded for speed.
want_conf="# managed by scripts/testbed.sh -- edits are overwritten
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_ROOT'
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
"
want_hba="# managed by scripts/testbed.sh -- edits are overwritten
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   $PG_HOST/32   trust
"
pg_restart_needed=0
write_if_changed() { # path content
    if [ ! -f "$1" ] || [ "$(cat "$1")" != "$(printf '%s' "$2")" ]; then
        printf '%s' "$2" >"$1"
        chown postgres:postgres "$1"
        chmod 600 "$1"
        pg_restart_needed=1
    fi
}
write_if_changed "$PG_DATA/lxgate-testbed.conf" "$want_conf"
write_if_changed "$PG_DATA/pg_hba.conf" "$want_hba"
if ! grep -qx "include_if_exists = 'lxgate-testbed.conf'" "$PG_DATA/postgresql.conf"; then
    printf "\ninclude_if_exists = 'lxgate-testbed.conf'\n" >>"$PG_DATA/postgresql.conf"
    pg_restart_needed=1
fi

pg_start() {
    # The postmaster outlives this script: it must not inherit (and hold open
    # forever) the testbed lock or any pipe of whoever ran us (a CI runner would
    # wait for EOF on it). stdout/stderr go to /dev/null and the log.
    if ! (
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 "$@" \
            </dev/null >/dev/null 2>&1
    ); then
        tail -n 30 "$PG_LOG" >&2 || true
        die "pg_ctl $* failed (log: $PG_LOG)"
    fi
}
# Running = the pid in postmaster.pid is a postgres process serving this data dir.
# (A machine restart or a session's end leaves a stale postmaster.pid whose pid
# may since belong to something else; pg_ctl/postgres would trust that.)
pg_running() {
    local pid
    pid="$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] \
        && [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PG_DATA" ]
}
if pg_running; then
    if [ "$pg_restart_needed" = 1 ]; then
        log "postgres: configuration changed, restarting"
        pg_start restart -m fast
    else
        log "postgres: running on $PG_HOST:$PG_PORT"
    fi
else
    if [ -e "$PG_DATA/postmaster.pid" ]; then
        log "postgres: removing stale postmaster.pid"
        rm -f "$PG_DATA/postmaster.pid" "$PG_ROOT/.s.PGSQL.$PG_PORT" "$PG_ROOT/.s.PGSQL.$PG_PORT.lock"
    fi
    log "postgres: starting on $PG_HOST:$PG_PORT"
    pg_start start
fi

for _ in $(seq 1 30); do
    "$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 2 && break
    sleep 0.5
done
"$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 2 \
    || die "postgres is not accepting connections on $PG_HOST:$PG_PORT (log: $PG_LOG)"

# Superuser over the private unix socket (trust).
psql_admin() {
    "$PG_BIN/psql" -h "$PG_ROOT" -p "$PG_PORT" -U postgres -d postgres \
        -X -q -t -A -v ON_ERROR_STOP=1 "$@"
}
max_conn=$(psql_admin -c "SHOW max_connections")
[ "$max_conn" = 300 ] || die "postgres max_connections is $max_conn, expected 300"

psql_admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;"
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
    log "postgres: creating database $PG_DB"
    psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE"
fi

# Tests create a database per test (tests/api/helpers.rs: lxgate_t_<uuid>) and do
# not drop it; drop those left by earlier runs: older than 10 minutes and with no
# session on them, so a test suite running concurrently is left alone.
stale_dbs=$(psql_admin -c "SELECT d.datname FROM pg_database d
  WHERE d.datname ~ '^lxgate_t_[0-9a-f]{32}\$'
    AND (pg_stat_file('base/' || d.oid || '/PG_VERSION')).modification < now() - interval '10 minutes'
    AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)")
if [ -n "$stale_dbs" ]; then
    n=0
    while read -r db; do
        psql_admin -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 && n=$((n + 1))
    done <<<"$stale_dbs"
    log "postgres: dropped $n test database(s) left by earlier runs"
fi

# Prove the URL the tests get works over TCP, and that the role can create and
# drop databases of its own (tests make one per test).
probe="lxgate_testbed_probe_$$"
PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" "$PG_URL" -X -q -t -A -v ON_ERROR_STOP=1 \
    -c "SELECT current_user" \
    -c "CREATE DATABASE $probe" \
    -c "DROP DATABASE $probe" >/dev/null \
    || die "cannot use $PG_URL (connect / CREATE DATABASE / DROP DATABASE)"
log "postgres: $PG_URL ok (CREATEDB verified)"

# ----------------------------------------------------------------- chromium ---
CHROMIUM="$(command -v chromium || true)"
[ -n "$CHROMIUM" ] || CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] || die "chromium not found"
log "chromium: $CHROMIUM"

# ------------------------------------------------- python venv (static checks) ---
venv_stamp="$VENV/.lxgate-requirements"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$venv_stamp" 2>/dev/null)" = "$VENV_REQUIREMENTS" ] \
    && "$VENV/bin/python" -c "$VENV_IMPORTS" 2>/dev/null; then
    log "python venv: $VENV ok"
else
    log "python venv: creating $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    # shellcheck disable=SC2086  # word splitting of the requirement list is intended
    "$VENV/bin/pip" install -q --disable-pip-version-check $VENV_REQUIREMENTS \
        || die "pip install into $VENV failed"
    "$VENV/bin/python" -c "$VENV_IMPORTS" \
        || die "venv $VENV is unusable"
    printf '%s' "$VENV_REQUIREMENTS" >"$venv_stamp"
fi

# ------------------------------------------- npm tools (contract check) ---
node_stamp="$NODE_DIR/.lxgate-packages"
command -v npm >/dev/null || die "npm not found (the machine's Node.js)"
if [ "$(cat "$node_stamp" 2>/dev/null)" = "$NODE_PACKAGES" ] \
    && [ -x "$NODE_DIR/node_modules/.bin/openapi-typescript" ] && [ -x "$NODE_DIR/node_modules/.bin/tsc" ]; then
    log "npm tools: $NODE_DIR ok"
else
    log "npm tools: installing $NODE_PACKAGES into $NODE_DIR"
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    printf '{"name": "lxgate-contract-tools", "private": true}\n' >"$NODE_DIR/package.json"
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --save-exact $NODE_PACKAGES </dev/null >/dev/null) \
        || die "npm install into $NODE_DIR failed"
    [ -x "$NODE_DIR/node_modules/.bin/openapi-typescript" ] && [ -x "$NODE_DIR/node_modules/.bin/tsc" ] \
        || die "npm tools in $NODE_DIR are unusable"
    printf '%s' "$NODE_PACKAGES" >"$node_stamp"
fi

# ------------------------------------------------------------ testbed.env ---
tmp="$ENV_FILE.tmp.$$"
{
    echo "# generated by scripts/testbed.sh -- do not edit"
    printf 'export %s=%q\n' \
        LXGATE_TEST_POSTGRES_URL "$PG_URL" \
        LXGATE_TEST_CHROMIUM "$CHROMIUM" \
        LXGATE_TESTBED_PYTHON "$VENV/bin/python" \
        LXGATE_TESTBED_NODE_MODULES "$NODE_DIR/node_modules" \
        LXGATE_TESTBED_DIR "$TESTBED_DIR"
} >"$tmp"
mv -f "$tmp" "$ENV_FILE"

T1=$(date +%s%N)
log "wrote ${ENV_FILE#"$ROOT"/} ($(( (T1 - T0) / 1000000 )) ms)"

# ------------------------------------------------------------------- incus ---
# After the file above is written: appends its LXGATE_TEST_INCUS_* lines to it.
LXGATE_TESTBED_DIR="$TESTBED_DIR" bash "$ROOT/scripts/testbed-incus.sh"

# ----------------------------------------------------------------- cluster ---
# After incus (which installs it and builds the image): appends LXGATE_TEST_CLUSTER_*.
LXGATE_TESTBED_DIR="$TESTBED_DIR" bash "$ROOT/scripts/testbed-cluster.sh"

# ---------------------------------------------------------------- embedded ---
# After incus: appends the LXGATE_TEST_LXC / _EMBEDDED_IMAGE_* / _VM_* lines.
LXGATE_TESTBED_DIR="$TESTBED_DIR" bash "$ROOT/scripts/testbed-embedded.sh"
