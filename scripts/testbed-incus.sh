#!/usr/bin/env bash
# The Incus part of the test bed: a real, private incusd for the Incus-backend
# integration tests. scripts/testbed.sh runs it last, after writing its own part
# of target/testbed.env; it can also run on its own.
#
# Idempotent: on a machine where everything is in place it only checks (well
# under a second). Must run as root. Every wait is bounded.
#
# What it provides:
#   * Debian packages: incus (from bookworm-backports: the suite is added with
#     the URI that /etc/apt/sources.list.d/debian.sources already uses) and
#     busybox-static
#   * incusd with INCUS_DIR=$LXGATE_TESTBED_DIR/incus, started detached (see
#     scripts/incus-test-ctl.sh, which also stops/restarts it and mints trust tokens)
#         -> LXGATE_TEST_INCUS_DIR, LXGATE_TEST_INCUS_SOCKET
#   * storage pool `default` (dir), root disk on the default profile, no network
#     devices, HTTPS API on 127.0.0.1:58443     -> LXGATE_TEST_INCUS_HTTPS
#   * a busybox image built here (no image server is reachable), imported as
#     alias `busybox`; its tarballs are kept for upload tests
#         -> LXGATE_TEST_INCUS_IMAGE_META, LXGATE_TEST_INCUS_IMAGE_ROOTFS,
#            LXGATE_TEST_INCUS_IMAGE_ALIAS
#   * on first setup (or when the image changed) a probe container is launched,
#     `echo ok` is exec'd in it, and it is deleted.
#
# These lines are (re)placed at the end of target/testbed.env; other lines are kept.
#
# Environment knobs: LXGATE_TESTBED_DIR (default /var/tmp/lxgate-testbed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TESTBED_DIR="${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}"
ENV_FILE="$ROOT/target/testbed.env"
CTL="$ROOT/scripts/incus-test-ctl.sh"

INCUSD=/usr/libexec/incus/incusd
export INCUS_DIR="$TESTBED_DIR/incus"
export INCUS_CONF="$TESTBED_DIR/incus-client"   # same as incus-test-ctl.sh
SOCKET="$INCUS_DIR/unix.socket"
HTTPS_ADDRESS=127.0.0.1:58443
POOL=default
IMAGE_ALIAS=busybox
IMAGE_DIR="$TESTBED_DIR/incus-image"
IMAGE_META="$IMAGE_DIR/meta.tar.xz"
IMAGE_ROOTFS="$IMAGE_DIR/rootfs.tar.xz"
PROBE=lxgate-testbed-probe
VERIFIED_MARKER="$INCUS_DIR/lxgate-testbed.verified"   # gone with the daemon's state

BACKPORTS_SOURCES=/etc/apt/sources.list.d/lxgate-bookworm-backports.sources
APPLETS=(sh ls cat echo sleep init hostname mkdir rm cp mv ps mount uname id env
    true false head tail wc grep sed dd seq yes printf test tr date kill)

