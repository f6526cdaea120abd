#!/usr/bin/env bash
# Controls the members of the test bed's two-member Incus cluster (the one
# scripts/testbed-cluster.sh sets up): m1 on 127.0.0.2:8443 and m2 on
# 127.0.0.3:8443, INCUS_DIR=$LXGATE_TESTBED_DIR/cluster/<member>, never the
# system's /var/lib/incus nor the single test incusd.
#
#   cluster-test-ctl.sh start [MEMBER]   start it (default: m1 then m2) unless already answering; wait until ready
#   cluster-test-ctl.sh stop MEMBER|all  `incus admin shutdown` (bounded), then SIGTERM/SIGKILL
#   cluster-test-ctl.sh status [MEMBER]  exit 0 when running and answering (default: both), 1 otherwise
#
# m1 holds the cluster database (with two members the second is only a
# stand-by), so m2 cannot become ready while m1 is down: start m1 first, and
# take m2 down (not m1) to show a gateway failing over.
#
# Tests use it to stop the member lxgate talks to and bring it back. Every
# wait is bounded. Concurrent callers are serialised on $TESTBED_DIR/cluster.lock.
#
# Environment knobs: LXGATE_TESTBED_DIR (default /var/tmp/lxgate-testbed),
# LXGATE_INCUS_READY_TIMEOUT (s, default 60), LXGATE_INCUS_STOP_TIMEOUT (s, default 20).
set -euo pipefail

TESTBED_DIR="${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}"
READY_TIMEOUT="${LXGATE_INCUS_READY_TIMEOUT:-60}"
STOP_TIMEOUT="${LXGATE_INCUS_STOP_TIMEOUT:-20}"
CLUSTER_DIR="$TESTBED_DIR/cluster"
MEMBERS=(m1 m2)

unset INCUS_SOCKET INCUS_REMOTE
# The CLI's own configuration stays in the test bed, not in ~/.config/incus.
export INCUS_CONF="$CLUSTER_DIR/incus-client"

log() { printf '[cluster-test-ctl] %s\n' "$*" >&2; }
die() { printf '[cluster-test-ctl] ERROR: %s\n' "$*" >&2; exit 1; }
# INCUSD, incusd_is_ours/_find_pid/_wait_ready/_wait_gone/_stop.
# shellcheck source=SCRIPTDIR/lib/incusd.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/incusd.sh"

# member NAME: points INCUS_DIR (which the `incus` CLI and lib/incusd.sh use)
# and the per-member paths at NAME.
member() {
    case "$1" in m1 | m2) ;; *) die "unknown member $1 (m1 or m2)" ;; esac
    export INCUS_DIR="$CLUSTER_DIR/$1"
    SOCKET="$INCUS_DIR/unix.socket"
    LOGFILE="$INCUS_DIR/incusd.log"
    PIDFILE="$CLUSTER_DIR/$1.pid"
}

# The pid of the member's daemon, or nothing; never a stale pid (see lib/incusd.sh).
member_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if incusd_is_ours "$pid" "$LOGFILE"; then echo "$pid"; return 0; fi
    incusd_find_pid "$LOGFILE"
}

answering() {
    curl -sS --fail --max-time 3 --unix-socket "$SOCKET" -o /dev/null http://incus/1.0 2>/dev/null \
        && timeout 5 incus admin waitready --timeout 2 >/dev/null 2>&1
}

do_start() {
    member "$1"
    [ -x "$INCUSD" ] || die "$INCUSD not found: run scripts/testbed-incus.sh (installs incus)"
    local pid i
    if pid="$(member_pid)"; then
        if answering; then
            log "$1 running (pid $pid)"
            return 0
        fi
        log "$1 (pid $pid) not ready yet, waiting up to ${READY_TIMEOUT}s"
        if timeout $((READY_TIMEOUT + 5)) incus admin waitready --timeout "$READY_TIMEOUT" >/dev/null 2>&1; then
            log "$1 running (pid $pid), ready"
            return 0
        fi
        log "$1 (pid $pid) does not answer: killing it"
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true
        incusd_wait_gone "$pid" 10 || { kill -KILL "$pid" 2>/dev/null || true; incusd_wait_gone "$pid" 5 || die "cannot kill incusd $pid"; }
    fi
    rm -f "$PIDFILE" "$SOCKET"
    install -d -m 711 "$INCUS_DIR"
    install -d -m 700 "$INCUS_CONF"
    log "starting $1 (INCUS_DIR=$INCUS_DIR)"
    # Fully detached, no inherited descriptor above 2, not in the caller's
    # directory (same reasons as scripts/incus-test-ctl.sh).
    (
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        cd "$INCUS_DIR"
        exec setsid -f nohup "$INCUSD" --group root --logfile "$LOGFILE" \
            </dev/null >"$CLUSTER_DIR/$1.stdout" 2>&1
    )
    pid=""
    for ((i = 0; i < 50; i++)); do
        pid="$(member_pid)" && break
        sleep 0.1
    done
    [ -n "$pid" ] || { tail -n 20 "$LOGFILE" "$CLUSTER_DIR/$1.stdout" >&2 2>/dev/null || true; die "$1 did not start"; }
    echo "$pid" >"$PIDFILE"
    incusd_wait_ready "$pid" "$READY_TIMEOUT" "$LOGFILE" || die "$1 did not become ready"
    log "$1 started (pid $pid)"
}

do_stop() {
    member "$1"
    local pid
    if ! pid="$(member_pid)"; then
        rm -f "$PIDFILE"
        log "$1 not running"
        return 0
    fi
    log "stopping $1 (pid $pid)"
    incusd_stop "$pid" "$STOP_TIMEOUT" || die "cannot stop $1 (pid $pid)"
    rm -f "$PIDFILE"
    log "$1 stopped"
}

do_status() {
    member "$1"
    local pid
    if pid="$(member_pid)" && answering; then log "$1 running (pid $pid)"; return 0; fi
    log "$1 not running"
    return 1
}

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
cmd="${1:-}"
[ -n "$cmd" ] || usage
mkdir -p "$CLUSTER_DIR"

lock() {
    [ "${LXGATE_CLUSTER_LOCK_HELD:-}" = 1 ] && return 0
    exec 7>"$TESTBED_DIR/cluster.lock"
    flock -w 120 7 || die "could not lock $TESTBED_DIR/cluster.lock"
}

case "$cmd" in
    start)
        lock
        if [ $# -ge 2 ]; then do_start "$2"; else for m in "${MEMBERS[@]}"; do do_start "$m"; done; fi ;;
    stop)
        [ $# -eq 2 ] || usage
        lock
        # m2 first: the stand-by leaves while the database holder still answers.
        if [ "$2" = all ]; then do_stop m2; do_stop m1; else do_stop "$2"; fi ;;
    status)
        if [ $# -ge 2 ]; then do_status "$2"; else do_status m1 && do_status m2; fi ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
