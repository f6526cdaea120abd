# shellcheck shell=bash
# incusd's life cycle, shared by scripts/incus-test-ctl.sh (the test bed's
# long-lived incusd) and scripts/check-contract.sh (a private one per contract
# run, inside that run's network namespace). Sourced, not run.
#
# The caller exports INCUS_DIR (and INCUS_CONF) of the incusd it means (the
# `incus` CLI calls below reach it through $INCUS_DIR/unix.socket) and defines
# log. Every wait is bounded; nothing here dies: failures return 1 after
# saying why, the caller decides.

INCUSD=/usr/libexec/incus/incusd

# incusd_alive PID: running (a zombie, e.g. an exited child of the caller not
# yet reaped, does not count).
incusd_alive() {
    [ -n "$1" ] && [ -d "/proc/$1" ] || return 1
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# incusd_wait_gone PID SECONDS: 0 once PID has exited.
incusd_wait_gone() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        incusd_alive "$1" || return 0
        sleep 0.1
    done
    return 1
}

# incusd_is_ours PID LOGFILE: PID is the incusd daemon of $INCUS_DIR started
# with --logfile LOGFILE (not a fork helper: forkstart/forkexec/forkproxy run
# the same binary), checked through /proc so a stale pid is never trusted.
incusd_is_ours() {
    local pid="$1" exe args
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    [ "${exe% (deleted)}" = "$INCUSD" ] || return 1
    args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$args" in *"--logfile $2 "* | *"--logfile $2") ;; *) return 1 ;; esac
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "INCUS_DIR=$INCUS_DIR"
}

# incusd_find_pid LOGFILE: prints the pid of our daemon (see incusd_is_ours).
incusd_find_pid() {
    local d pid
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        if incusd_is_ours "$pid" "$1"; then echo "$pid"; return 0; fi
    done
    return 1
}

# incusd_wait_ready PID SECONDS LOGFILE: until `incus admin waitready`
# answers; 1 (with the log's tail) when PID exits first or time is up.
incusd_wait_ready() {
    local pid="$1" deadline=$((SECONDS + $2)) logfile="$3"
    while :; do
        if timeout 5 incus admin waitready --timeout 1 >/dev/null 2>&1; then return 0; fi
        if ! incusd_alive "$pid"; then
            tail -n 30 "$logfile" >&2 || true
            log "incusd exited during startup (log: $logfile)"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$logfile" >&2 || true
            log "incusd (pid $pid) not ready after ${2}s (log: $logfile)"
            return 1
        fi
        sleep 0.2
    done
}

# incusd_stop PID SECONDS: `incus admin shutdown` (incusd stops its running
# instances and exits; bounded twice: --timeout for incusd's own wait,
# timeout(1) in case the socket hangs), then SIGTERM, then SIGKILL.
incusd_stop() {
    local pid="$1" t="$2"
    timeout $((t + 5)) incus admin shutdown --timeout "$t" >/dev/null 2>&1 \
        || log "incus admin shutdown did not finish cleanly"
    incusd_wait_gone "$pid" 5 && return 0
    log "incusd still running: SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true   # in case it was stopped (SIGSTOP)
    incusd_wait_gone "$pid" 10 && return 0
    log "incusd still running: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    incusd_wait_gone "$pid" 5 && return 0
    log "cannot stop incusd $pid"
    return 1
}