T0=$(date +%s%N)
log() { printf '[testbed-incus] %s\n' "$*"; }
die() { printf '[testbed-incus] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, runs incusd)"

mkdir -p "$TESTBED_DIR" "$ROOT/target"

# One run at a time; incus-test-ctl.sh uses the same lock (and skips it when
# we call it, since we hold it). A separate file from testbed.sh's lock, which
# testbed.sh still holds while it runs us.
exec 8>"$TESTBED_DIR/incus.lock"
flock -w 120 8 || die "could not lock $TESTBED_DIR/incus.lock"
export LXGATE_INCUS_LOCK_HELD=1

# ---------------------------------------------------------------- packages ---
# shellcheck source=SCRIPTDIR/lib/apt.sh
source "$ROOT/scripts/lib/apt.sh"
apt_log="$TESTBED_DIR/apt-incus.log"

need_incus=0 need_busybox=0
[ -x "$INCUSD" ] && command -v incus >/dev/null || need_incus=1
is_installed busybox-static && [ -x /bin/busybox ] || need_busybox=1
for tool in curl jq xz; do command -v "$tool" >/dev/null || need_busybox=1; done
if [ "$need_incus$need_busybox" != 00 ]; then
    export DEBIAN_FRONTEND=noninteractive
    updated=0
    if ! backports_configured; then
        add_backports_source
        apt_update; updated=1
    elif ! backports_lists_present; then
        apt_update; updated=1
    fi
    install_incus() { apt_install -t bookworm-backports incus; }
    # The packages ship init scripts (incus, incus-user, lxcfs): a system incusd
    # on /var/lib/incus is not wanted. Where no policy-rc.d forbids service
    # starts already, one does for the length of the install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, scripts/testbed-incus.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    if [ "$need_incus" = 1 ]; then
        log "apt: installing incus from bookworm-backports (about 30 s)"
        if ! install_incus; then
            # Lists too old (the mirror moved on): refresh once and retry.
            [ "$updated" = 0 ] || die "apt-get install -t bookworm-backports incus failed"
            apt_update; updated=1
            install_incus || die "apt-get install -t bookworm-backports incus failed"
        fi
    fi
    if [ "$need_busybox" = 1 ]; then
        log "apt: installing busybox-static curl jq xz-utils"
        install_tools() {
            apt_install --no-install-recommends busybox-static curl jq xz-utils
        }
        if ! install_tools; then
            [ "$updated" = 0 ] || die "apt-get install busybox-static failed"
            apt_update; updated=1
            install_tools || die "apt-get install busybox-static failed"
        fi
    fi
    if grep -q 'scripts/testbed-incus.sh' /usr/sbin/policy-rc.d 2>/dev/null; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi
[ -x "$INCUSD" ] || die "$INCUSD missing after installing incus"
[ -x /bin/busybox ] || die "/bin/busybox missing after installing busybox-static"
[ "$need_incus$need_busybox" = 00 ] && log "packages: incus $(incus version 2>/dev/null | awk '/^Client/ {print $3}'), busybox-static present"

# ------------------------------------------------------------------ incusd ---
bash "$CTL" start || die "could not start incusd"

api() { # GET path -> body (exit 1 on HTTP error)
    curl -sS --fail --max-time 5 --unix-socket "$SOCKET" "http://incus$1"
}
api_status() { # GET path -> HTTP status only
    curl -sS -o /dev/null -w '%{http_code}' --max-time 5 --unix-socket "$SOCKET" "http://incus$1" || true
}
inc() { timeout 120 incus "$@"; }

# --------------------------------------------------------------- configure ---
case "$(api_status "/1.0/storage-pools/$POOL")" in
    200)
        driver="$(api "/1.0/storage-pools/$POOL" | jq -r .metadata.driver)"
        [ "$driver" = dir ] || die "storage pool $POOL exists with driver $driver (expected dir): remove $INCUS_DIR to start over"
        ;;
    404)
        log "incus: creating storage pool $POOL (dir)"
        inc storage create "$POOL" dir >/dev/null
        ;;
    *) die "cannot query storage pool $POOL" ;;
esac

root_dev="$(api /1.0/profiles/default | jq -c '.metadata.devices.root // empty')"
if [ -z "$root_dev" ]; then
    log "incus: adding root disk to the default profile"
    inc profile device add default root disk path=/ pool="$POOL" >/dev/null
fi

server="$(api /1.0)"
if [ "$(jq -r '.metadata.config["core.https_address"] // ""' <<<"$server")" != "$HTTPS_ADDRESS" ]; then
    log "incus: core.https_address $HTTPS_ADDRESS"
    inc config set core.https_address "$HTTPS_ADDRESS" \
        || die "cannot listen on $HTTPS_ADDRESS (port taken? ss -ltnp | grep ${HTTPS_ADDRESS##*:})"
fi

# ------------------------------------------------------------------- image ---
# Built deterministically (sorted, fixed owners and mtimes; creation_date is
# the busybox package's build date) so that rebuilding gives the same
# fingerprint. Rebuilt only when the inputs change.
busybox_version="$(dpkg-query -W -f='${Version}' busybox-static)"
image_stamp="busybox-static=$busybox_version applets=${APPLETS[*]} format=2"
if [ ! -s "$IMAGE_META" ] || [ ! -s "$IMAGE_ROOTFS" ] \
    || [ "$(cat "$IMAGE_DIR/stamp" 2>/dev/null)" != "$image_stamp" ]; then
    log "image: building $IMAGE_DIR (busybox-static $busybox_version)"
    build="$IMAGE_DIR/build.$$"
    rm -rf "$build"
    mkdir -p "$build/rootfs" "$build/meta"
    trap 'rm -rf "$build"' EXIT
    r="$build/rootfs"
    mkdir -p "$r/bin" "$r/sbin" "$r/etc" "$r/proc" "$r/sys" "$r/dev" "$r/tmp" "$r/root" "$r/run" "$r/var"
    chmod 1777 "$r/tmp"
    chmod 700 "$r/root"
    cp /bin/busybox "$r/bin/busybox"
    chmod 755 "$r/bin/busybox"
    for a in "${APPLETS[@]}"; do ln -s busybox "$r/bin/$a"; done
    ln -s ../bin/busybox "$r/sbin/init"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    printf 'lxgate-busybox\n' >"$r/etc/hostname"
    # The package's own timestamp: stable across rebuilds of the same version.
    created="$(stat -c %Y /bin/busybox)"
    cat >"$build/meta/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $created
properties:
  os: busybox
  release: "$busybox_version"
  architecture: x86_64
  description: busybox $busybox_version (lxgate test image)
  variant: default
