#!/usr/bin/env bash
# Benchmark of the embedded backend (issue 4) with an Incus-backend reference
# measured in the same run on the same host:
#   1. container create+start and stop+delete latency, embedded vs Incus
#   2. VM boot time to the guest's console marker (KVM driver, TCG here)
#   3. GET /api/v1/instances with BENCH_LIST_INSTANCES containers, embedded vs Incus
# Two release lxgate servers run side by side: BACKEND=embedded (a throwaway
# DATA_DIR) and BACKEND=incus (the test bed's private incusd). The load
# generator is benches/embedded.rs (cargo bench --bench embedded).
#
# Usage: bash scripts/bench-embedded.sh   (part of `make bench`)
# BENCH_ONLY=soak (`make soak`) runs the soak instead: both servers in turn
# under a steady mixed load for SOAK_SECONDS (benches/soak/mod.rs); SOAK_ONLY=embedded|incus
# soaks one of them.
# Knobs: BENCH_ITERATIONS=10, BENCH_VM_BOOTS=3, BENCH_LIST_INSTANCES=100,
#        BENCH_DURATION=10, BENCH_CONNECTIONS=16, BENCH_SKIP_BUILD=1,
#        BENCH_OUT (default target/bench/embedded.md)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export BENCH_ITERATIONS="${BENCH_ITERATIONS:-10}" BENCH_VM_BOOTS="${BENCH_VM_BOOTS:-3}"
export BENCH_LIST_INSTANCES="${BENCH_LIST_INSTANCES:-100}" BENCH_DURATION="${BENCH_DURATION:-10}"
export BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-16}"
OUT="${BENCH_OUT:-$ROOT/target/bench/embedded.md}"
BIN="$ROOT/target/release/lxgate"

log() { printf '[bench-embedded] %s\n' "$*" >&2; }
die() { printf '[bench-embedded] ERROR: %s\n' "$*" >&2; exit 1; }
for v in BENCH_ITERATIONS BENCH_VM_BOOTS BENCH_LIST_INSTANCES BENCH_DURATION BENCH_CONNECTIONS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

log "test bed (incusd, LXC, QEMU, images)"
bash scripts/testbed.sh >/dev/null
# shellcheck disable=SC1091
source target/testbed.env
export INCUS_DIR="$LXGATE_TEST_INCUS_DIR" BENCH_VM_MARKER="$LXGATE_TEST_VM_MARKER"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release, and the load generator"
    cargo build --release --quiet
    cargo bench --bench embedded --no-run --quiet 2>/dev/null
fi
[ -x "$BIN" ] || die "$BIN not found"

