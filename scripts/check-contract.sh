#!/usr/bin/env bash
# The published contract, checked against the running server (issue 11, item 3),
# on both backends:
#
#   1. for each backend (CONTRACT_BACKEND), in a network namespace of its own
#      (loopback only: the bridges, dnsmasq and firewall rules a generated
#      `POST networks` makes never touch the host's networking):
#      * incus only: a private incusd for this run (below);
#      * lxgate on that backend with a fresh SQLite database and a seeded
#        admin, on an ephemeral port;
#      * schemathesis against its /openapi.json with every check, positive and
#        negative data, all phases (examples, coverage, fuzzing, stateful
#        links) on a time budget of its own, as the admin; the failures per
#        check are printed in a section labelled with the backend;
#      * everything torn down before the next backend starts;
#   2. once, against the embedded backend's server: a Python client
#      (openapi-python-client) and TypeScript types (openapi-typescript)
#      generated from that document; the Python one imported, type-checked
#      (mypy) and driven through a flow against the server
#      (scripts/contract/py_flow.py: image upload, instance create, get,
#      state, exec, snapshot, operations, stop, delete; every response
#      parsed), the TypeScript one type-checked with a small typed use of it
#      (tsc --noEmit, strict).
#
# The Incus backend's incusd is the run's own, never the test bed's shared one
# (other tests use that; generated requests create bridges, pools, projects):
# its INCUS_DIR is in the run's temp dir, it starts inside the run's network
# namespace, in a mount namespace of its own (a sysfs of that network
# namespace, the host's cgroup mounts) and a PID namespace of its own (its
# containers, dnsmasq and forkproxy die with it, whatever happens); seeded as
# the test bed's is (a `dir` pool `default` with the default profile's root
# disk, the test bed's busybox image as alias `busybox`). lxgate reaches it on
# $INCUS_DIR/unix.socket. It is shut down with `incus admin shutdown` (its
# instances force-stopped first), bounded, then killed, and the run checks
# that nothing of it is left. Everything Incus keeps follows INCUS_DIR (logs,
# run, cache), it listens on no port, and LXC names a clashing container's
# cgroup `lxc.payload.NAME-1`, so it runs beside the test bed's incusd.
#
# Exit status: 0 only when schemathesis found nothing on every backend run and
# both generators and type checks passed. `make test` runs it last with a
# fixed seed; `make contract` runs it with a random one. The tools come from
# scripts/testbed.sh (target/testbed.env must be sourced, or this script
# sources it).
#
# Knobs: CONTRACT_BACKEND (embedded | incus | both, default both),
# CONTRACT_MAX_TIME (seconds of schemathesis per backend, default 240),
# CONTRACT_PHASES (default examples,coverage,fuzzing,stateful),
# CONTRACT_MAX_EXAMPLES (per operation and phase, default 25), CONTRACT_DETAILS=1
# (list every failing operation with its answer), CONTRACT_SEED
# (default: random, printed; the same for every backend), CONTRACT_WORKERS
# (default 1), CONTRACT_OUT (keep the reports there, one folder per backend,
# the clients' at the top; default a temp dir, removed),
# CONTRACT_SKIP_SCHEMATHESIS=1 / CONTRACT_SKIP_CLIENTS=1 (the clients need the
# embedded backend: skipped, and said so, when it is not run), LXGATE_BIN
# (default: an incremental `cargo build`, then target/debug/lxgate).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[check-contract] %s\n' "$*"; }
die() { printf '[check-contract] FAILED: %s\n' "$*" >&2; exit 1; }
# INCUSD, incusd_find_pid/_wait_ready/_wait_gone/_stop.
# shellcheck source=SCRIPTDIR/lib/incusd.sh
source "$ROOT/scripts/lib/incusd.sh"

[ "$(id -u)" -eq 0 ] || die "must run as root (network, mount and PID namespaces; the embedded backend's LXC)"
if [ -z "${LXGATE_TESTBED_PYTHON:-}" ] && [ -f "$ROOT/target/testbed.env" ]; then
    # shellcheck disable=SC1091
    source "$ROOT/target/testbed.env"