EOF
    tar_det() { # out dir [names...]
        local out="$1" dir="$2"; shift 2
        tar --sort=name --mtime=@"$created" --owner=0 --group=0 --numeric-owner \
            --format=gnu -C "$dir" -cf - "$@" | xz -T1 -6 -c >"$out"
    }
    tar_det "$build/meta.tar.xz" "$build/meta" metadata.yaml
    tar_det "$build/rootfs.tar.xz" "$build/rootfs" .
    mv -f "$build/meta.tar.xz" "$IMAGE_META"
    mv -f "$build/rootfs.tar.xz" "$IMAGE_ROOTFS"
    printf '%s' "$image_stamp" >"$IMAGE_DIR/stamp"
    rm -rf "$build"
    trap - EXIT
fi
# Incus's fingerprint of a split image: sha256 over metadata then rootfs tarball.
fingerprint="$(cat "$IMAGE_META" "$IMAGE_ROOTFS" | sha256sum | cut -d' ' -f1)"

alias_target="$(api "/1.0/images/aliases/$IMAGE_ALIAS" 2>/dev/null | jq -r '.metadata.target // empty' || true)"
if [ "$alias_target" != "$fingerprint" ]; then
    if [ -n "$alias_target" ]; then
        log "image: alias $IMAGE_ALIAS points at ${alias_target:0:12}, moving it to ${fingerprint:0:12}"
        inc image alias delete "$IMAGE_ALIAS" >/dev/null
    fi
    if [ "$(api_status "/1.0/images/$fingerprint")" = 200 ]; then
        inc image alias create "$IMAGE_ALIAS" "$fingerprint" >/dev/null
    else
        log "image: importing as $IMAGE_ALIAS (${fingerprint:0:12})"
        inc image import "$IMAGE_META" "$IMAGE_ROOTFS" --alias "$IMAGE_ALIAS" >/dev/null
    fi
    [ "$(api "/1.0/images/aliases/$IMAGE_ALIAS" | jq -r .metadata.target)" = "$fingerprint" ] \
        || die "image alias $IMAGE_ALIAS does not point at $fingerprint after import"
fi

# ------------------------------------------------------------------ verify ---
# Launch + exec + delete once per daemon state and image (a few seconds); the
# warm path skips it.
if [ "$(cat "$VERIFIED_MARKER" 2>/dev/null)" != "$fingerprint" ]; then
    log "verify: launching $PROBE"
    [ "$(api_status "/1.0/instances/$PROBE")" != 200 ] || inc delete --force "$PROBE" >/dev/null
    # (It prints a notice that the instance has no network: intended here.)
    out="$(inc launch "$IMAGE_ALIAS" "$PROBE" 2>&1)" \
        || die "incus launch $IMAGE_ALIAS failed: $out (log: $INCUS_DIR/incusd.log)"
    out="$(timeout 30 incus exec "$PROBE" -- echo ok 2>&1 || true)"
    inc delete --force "$PROBE" >/dev/null || die "incus delete --force $PROBE failed"
    [ "$out" = ok ] || die "incus exec $PROBE -- echo ok printed: $out"
    printf '%s' "$fingerprint" >"$VERIFIED_MARKER"
    log "verify: launch / exec / delete ok"
fi

# Both APIs as the tests will reach them.
api /1.0/instances >/dev/null || die "GET /1.0/instances on $SOCKET failed"
curl -ksS --fail --max-time 5 -o /dev/null "https://$HTTPS_ADDRESS/1.0" \
    || die "GET https://$HTTPS_ADDRESS/1.0 failed"

# ------------------------------------------------------------ testbed.env ---
# testbed.sh rewrites the file from scratch and then runs us: drop our lines
# from an earlier run (when run on our own) and append the current ones.
tmp="$ENV_FILE.tmp.$$"
{
    if [ -f "$ENV_FILE" ]; then grep -v '^export LXGATE_TEST_INCUS_' "$ENV_FILE" || true; fi
    printf 'export %s=%q\n' \
        LXGATE_TEST_INCUS_DIR "$INCUS_DIR" \
        LXGATE_TEST_INCUS_SOCKET "$SOCKET" \
        LXGATE_TEST_INCUS_HTTPS "https://$HTTPS_ADDRESS" \
        LXGATE_TEST_INCUS_IMAGE_META "$IMAGE_META" \
        LXGATE_TEST_INCUS_IMAGE_ROOTFS "$IMAGE_ROOTFS" \
        LXGATE_TEST_INCUS_IMAGE_ALIAS "$IMAGE_ALIAS"
} >"$tmp"
mv -f "$tmp" "$ENV_FILE"

T1=$(date +%s%N)
log "incusd ready: $SOCKET, https://$HTTPS_ADDRESS, image $IMAGE_ALIAS ($(( (T1 - T0) / 1000000 )) ms)"