WORK="$(mktemp -d /tmp/lxgate-bench-embedded.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    # Whatever the generator left behind: embedded containers and VMs, Incus instances.
    for d in "$WORK"/emb/lxc/*/; do
        [ -d "$d" ] && lxc-stop -P "$WORK/emb/lxc" -n "$(basename "$d")" --kill >/dev/null 2>&1 || true
    done
    for p in "$WORK"/emb/vms/*/qemu.pid; do
        [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true
    done
    for n in $(incus list --format csv --columns n 2>/dev/null | grep '^bench-' || true); do
        incus delete --force "$n" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PASSWORD="bench-password-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
start() { # NAME PORT VARS...
    local name=$1 port=$2; shift 2
    mkdir -p "$WORK/$name"
    # Unprivileged containers' mapped root must reach DATA_DIR (mktemp's
    # directory is 0700): the same ACLs `make run` grants.
    DATA_DIR="$WORK/$name" bash scripts/data-dir-setup.sh >/dev/null
    (cd "$WORK" && exec env APP_HOST=127.0.0.1 APP_PORT="$port" DATA_DIR="$WORK/$name" \
        DATABASE_URL="sqlite://$WORK/$name/lxgate.db" JWT_SECRET="bench-$name-$PASSWORD" \
        SEED_ADMIN_USERNAME=bench SEED_ADMIN_PASSWORD="$PASSWORD" LOG_FORMAT=json LOG_LEVEL=warn \
        "$@" "$BIN" serve) >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/health" 2>/dev/null && return 0
        sleep 0.2
    done
    cat "$WORK/$name.log" >&2; die "lxgate ($name) did not come up"
}
token() {
    curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"username\":\"bench\",\"password\":\"$PASSWORD\"}" "$1/api/v1/auth/login" | jq -er .access_token
}
EP=$(free_port); IP=$(free_port)
# The soak holds SOAK_SUBSCRIBERS sockets open as one user.
SOCKETS=$(( ${SOAK_SUBSCRIBERS:-200} + 50 ))
start emb "$EP" BACKEND=embedded MAX_WEBSOCKETS_PER_USER="$SOCKETS"
export BENCH_EMBEDDED_PID="${PIDS[-1]}"
start inc "$IP" BACKEND=incus INCUS_SOCKET_PATH="$LXGATE_TEST_INCUS_SOCKET" MAX_WEBSOCKETS_PER_USER="$SOCKETS"
export BENCH_INCUS_PID="${PIDS[-1]}"
export BENCH_EMBEDDED_URL="http://127.0.0.1:$EP" BENCH_INCUS_URL="http://127.0.0.1:$IP"
BENCH_EMBEDDED_TOKEN="$(token "$BENCH_EMBEDDED_URL")"; BENCH_INCUS_TOKEN="$(token "$BENCH_INCUS_URL")"
export BENCH_EMBEDDED_TOKEN BENCH_INCUS_TOKEN

log "importing the busybox and VM images into the embedded backend"
tar -cf "$WORK/boot.tar" -C "$(dirname "$LXGATE_TEST_VM_KERNEL")" \
    "$(basename "$LXGATE_TEST_VM_KERNEL")" "$(basename "$LXGATE_TEST_VM_INITRD")"
up() { curl -fsS --max-time 120 -H "Authorization: Bearer $BENCH_EMBEDDED_TOKEN" "$@" \
        "$BENCH_EMBEDDED_URL/api/v1/images/import?wait=120" | jq -e '.status_code == 200' >/dev/null; }
up -F "metadata=@$LXGATE_TEST_EMBEDDED_IMAGE_META" -F "rootfs=@$LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS" -F alias=busybox \
    || die "container image import failed"
up -F "metadata=@$LXGATE_TEST_VM_META" -F "rootfs.img=@$WORK/boot.tar" -F alias=tinyvm || die "VM image import failed"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --quiet --bench embedded >"$WORK/tables.md" || { tail -n 20 "$WORK"/*.log >&2; die "the load generator failed"; }

GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- src Cargo.toml Cargo.lock benches 2>/dev/null || GIT_REV="$GIT_REV (+ uncommitted changes)"
{
    cat "$WORK/tables.md"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(uname -sr); both lxgate servers, incusd, LXC/QEMU and the load generator share it (load average before: $LOAD_BEFORE)"
    echo "- lxgate $GIT_REV release build, SQLite, LOG_LEVEL=warn; incus $(incus version 2>/dev/null | awk '/^Server/ {print $3}'); $(lxc-start --version 2>/dev/null | sed 's/^/LXC /'); $(qemu-system-x86_64 --version | head -n 1 | awk '{print "QEMU", $4}')"
    if [ "${BENCH_ONLY:-}" = soak ]; then
        echo "- soak: ${SOAK_SECONDS:-300}s per backend, ${SOAK_CLIENTS:-50} REST clients (50 ms between calls), ${SOAK_SUBSCRIBERS:-200} event subscribers, ${SOAK_EXECS:-4} exec loops, ${SOAK_INSTANCES:-4} running containers; samples every 5 s, slopes by least squares"
    else
        echo "- $BENCH_ITERATIONS lifecycle rounds per backend, $BENCH_VM_BOOTS VM boots, $BENCH_LIST_INSTANCES containers listed, ${BENCH_DURATION}s per list run"
    fi
} | tee "$WORK/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
log "report also written to $OUT"
