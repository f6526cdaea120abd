#!/usr/bin/env bash
# Runs the README's quick start ("First container on the embedded backend")
# verbatim against a fresh clone, with the clone's own `.env` made the way
# `make run` makes it (the example's relative DATA_DIR=./data included):
# the shell block is read out of the clone's README.md, so what is tested is
# the README's text, not a copy of it. `make test` runs it.
#
# What differs from a user's `make run`: lxgate is the binary already built
# (LXGATE_BIN, default target/debug/lxgate after an incremental
# `cargo build`) started in the clone with the clone's .env, instead of a
# second, cold `cargo run --release` build. The host preparation `make run`
# does (scripts/host-setup.sh, then scripts/data-dir-setup.sh) runs as it
# would. The clone sits in a directory of mode 0700, as a checkout under /root
# does: the containers' root (uid 1000000) must be let through it by an ACL
# (data-dir-setup.sh), never a chmod.
#
# The clone is of the committed HEAD: commit README changes before checking
# them. Needs root and the test bed's images (`make image` uses them), port
# 8000 free on 127.0.0.1 (the README's address). Every wait is bounded; lxgate,
# the container and the clone are removed even when a step fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECTION='## First container on the embedded backend'
BASE=http://127.0.0.1:8000

log() { printf '[check-quickstart] %s\n' "$*"; }
die() { printf '[check-quickstart] FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (LXC containers)"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    log "note: uncommitted changes are not in the clone (it is of HEAD $(git rev-parse --short HEAD))"
fi

if [ -n "${LXGATE_BIN:-}" ]; then
    BIN="$LXGATE_BIN"
else
    cargo build --locked --quiet --bin lxgate
    BIN="$ROOT/target/debug/lxgate"
fi
[ -x "$BIN" ] || die "no lxgate binary at $BIN"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

if (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null; then
    die "something already listens on 127.0.0.1:8000 (the README's address); stop it first"
fi

WORK="$(mktemp -d /var/tmp/lxgate-quickstart.XXXXXX)"
# Closed like /root (mktemp makes it 0700 already; said, not assumed).
chmod 0700 "$WORK"
CLONE="$WORK/lxgate"
LXGATE_PID=""
cleanup() {
    local rc=$? ct
    if [ -n "$LXGATE_PID" ] && kill -0 "$LXGATE_PID" 2>/dev/null; then
        kill "$LXGATE_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$LXGATE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$LXGATE_PID" 2>/dev/null || true
    fi
    if [ -d "$CLONE/data/lxc" ]; then
        for ct in "$CLONE"/data/lxc/*/; do
            [ -d "$ct" ] || continue
            ct="$(basename "$ct")"
            timeout 20 lxc-stop -P "$CLONE/data/lxc" -n "$ct" -k >/dev/null 2>&1 || true
            timeout 20 lxc-destroy -P "$CLONE/data/lxc" -n "$ct" >/dev/null 2>&1 || true
        done
    fi
    if [ "$rc" != 0 ] && [ -f "$WORK/lxgate.log" ]; then
        echo "--- lxgate's log (last 30 lines)" >&2
        tail -n 30 "$WORK/lxgate.log" >&2 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T0=$(date +%s%N)
git clone --quiet --no-hardlinks "$ROOT" "$CLONE"
cd "$CLONE"
log "fresh clone of $(git rev-parse --short HEAD) in $CLONE"

# The block: the first ```sh fence after the section's heading.
BLOCK="$(awk -v h="$SECTION" '
    $0 == h { in_section = 1; next }
    in_section && /^## / { exit }
    in_section && !in_block && /^```sh[[:space:]]*$/ { in_block = 1; next }
    in_block && /^```[[:space:]]*$/ { exit }
    in_block { print }
' README.md)"
[ -n "$BLOCK" ] || die "no \`\`\`sh block under \"$SECTION\" in README.md"

# `make run`, minus its cargo build: .env, the host, DATA_DIR's path, then lxgate.
make --no-print-directory .env >/dev/null
bash scripts/host-setup.sh >/dev/null
bash scripts/data-dir-setup.sh >"$WORK/data-dir-setup.out"
sed 's/^/    | /' "$WORK/data-dir-setup.out"
# What it changed: search for the mapped root on the closed directory by an
# ACL, its mode bits untouched (others still get nothing); a second run
# changes nothing.
uid="$(awk -F: '($1 == "root" || $1 == "0") && $2 >= 65536 && $3 >= 65536 { print $2; exit }' /etc/subuid)"
getfacl -cp "$WORK" 2>/dev/null | grep -qx "user:$uid:--x" \
    || die "no ACL user:$uid:--x on $WORK after scripts/data-dir-setup.sh"
[ "$(( 0$(stat -c %a "$WORK") & 07 ))" = 0 ] || die "$WORK was opened to others ($(stat -c %A "$WORK")): a chmod, not an ACL"
bash scripts/data-dir-setup.sh | grep -q 'reachable by the containers' \
    || die "a second scripts/data-dir-setup.sh run did not find the path reachable as it was"
# Only the clone's .env configures it (no variable of this shell leaks in).
env -i PATH="$PATH" HOME="$HOME" "$BIN" serve >"$WORK/lxgate.log" 2>&1 &
LXGATE_PID=$!
up=0
for _ in $(seq 1 300); do
    kill -0 "$LXGATE_PID" 2>/dev/null || die "lxgate exited at startup"
    if curl -fsS --max-time 2 "$BASE/health" >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
done
[ "$up" = 1 ] || die "lxgate did not answer on $BASE/health within 30 s"
log "lxgate serves on $BASE (DATA_DIR=./data of the clone's .env)"

OUT="$WORK/quickstart.out"
if ! timeout 300 bash -euo pipefail -c "$BLOCK" >"$OUT" 2>"$WORK/quickstart.err"; then
    cat "$OUT" "$WORK/quickstart.err" >&2
    die "the README's block failed"
fi

# What `uname -a; ps` prints inside the container: this kernel's release,
# and busybox's ps with init as PID 1.
release="$(uname -r)"
grep -q "^Linux .* $release " "$OUT" || { cat "$OUT" >&2; die "no \`uname -a\` line (Linux ... $release ...) in the output"; }
grep -qE '^[[:space:]]*PID[[:space:]]+USER' "$OUT" || { cat "$OUT" >&2; die "no \`ps\` header in the output"; }
grep -qE '^[[:space:]]*1[[:space:]]+root[[:space:]].*init' "$OUT" || { cat "$OUT" >&2; die "no init as PID 1 in the \`ps\` output"; }
[ -d "$CLONE/data/lxc/default_c1" ] || die "the container is not under the clone's data/lxc"

sed 's/^/    | /' "$OUT"
log "ok: the README's quick start launched c1 and ran uname/ps in it ($(( ($(date +%s%N) - T0) / 1000000 )) ms)"