fi
PY="${LXGATE_TESTBED_PYTHON:-}"
NODE_MODULES="${LXGATE_TESTBED_NODE_MODULES:-}"
{ [ -n "$PY" ] && [ -x "$PY" ]; } || die "no test venv: run \`bash scripts/testbed.sh\` (or \`make contract\`)"
{ [ -n "$NODE_MODULES" ] && [ -d "$NODE_MODULES" ]; } || die "no npm tools: run \`bash scripts/testbed.sh\`"
VENV_BIN="$(dirname "$PY")"

MAX_TIME="${CONTRACT_MAX_TIME:-240}"
MAX_EXAMPLES="${CONTRACT_MAX_EXAMPLES:-25}"
PHASES="${CONTRACT_PHASES:-examples,coverage,fuzzing,stateful}"
# The stateful phase runs on a budget of its own, after the others: in the
# same run it would get only what they leave of --max-time (nothing, with
# 240 s).
STATEFUL_MAX_TIME="${CONTRACT_STATEFUL_MAX_TIME:-120}"
BATCH_PHASES="$(tr ',' '\n' <<<"$PHASES" | grep -vx stateful | paste -sd, - || true)"
STATEFUL=0
if tr ',' '\n' <<<"$PHASES" | grep -qx stateful; then STATEFUL=1; fi
# One worker: schemathesis's threads meet CPython 3.11's AST bug
# (python/cpython#106905, "SystemError: AST constructor recursion depth
# mismatch", fixed after Debian 12's 3.11.2), an error of the tool that
# failed runs at random with two.
WORKERS="${CONTRACT_WORKERS:-1}"
SEED="${CONTRACT_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
case "${CONTRACT_BACKEND:-both}" in
    embedded) BACKENDS=(embedded) ;;
    incus) BACKENDS=(incus) ;;
    both) BACKENDS=(embedded incus) ;;
    *) die "CONTRACT_BACKEND must be embedded, incus or both (not ${CONTRACT_BACKEND})" ;;
esac
SKIP_CLIENTS="${CONTRACT_SKIP_CLIENTS:-0}"
if [ "${CONTRACT_BACKEND:-both}" = incus ] && [ "$SKIP_CLIENTS" != 1 ]; then
    log "note: the clients are checked against the embedded backend, which CONTRACT_BACKEND=incus leaves out: skipped"
    SKIP_CLIENTS=1
fi
if [ "${CONTRACT_BACKEND:-both}" != embedded ]; then
    [ -x "$INCUSD" ] || die "no $INCUSD: run \`bash scripts/testbed.sh\` (or CONTRACT_BACKEND=embedded)"
    command -v jq >/dev/null || die "no jq: run \`bash scripts/testbed.sh\`"
    { [ -s "${LXGATE_TEST_INCUS_IMAGE_META:-}" ] && [ -s "${LXGATE_TEST_INCUS_IMAGE_ROOTFS:-}" ]; } \
        || die "no test bed busybox image for Incus (LXGATE_TEST_INCUS_IMAGE_META/_ROOTFS): run \`bash scripts/testbed.sh\`, source target/testbed.env"
fi

if [ -n "${LXGATE_BIN:-}" ]; then
    BIN="$LXGATE_BIN"
else
    cargo build --locked --quiet --bin lxgate
    BIN="$ROOT/target/debug/lxgate"
fi
[ -x "$BIN" ] || die "no lxgate binary at $BIN"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

WORK="$(mktemp -d /var/tmp/lxgate-contract.XXXXXX)"
# The containers' root (and an unprivileged one's uid) must get through to
# DATA_DIR and INCUS_DIR.
chmod 0755 "$WORK"
OUT="${CONTRACT_OUT:-$WORK/out}"
mkdir -p "$OUT"

