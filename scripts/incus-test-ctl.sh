#!/usr/bin/env bash
# Controls the test bed's private incusd (the one scripts/testbed-incus.sh sets
# up): INCUS_DIR=$LXGATE_TESTBED_DIR/incus, never the system's /var/lib/incus.
#
#   incus-test-ctl.sh start             start it unless it is already answering; wait until ready
#   incus-test-ctl.sh stop              `incus admin shutdown` (bounded), then SIGTERM/SIGKILL
#   incus-test-ctl.sh restart           stop + start
#   incus-test-ctl.sh status            exit 0 when running and answering, 1 otherwise
#   incus-test-ctl.sh trust-token NAME  print a fresh client trust token (one line, nothing else)
#
# Tests use it to take incusd down and bring it back (events reconnection, 503
# while the backend is down) and to obtain trust tokens for the mTLS tests.
# Every wait is bounded. Concurrent callers are serialised on $TESTBED_DIR/incus.lock.
#
# Environment knobs: LXGATE_TESTBED_DIR (default /var/tmp/lxgate-testbed),
# LXGATE_INCUS_READY_TIMEOUT (s, default 30), LXGATE_INCUS_STOP_TIMEOUT (s, default 20).
set -euo pipefail

TESTBED_DIR="${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}"
READY_TIMEOUT="${LXGATE_INCUS_READY_TIMEOUT:-30}"
STOP_TIMEOUT="${LXGATE_INCUS_STOP_TIMEOUT:-20}"

# The CLI reads INCUS_SOCKET (and a remote) before INCUS_DIR.
unset INCUS_SOCKET INCUS_REMOTE
export INCUS_DIR="$TESTBED_DIR/incus"
# The CLI's own configuration (remotes, client certificate) stays in the test
# bed too, instead of ~/.config/incus.
export INCUS_CONF="$TESTBED_DIR/incus-client"
SOCKET="$INCUS_DIR/unix.socket"
LOGFILE="$INCUS_DIR/incusd.log"
PIDFILE="$TESTBED_DIR/incusd.pid"

log() { printf '[incus-test-ctl] %s\n' "$*" >&2; }
die() { printf '[incus-test-ctl] ERROR: %s\n' "$*" >&2; exit 1; }
# INCUSD, incusd_is_ours/_find_pid/_wait_ready/_wait_gone/_stop.
# shellcheck source=SCRIPTDIR/lib/incusd.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/incusd.sh"

# Bounded GET on the unix socket; prints the body.
api_get() { curl -sS --fail --max-time 3 --unix-socket "$SOCKET" "http://incus$1"; }

# The pid of our daemon, or nothing. A stale pid file (after a reboot the pid
# may belong to anything) is never trusted: checked through /proc.
incusd_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if incusd_is_ours "$pid" "$LOGFILE"; then echo "$pid"; return 0; fi
    # Pid file lost or stale: look for one started by other means.
    incusd_find_pid "$LOGFILE"
}

# Answers on its socket and reports itself ready (/internal/ready).
answering() {
    api_get /1.0 >/dev/null 2>&1 && timeout 5 incus admin waitready --timeout 2 >/dev/null 2>&1
}

do_start() {
    [ -x "$INCUSD" ] || die "$INCUSD not found: run scripts/testbed-incus.sh (installs incus)"
    local pid
    if pid="$(incusd_pid)"; then
        if answering; then
            log "incusd running (pid $pid), answering on $SOCKET"
            return 0
        fi
        # Still starting (or hung): give it the ready timeout, then replace it.
        log "incusd (pid $pid) not ready yet, waiting up to ${READY_TIMEOUT}s"
        if timeout $((READY_TIMEOUT + 5)) incus admin waitready --timeout "$READY_TIMEOUT" >/dev/null 2>&1; then
            log "incusd running (pid $pid), ready"
            return 0
        fi
        log "incusd (pid $pid) does not answer: killing it"
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true   # in case it was stopped (SIGSTOP)
        incusd_wait_gone "$pid" 10 || { kill -KILL "$pid" 2>/dev/null || true; incusd_wait_gone "$pid" 5 || die "cannot kill incusd $pid"; }
    fi

    # Not running: whatever a dead daemon left (machine restart, kill -9) is stale.
    rm -f "$PIDFILE" "$SOCKET"
    install -d -m 711 "$INCUS_DIR"
    install -d -m 700 "$INCUS_CONF"

    log "starting incusd (INCUS_DIR=$INCUS_DIR)"
    # Fully detached: own session (setsid), no controlling terminal, stdin from
    # /dev/null, stdout/stderr to a file, and no inherited descriptor above 2
    # (a caller's lock or a CI runner's pipe would otherwise stay open for as
    # long as incusd lives).
    (
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        # Not the caller's directory: incusd's children (rsync for snapshots)
        # inherit it, and fail once a test checkout it was started from is gone.
        cd "$INCUS_DIR"
        exec setsid -f nohup "$INCUSD" --group root --logfile "$LOGFILE" \
            </dev/null >"$TESTBED_DIR/incusd.stdout" 2>&1
    )
    # setsid -f forks, so the daemon's pid is found through /proc.
    local i
    pid=""
    for ((i = 0; i < 50; i++)); do
        pid="$(incusd_pid)" && break
        sleep 0.1
    done
    [ -n "$pid" ] || { tail -n 20 "$LOGFILE" "$TESTBED_DIR/incusd.stdout" >&2 2>/dev/null || true; die "incusd did not start"; }
    echo "$pid" >"$PIDFILE"

    # Ready within READY_TIMEOUT, failing early if the daemon dies.
    incusd_wait_ready "$pid" "$READY_TIMEOUT" "$LOGFILE" || die "incusd did not start"
    log "incusd started (pid $pid), ready on $SOCKET"
}

do_stop() {
    local pid
    if ! pid="$(incusd_pid)"; then
        rm -f "$PIDFILE"
        log "incusd not running"
        return 0
    fi
    log "stopping incusd (pid $pid)"
    incusd_stop "$pid" "$STOP_TIMEOUT" || die "cannot stop incusd $pid"
    rm -f "$PIDFILE"
    log "incusd stopped"
}

do_trust_token() {
    local name="$1" out token
    answering || die "incusd is not running (incus-test-ctl.sh start)"
    out="$(timeout 15 incus config trust add "$name" 2>&1)" || die "incus config trust add $name failed: $out"
    # Output: "Client NAME certificate add token:\n<token>": keep the token line.
    token="$(printf '%s\n' "$out" | grep -E '^[A-Za-z0-9+/=_-]{40,}$' | tail -n 1 || true)"
    [ -n "$token" ] || die "no token in the output of incus config trust add: $out"
    printf '%s\n' "$token"
}

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
cmd="${1:-}"
[ -n "$cmd" ] || usage
mkdir -p "$TESTBED_DIR"

# Serialise start/stop/restart (tests running in parallel, testbed-incus.sh).
# testbed-incus.sh holds the lock already and says so.
lock() {
    [ "${LXGATE_INCUS_LOCK_HELD:-}" = 1 ] && return 0
    exec 8>"$TESTBED_DIR/incus.lock"
    flock -w 90 8 || die "could not lock $TESTBED_DIR/incus.lock"
}

case "$cmd" in
    start) lock; do_start ;;
    stop) lock; do_stop ;;
    restart) lock; do_stop; do_start ;;
    status)
        if pid="$(incusd_pid)" && answering; then log "running (pid $pid)"; exit 0; fi
        log "not running"; exit 1 ;;
    trust-token)
        if [ $# -ne 2 ] || [ -z "$2" ]; then usage; fi
        do_trust_token "$2" ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