ms() { date +%s%3N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

# The current backend run's state (teardown and the EXIT trap read it).
B="" BWORK="" BOUT="" NS="" BASE="" LXGATE_PID="" INCUS_NS_PID="" INCUSD_PID="" INCUSD_LOG=""
status=0
RESULTS=()

# --------------------------------------------------------- private incusd ---
# Started inside $NS; sets INCUS_DIR/INCUS_CONF (exported: the incus CLI here
# reaches this daemon), INCUS_NS_PID (unshare, our child: killing it kills the
# PID namespace and everything in it) and INCUSD_PID (the daemon, host pid).
start_incusd() {
    # The CLI reads INCUS_SOCKET (and a remote) before INCUS_DIR: one left in
    # the caller's environment would point it at the shared test bed's daemon.
    unset INCUS_SOCKET INCUS_REMOTE
    export INCUS_DIR="$BWORK/incus" INCUS_CONF="$BWORK/incus-client"
    INCUSD_LOG="$BWORK/incusd.log"
    install -d -m 711 "$INCUS_DIR"
    install -d -m 700 "$INCUS_CONF"
    mkdir "$BWORK/cgroup"
    # nsenter: only the network namespace (`ip netns exec` would leave
    # /sys/fs/cgroup empty). unshare: a mount namespace (slave: nothing incusd
    # mounts reaches the host) with a sysfs of the network namespace (Incus
    # reads /sys/class/net) and the host's cgroup mounts moved under it, and a
    # PID namespace whose init (sh, which reaps LXC's daemonised monitors)
    # waits for incusd. From $INCUS_DIR: incusd's children (rsync) inherit
    # the directory.
    # shellcheck disable=SC2016 # the inner script's own arguments
    (
        cd "$INCUS_DIR"
        exec nsenter --net="/run/netns/$NS" -- \
            unshare --mount --propagation slave --pid --fork --kill-child --mount-proc -- \
            env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin INCUS_DIR="$INCUS_DIR" \
            sh -c 'set -e
                mount --rbind /sys/fs/cgroup "$1"
                umount -l /sys
                mount -t sysfs sysfs /sys
                mount --move "$1" /sys/fs/cgroup
                "$2" --group root --logfile "$3" &
                wait $!' incusd-init "$BWORK/cgroup" "$INCUSD" "$INCUSD_LOG"
    ) </dev/null >"$BWORK/incusd.stdout" 2>&1 &
    INCUS_NS_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        INCUSD_PID="$(incusd_find_pid "$INCUSD_LOG")" && break
        incusd_alive "$INCUS_NS_PID" || break
        sleep 0.1
    done
    if [ -z "$INCUSD_PID" ]; then
        cat "$BWORK/incusd.stdout" >&2 || true
        die "incusd did not start in netns $NS"
    fi
    incusd_wait_ready "$INCUSD_PID" 30 "$INCUSD_LOG" || die "incusd did not get ready in netns $NS"
    timeout 60 incus admin init --preseed >/dev/null <<'YAML' || die "incus admin init --preseed (pool default, root disk)"
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root: {type: disk, path: /, pool: default}
YAML
    timeout 120 incus image import "$LXGATE_TEST_INCUS_IMAGE_META" "$LXGATE_TEST_INCUS_IMAGE_ROOTFS" --alias busybox >/dev/null \
        || die "incus image import (busybox)"
}

# Force-stops what runs (a generated instance may have a long
# boot.host_shutdown_timeout), shuts incusd down, then makes sure its PID
# namespace is gone. Idempotent.
stop_incusd() {
    [ -n "$INCUS_NS_PID" ] || return 0
    if [ -n "$INCUSD_PID" ] && incusd_alive "$INCUSD_PID"; then
        local running p n deadline=$((SECONDS + 60))
        running="$(curl -sS --max-time 10 --unix-socket "$INCUS_DIR/unix.socket" \
            'http://incus/1.0/instances?all-projects=true&recursion=1' 2>/dev/null \
            | jq -r '.metadata[]? | select(.status != "Stopped") | "\(.project) \(.name)"' 2>/dev/null || true)"
        while read -r p n; do
            [ -n "$n" ] || continue
            [ "$SECONDS" -lt "$deadline" ] || break
            timeout 20 incus stop --force --project "$p" "$n" >/dev/null 2>&1 || log "incus: could not force-stop $p/$n"
        done <<<"$running"
        incusd_stop "$INCUSD_PID" 20 || true
    fi
    # incusd gone: its namespace's init (sh) returns, unshare exits. If not,
    # SIGKILL unshare: --kill-child kills the init, and with it every process
    # of that PID namespace (containers included).
    if ! incusd_wait_gone "$INCUS_NS_PID" 5; then
        log "incusd's PID namespace still alive: SIGKILL"
        kill -KILL "$INCUS_NS_PID" 2>/dev/null || true
        incusd_wait_gone "$INCUS_NS_PID" 5 || log "unshare $INCUS_NS_PID does not die"
    fi
    wait "$INCUS_NS_PID" 2>/dev/null || true
    INCUS_NS_PID="" INCUSD_PID=""
}

# --------------------------------------------------------------- teardown ---
# Stops the current backend run's servers and removes its namespace and
# data; says what was still left. Idempotent (the EXIT trap calls it too).
teardown() {
    local pid ct left=""
    [ -n "$B" ] || return 0
    if [ -n "$LXGATE_PID" ] && kill -0 "$LXGATE_PID" 2>/dev/null; then
        kill "$LXGATE_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$LXGATE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$LXGATE_PID" 2>/dev/null || true
    fi
    wait "$LXGATE_PID" 2>/dev/null || true
    LXGATE_PID=""
    stop_incusd
    if [ -d "$BWORK/data/lxc" ]; then
        for ct in "$BWORK"/data/lxc/*/; do
            [ -d "$ct" ] || continue
            ct="$(basename "$ct")"
            timeout 20 lxc-stop -P "$BWORK/data/lxc" -n "$ct" -k >/dev/null 2>&1 || true
            timeout 20 lxc-destroy -P "$BWORK/data/lxc" -n "$ct" >/dev/null 2>&1 || true
        done
    fi
    # Whatever still runs in the namespace (embedded VMs, dnsmasq) would keep
    # it alive. Of the Incus run nothing should be left: said.
    if [ -n "$NS" ] && ip netns list 2>/dev/null | grep -qw "$NS"; then
        for pid in $(ip netns pids "$NS" 2>/dev/null); do
            left+="$pid $({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-100); "
            kill -9 "$pid" 2>/dev/null || true
        done
        ip netns delete "$NS" 2>/dev/null || true
    fi
    if [ "$B" = incus ]; then
        # Processes of this run in other network namespaces (containers' LXC
        # monitors) name INCUS_DIR on their command line.
        local cmd
        for pid in /proc/[0-9]*; do
            cmd="$({ tr '\0' ' ' <"$pid/cmdline"; } 2>/dev/null || true)"
            if [[ "$cmd" == *"$BWORK/"* ]]; then
                left+="${pid#/proc/} ${cmd:0:100}; "
                kill -9 "${pid#/proc/}" 2>/dev/null || true
            fi
        done
        if [ -n "$left" ]; then
            log "[incus] still running after the teardown (killed): $left"
            status=1
        fi
    fi
    if [ -n "${CONTRACT_OUT:-}" ]; then
        for f in lxgate.log incusd.log; do
            [ ! -f "$BWORK/$f" ] || cp "$BWORK/$f" "$BOUT/"
        done
    fi
    rm -rf "$BWORK"
    NS="" B=""
}

cleanup() {
    local rc=$?
    # A second Ctrl-C must not cut the teardown short.
    trap '' INT TERM
    if [ "$rc" != 0 ] && [ "$rc" != 1 ] && [ -n "$BWORK" ] && [ -f "$BWORK/lxgate.log" ]; then
        echo "--- lxgate's log (last 30 lines)" >&2
        tail -n 30 "$BWORK/lxgate.log" >&2 || true
    fi
    teardown || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_ns() { ip netns exec "$NS" "$@"; }

ADMIN="admin"
ADMIN_PASSWORD="contract-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
JWT_SECRET="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"

token() {
    in_ns curl -fsS --max-time 10 -H 'content-type: application/json' \
        -d "{\"username\":\"$ADMIN\",\"password\":\"$ADMIN_PASSWORD\"}" "$BASE/api/v1/auth/login" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# ----------------------------------------------------------------- lxgate ---
# Started in $BWORK so no .env of a checkout is read; only these variables count.
start_lxgate() {
    local backend_env=(BACKEND="$B")
    [ "$B" != incus ] || backend_env+=(INCUS_CONNECTION_MODE=local INCUS_SOCKET_PATH="$INCUS_DIR/unix.socket")
    (
        cd "$BWORK"
        exec ip netns exec "$NS" env -i PATH="$PATH" HOME="$HOME" \
            APP_HOST=127.0.0.1 APP_PORT=0 \
            "${backend_env[@]}" \
            DATA_DIR="$BWORK/data" DATABASE_URL="sqlite://$BWORK/data/lxgate.db" \
            JWT_SECRET="$JWT_SECRET" \
            SEED_ADMIN_USERNAME="$ADMIN" SEED_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
            LOG_FORMAT=json LOG_LEVEL=info \
            AUTH_RATE_LIMIT_PER_MINUTE=100000 AUTH_RATE_LIMIT_BURST=100000 LOGIN_MAX_FAILURES=100000 \
            AUDIT_UNAUTHENTICATED_PER_MINUTE=100000 \
            "$BIN" serve
    ) >"$BWORK/lxgate.log" 2>&1 &
    LXGATE_PID=$!
    BASE=""
    local addr
    for _ in $(seq 1 300); do
        kill -0 "$LXGATE_PID" 2>/dev/null || { cat "$BWORK/lxgate.log" >&2; die "lxgate exited at startup ($B backend)"; }
        addr="$(grep -o '"addr":"127\.0\.0\.1:[0-9]*"' "$BWORK/lxgate.log" | head -n 1 | cut -d'"' -f4 || true)"
        if [ -n "$addr" ] && in_ns curl -fsS --max-time 2 "http://$addr/health" >/dev/null 2>&1; then
            BASE="http://$addr"
            break
        fi
        sleep 0.1
    done
    [ -n "$BASE" ] || die "lxgate did not answer on /health within 30 s ($B backend)"
    log "lxgate $("$BIN" --version 2>/dev/null | awk '{print $NF}') ($B backend) on $BASE in netns $NS"

    in_ns curl -fsS --max-time 10 "$BASE/openapi.json" -o "$BWORK/openapi.json" || die "GET /openapi.json ($B backend)"
    # The drift test keeps openapi.json equal to the code's spec; said here too.
    python3 - "$BWORK/openapi.json" "$ROOT/openapi.json" <<'PY' || log "note: the served /openapi.json differs from the committed openapi.json (run \`make openapi\`)"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
sys.exit(0 if a == b else 1)
PY
    token >/dev/null || die "could not log in as the seeded admin ($B backend)"
}

# The test bed's busybox image as alias `busybox`, as the Incus run's daemon
# has it: the documented example of an instance create names it, so
# generated creates (and the stateful links that follow them: state, exec,
# snapshots, delete) reach real containers on the embedded backend too.
seed_embedded_image() {
    { [ -s "${LXGATE_TEST_EMBEDDED_IMAGE_META:-}" ] && [ -s "${LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS:-}" ]; } \
        || die "no test bed busybox image for the embedded backend (LXGATE_TEST_EMBEDDED_IMAGE_META/_ROOTFS): run \`bash scripts/testbed.sh\`, source target/testbed.env"
    local tok status
    tok="$(token)" || die "could not log in as the seeded admin ($B backend)"
    status="$(in_ns curl -sS --max-time 180 -o "$BWORK/seed-image.json" -w '%{http_code}' \
        -H "authorization: Bearer $tok" \
        -F "metadata=@$LXGATE_TEST_EMBEDDED_IMAGE_META" -F "rootfs=@$LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS" -F alias=busybox \
        "$BASE/api/v1/images/import?wait=120")" || status="curl failed"
    if [ "$status" = 409 ] && grep -q '"code":"image_exists"' "$BWORK/seed-image.json"; then
        # The client flow uploaded the same files (under an alias of its
        # own): the alias is all that is missing.
        local fp
        fp="$(cat "$LXGATE_TEST_EMBEDDED_IMAGE_META" "$LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS" | sha256sum | cut -d' ' -f1)"
        status="$(in_ns curl -sS --max-time 30 -o "$BWORK/seed-image.json" -w '%{http_code}' \
            -H "authorization: Bearer $tok" -H 'content-type: application/json' \
            -d "{\"name\":\"busybox\",\"target\":\"$fp\"}" "$BASE/api/v1/images/aliases")" || status="curl failed"
        [ "$status" = 201 ] \
            || die "alias busybox for the test bed's image ($B backend): $status $(head -c 300 "$BWORK/seed-image.json" 2>/dev/null)"
        return 0
    fi
    [ "$status" = 200 ] && grep -q '"status":"Success"' "$BWORK/seed-image.json" \
        || die "image import of busybox ($B backend): $status $(head -c 300 "$BWORK/seed-image.json" 2>/dev/null)"
}

# ----------------------------------------------------------- schemathesis ---
# scripts/contract/hooks.py logs in (again after a generated logout or role
# change revokes the token) and keeps generated requests from changing the
# run's own account. The WebSocket endpoints (.../ws) are left out:
# schemathesis speaks plain HTTP, which they answer 426.
# $1: phases, $2: --max-time, $3: the run's name (its reports' folder).
run_schemathesis() {
    local phases="$1" max_time="$2" name="$3" st_rc=0 unique
    local rout="$BOUT/$name"
    mkdir -p "$rout"
    log "[$B] schemathesis $("$VENV_BIN/schemathesis" --version | awk '{print $NF}'): all checks, phases $phases ($([ "$name" = stateful ] && echo 'positive data, sequences joined by the published links' || echo 'positive and negative data')); --max-examples $MAX_EXAMPLES --max-time $max_time --seed $SEED --workers $WORKERS; WebSocket endpoints left out"
    # The run's own bound is --max-time; the outer timeout only guards a hang.
    # Run from $BWORK: schemathesis leaves a .schemathesis/ folder behind.
    (cd "$BWORK" && timeout --kill-after=30 $((max_time + 300)) ip netns exec "$NS" \
        env NO_COLOR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$ROOT/scripts/contract" SCHEMATHESIS_HOOKS=hooks \
        LXGATE_CONTRACT_BASE="$BASE" LXGATE_CONTRACT_USERNAME="$ADMIN" LXGATE_CONTRACT_PASSWORD="$ADMIN_PASSWORD" \
        "$VENV_BIN/schemathesis" --config-file "$ROOT/scripts/contract/schemathesis.toml" run "$BASE/openapi.json" \
        --checks all --exclude-checks use_after_free --phases "$phases" \
        --max-examples "$MAX_EXAMPLES" --max-time "$max_time" --seed "$SEED" \
        --workers "$WORKERS" --request-timeout 60 --generation-database none \
        --suppress-health-check all --no-color --output-truncate true \
        --report junit,ndjson --report-dir "$rout" --exclude-path-regex '/ws$' \
        >"$rout/schemathesis.txt" 2>&1) || st_rc=$?
    # schemathesis's own closing summary, then the failures per check.
    echo "==================== [$B backend] schemathesis: $phases ===================="
    awk '/^=+ SUMMARY =+$/ { p = 1 } p' "$rout/schemathesis.txt" | sed 's/^/    | /'
    "$PY" "$ROOT/scripts/contract/summary.py" "$rout" --label "$B backend, $name" --spec "$BWORK/openapi.json" \
        ${CONTRACT_DETAILS:+--by-operation} || true
    unique="$("$PY" "$ROOT/scripts/contract/summary.py" "$rout" --spec "$BWORK/openapi.json" --count 2>/dev/null || echo '?')"
    if [ "$st_rc" = 0 ]; then
        RESULTS+=("$B backend, $phases: schemathesis found nothing")
    else
        status=1
        log "[$B] schemathesis: exit $st_rc (full output: ${CONTRACT_OUT:-a temp dir; set CONTRACT_OUT to keep it}/$B/$name/schemathesis.txt)"
        RESULTS+=("$B backend, $phases: schemathesis FAILED (exit $st_rc, $unique unique failures)")
    fi
    kill -0 "$LXGATE_PID" 2>/dev/null || die "lxgate died during the schemathesis run ($B backend)"
}

# ---------------------------------------------------------------- clients ---
# Run once, against the embedded backend's lxgate (BWORK, NS, BASE of that run).
run_clients() {
    local pyout tsout gen_rc warnings
    # Python: openapi-python-client, then import every module, then mypy.
    pyout="$BWORK/py"
    mkdir -p "$pyout"
    gen_rc=0
    (cd "$pyout" && PATH="$VENV_BIN:$PATH" "$VENV_BIN/openapi-python-client" generate --path "$BWORK/openapi.json" \
        --meta none --output-path "$pyout/lxgate_client" --overwrite) >"$OUT/python-generate.txt" 2>&1 || gen_rc=$?
    warnings="$(grep -ciE 'warning|error|unable|cannot|skipp' "$OUT/python-generate.txt" || true)"
    if [ "$gen_rc" != 0 ] || [ ! -d "$pyout/lxgate_client" ]; then
        status=1
        sed 's/^/    | /' "$OUT/python-generate.txt"
        log "python client: generator FAILED (exit $gen_rc)"
    else
        if [ "$warnings" != 0 ]; then
            status=1
            sed 's/^/    | /' "$OUT/python-generate.txt" | head -n 80
            log "python client: generated with $warnings warning/error line(s)"
        fi
        if (cd "$pyout" && "$PY" - >"$OUT/python-import.txt" 2>&1) <<'EOF'
import importlib, pkgutil
import lxgate_client
n = 0
for m in pkgutil.walk_packages(lxgate_client.__path__, "lxgate_client."):
    importlib.import_module(m.name)
    n += 1
print(f"{n} modules imported")
EOF
        then
            log "python client: $(cat "$OUT/python-import.txt")"
        else
            status=1
            tail -n 20 "$OUT/python-import.txt" | sed 's/^/    | /'
            log "python client: import FAILED"
        fi
        # Strict, but for client.py: the generator's fixed template (made from
        # no part of the spec) passes `*args: object` on to httpx's __exit__.
        printf '[mypy]\nstrict = True\n\n[mypy-lxgate_client.client]\nignore_errors = True\n' >"$pyout/mypy.ini"
        if (cd "$pyout" && "$VENV_BIN/mypy" --config-file mypy.ini --no-incremental --cache-dir=/dev/null lxgate_client) >"$OUT/python-mypy.txt" 2>&1; then
            log "python client: mypy (strict): $(tail -n 1 "$OUT/python-mypy.txt")"
        else
            status=1
            head -n 40 "$OUT/python-mypy.txt" | sed 's/^/    | /'
            log "python client: mypy (strict) FAILED: $(tail -n 1 "$OUT/python-mypy.txt")"
        fi
    fi

    # The Python client driven through a dashboard's flow against the server
    # (an image upload, an instance created, read, exec'd, snapshotted,
    # stopped and deleted), every response parsed into its model.
    if [ -d "$pyout/lxgate_client" ] && [ -n "${LXGATE_TEST_EMBEDDED_IMAGE_META:-}" ]; then
        if (cd "$pyout" && timeout 600 ip netns exec "$NS" env PYTHONPATH="$pyout" \
            LXGATE_CONTRACT_BASE="$BASE" LXGATE_CONTRACT_USERNAME="$ADMIN" LXGATE_CONTRACT_PASSWORD="$ADMIN_PASSWORD" \
            LXGATE_TEST_EMBEDDED_IMAGE_META="$LXGATE_TEST_EMBEDDED_IMAGE_META" \
            LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS="$LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS" \
            "$PY" "$ROOT/scripts/contract/py_flow.py") >"$OUT/python-flow.txt" 2>&1; then
            log "python client flow: $(tail -n 1 "$OUT/python-flow.txt")"
        else
            status=1
            tail -n 20 "$OUT/python-flow.txt" | sed 's/^/    | /'
            log "python client flow FAILED"
        fi
    else
        log "python client flow: skipped (no generated client, or no test bed image: source target/testbed.env)"
    fi

    # TypeScript: openapi-typescript types, used through openapi-fetch by a
    # small program, checked by tsc --strict --noEmit.
    tsout="$BWORK/ts"
    mkdir -p "$tsout"
    ln -s "$NODE_MODULES" "$tsout/node_modules"
    if "$NODE_MODULES/.bin/openapi-typescript" "$BWORK/openapi.json" -o "$tsout/schema.d.ts" \
        >"$OUT/ts-generate.txt" 2>&1; then
        cp "$ROOT/scripts/contract/use-types.ts" "$tsout/"
        cat >"$tsout/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "strict": true, "noEmit": true, "target": "ES2022", "module": "ESNext",
    "moduleResolution": "Bundler", "lib": ["ES2022", "DOM"], "skipLibCheck": false,
    "noUncheckedIndexedAccess": true, "exactOptionalPropertyTypes": true
  },
  "files": ["schema.d.ts", "use-types.ts"]
}
EOF
        if (cd "$tsout" && "$NODE_MODULES/.bin/tsc" -p tsconfig.json) >"$OUT/ts-tsc.txt" 2>&1; then
            log "typescript types: generated ($(wc -l <"$tsout/schema.d.ts") lines), tsc --noEmit --strict: ok"
        else
            status=1
            head -n 40 "$OUT/ts-tsc.txt" | sed 's/^/    | /'
            log "typescript types: tsc FAILED ($(grep -c 'error TS' "$OUT/ts-tsc.txt" || true) errors)"
        fi
    else
        status=1
        sed 's/^/    | /' "$OUT/ts-generate.txt" | head -n 40
        log "typescript types: openapi-typescript FAILED"
    fi
}

# ------------------------------------------------------------------ runs ---
for backend in "${BACKENDS[@]}"; do
    B="$backend" BWORK="$WORK/$backend" BOUT="$OUT/$backend" NS="lxgate-contract-$$-$backend"
    mkdir -p "$BWORK/data" "$BOUT"
    t0=$(ms)
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    if [ "$B" = incus ]; then
        start_incusd
        log "[incus] private incusd $(incus version 2>/dev/null | awk '/^Server/ {print $3}') (pid $INCUSD_PID) ready in netns $NS, INCUS_DIR=$INCUS_DIR: pool default (dir), image busybox ($(secs "$t0" "$(ms)") s)"
    fi
    t1=$(ms)
    start_lxgate
    t2=$(ms)
    # The clients first, on the server as it starts (they upload the test
    # bed's image themselves): what schemathesis generates afterwards
    # changes it (a `default` profile without a root disk, say), which a
    # client flow must not depend on.
    if [ "$B" = embedded ] && [ "$SKIP_CLIENTS" != 1 ]; then run_clients; fi
    if [ "$B" = embedded ] && [ "${CONTRACT_SKIP_SCHEMATHESIS:-0}" != 1 ]; then seed_embedded_image; fi
    t3=$(ms)
    if [ "${CONTRACT_SKIP_SCHEMATHESIS:-0}" != 1 ]; then
        [ -z "$BATCH_PHASES" ] || run_schemathesis "$BATCH_PHASES" "$MAX_TIME" phases
        [ "$STATEFUL" != 1 ] || run_schemathesis stateful "$STATEFUL_MAX_TIME" stateful
    fi
    t4=$(ms)
    teardown
    t5=$(ms)
    if [ "$backend" = incus ]; then
        log "[incus] wall time $(secs "$t0" "$t5") s: incusd start-up and seeding $(secs "$t0" "$t1") s, lxgate start-up $(secs "$t1" "$t2") s, schemathesis $(secs "$t3" "$t4") s, shutdown and cleanup $(secs "$t4" "$t5") s"
    else
        log "[$backend] wall time $(secs "$t0" "$t5") s: lxgate start-up $(secs "$t0" "$t2") s, clients and seeding $(secs "$t2" "$t3") s, schemathesis $(secs "$t3" "$t4") s, shutdown and cleanup $(secs "$t4" "$t5") s"
    fi
done

if [ "${#RESULTS[@]}" -gt 0 ]; then
    for r in "${RESULTS[@]}"; do log "$r"; done
fi
if [ "$status" = 0 ]; then
    log "ok: the contract holds"
else
    log "the contract does not hold yet (see above)"
fi
exit "$status"
