#!/usr/bin/env bash
# The Incus-cluster part of the test bed: two incusd on this machine forming a
# real two-member cluster (TESTBED.md, "A real Incus cluster on one machine"),
# for the cluster tests (tests/api/incus_cluster.rs). scripts/testbed.sh runs
# it after testbed-incus.sh (which installs incus and builds the busybox
# image this reuses); it can also run on its own.
#
# Idempotent: when the cluster is up it only checks (about a second). Must
# run as root. Every wait is bounded.
#
# What it provides:
#   * member m1: INCUS_DIR=$LXGATE_TESTBED_DIR/cluster/m1, API and cluster
#     traffic on 127.0.0.2:8443 only; bootstrapped with a `dir` pool `local`
#     and the default profile's root disk on it. It holds the cluster database.
#   * member m2: INCUS_DIR=.../cluster/m2 on 127.0.0.3:8443, joined with a token.
#         -> LXGATE_TEST_CLUSTER_URLS (comma list, m1 first),
#            LXGATE_TEST_CLUSTER_MEMBERS (m1,m2), LXGATE_TEST_CLUSTER_DIRS,
#            LXGATE_TEST_CLUSTER_POOL (local)
#   * the busybox image (LXGATE_TEST_INCUS_IMAGE_META/ROOTFS) as alias busybox
#   * a client identity for lxgate (ECDSA P-384, made here) in the cluster's
#     trust store, and the cluster certificate (every member serves it) to pin
#         -> LXGATE_TEST_CLUSTER_CLIENT_CERT, LXGATE_TEST_CLUSTER_CLIENT_KEY,
#            LXGATE_TEST_CLUSTER_SERVER_CERT
#   * once per cluster: a container launched on m2 with --target, exec'd in,
#     and deleted.
# scripts/cluster-test-ctl.sh starts and stops single members (the tests'
# failover case).
#
# These lines are (re)placed at the end of target/testbed.env; other lines are kept.
#
# Environment knobs: LXGATE_TESTBED_DIR (default /var/tmp/lxgate-testbed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TESTBED_DIR="${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}"
ENV_FILE="$ROOT/target/testbed.env"
CTL="$ROOT/scripts/cluster-test-ctl.sh"
CLUSTER_DIR="$TESTBED_DIR/cluster"
CLIENT_DIR="$CLUSTER_DIR/client"
M1_ADDRESS=127.0.0.2:8443
M2_ADDRESS=127.0.0.3:8443
POOL=local
IMAGE_ALIAS=busybox
IMAGE_META="$TESTBED_DIR/incus-image/meta.tar.xz"
IMAGE_ROOTFS="$TESTBED_DIR/incus-image/rootfs.tar.xz"
TRUST_NAME=lxgate-test-cluster
PROBE=lxgate-cluster-probe
JOINED_MARKER="$CLUSTER_DIR/m2/lxgate-testbed.joined"      # gone with m2's state
VERIFIED_MARKER="$CLUSTER_DIR/m1/lxgate-testbed.verified"  # gone with m1's state

unset INCUS_SOCKET INCUS_REMOTE
export INCUS_CONF="$CLUSTER_DIR/incus-client"   # same as cluster-test-ctl.sh

T0=$(date +%s%N)
log() { printf '[testbed-cluster] %s\n' "$*"; }
die() { printf '[testbed-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (runs incusd)"
[ -x /usr/libexec/incus/incusd ] && command -v incus >/dev/null \
    || die "incus is not installed: run scripts/testbed-incus.sh first"
[ -s "$IMAGE_META" ] && [ -s "$IMAGE_ROOTFS" ] \
    || die "no busybox image in $TESTBED_DIR/incus-image: run scripts/testbed-incus.sh first"
for tool in curl jq openssl; do command -v "$tool" >/dev/null || die "$tool is missing"; done

mkdir -p "$CLUSTER_DIR" "$ROOT/target"
exec 7>"$TESTBED_DIR/cluster.lock"
flock -w 180 7 || die "could not lock $TESTBED_DIR/cluster.lock"
export LXGATE_CLUSTER_LOCK_HELD=1

# on MEMBER CMD...: runs the incus CLI against MEMBER's unix socket, bounded.
on() {
    local m="$1"; shift
    INCUS_DIR="$CLUSTER_DIR/$m" timeout 120 incus "$@"
}
api() { # MEMBER PATH -> body (exit 1 on HTTP error)
    curl -sS --fail --max-time 10 --unix-socket "$CLUSTER_DIR/$1/unix.socket" "http://incus$2"
}
api_status() { # MEMBER PATH -> HTTP status only
    curl -sS -o /dev/null -w '%{http_code}' --max-time 10 \
        --unix-socket "$CLUSTER_DIR/$1/unix.socket" "http://incus$2" || true
}
clustered() { [ "$(api "$1" /1.0/cluster | jq -r .metadata.enabled)" = true ]; }
member_listed() { [ "$(api_status m1 "/1.0/cluster/members/$1")" = 200 ]; }

# ----------------------------------------------------------------------- m1 ---
bash "$CTL" start m1 || die "could not start m1"
if ! clustered m1; then
    log "m1: bootstrapping the cluster on $M1_ADDRESS"
    on m1 admin init --preseed <<EOF || die "m1: incus admin init --preseed failed (log: $CLUSTER_DIR/m1/incusd.log)"
config:
  core.https_address: $M1_ADDRESS
  cluster.https_address: $M1_ADDRESS
storage_pools:
- name: $POOL
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: $POOL
      type: disk
cluster:
  server_name: m1
  enabled: true
EOF
    clustered m1 || die "m1: clustering is not enabled after the bootstrap"
fi

# ----------------------------------------------------------------------- m2 ---
if [ -f "$JOINED_MARKER" ] && member_listed m2; then
    bash "$CTL" start m2 || die "could not start m2 (to start over: cluster-test-ctl.sh stop all; rm -rf $CLUSTER_DIR)"
else
    # Not joined, or half joined: m2 starts from an empty directory.
    if member_listed m2; then
        log "m2: removing a stale member record from the cluster"
        on m1 cluster remove m2 --force --yes >/dev/null || die "m1: incus cluster remove m2 failed"
    fi
    bash "$CTL" stop m2 >/dev/null 2>&1 || true
    rm -rf "${CLUSTER_DIR:?}/m2"
    bash "$CTL" start m2 || die "could not start m2"
    out="$(on m1 cluster add m2 2>&1)" || die "m1: incus cluster add m2 failed: $out"
    # Output: "Member m2 join token:\n<token>": keep the token line.
    token="$(printf '%s\n' "$out" | grep -E '^[A-Za-z0-9+/=_-]{40,}$' | tail -n 1 || true)"
    [ -n "$token" ] || die "no token in the output of incus cluster add: $out"
    log "m2: joining the cluster on $M2_ADDRESS"
    on m2 admin init --preseed <<EOF || die "m2: joining failed (log: $CLUSTER_DIR/m2/incusd.log)"
cluster:
  enabled: true
  server_name: m2
  server_address: $M2_ADDRESS
  cluster_address: $M1_ADDRESS
  cluster_token: $token
  member_config:
  - entity: storage-pool
    name: $POOL
    key: source
    value: ""
EOF
    touch "$JOINED_MARKER"
fi

# Both members online, as m1 sees them (heartbeats can lag a fresh start).
for _ in $(seq 1 60); do
    statuses="$(api m1 '/1.0/cluster/members?recursion=1' | jq -r '[.metadata[] | .server_name + "=" + .status] | sort | join(",")')"
    [ "$statuses" = "m1=Online,m2=Online" ] && break
    sleep 0.5
done
[ "$statuses" = "m1=Online,m2=Online" ] || die "cluster members are not both online: $statuses"

# -------------------------------------------------------------------- image ---
fingerprint="$(cat "$IMAGE_META" "$IMAGE_ROOTFS" | sha256sum | cut -d' ' -f1)"
alias_target="$(api m1 "/1.0/images/aliases/$IMAGE_ALIAS" 2>/dev/null | jq -r '.metadata.target // empty' || true)"
if [ "$alias_target" != "$fingerprint" ]; then
    [ -z "$alias_target" ] || on m1 image alias delete "$IMAGE_ALIAS" >/dev/null
    if [ "$(api_status m1 "/1.0/images/$fingerprint")" = 200 ]; then
        on m1 image alias create "$IMAGE_ALIAS" "$fingerprint" >/dev/null
    else
        log "image: importing as $IMAGE_ALIAS (${fingerprint:0:12})"
        on m1 image import "$IMAGE_META" "$IMAGE_ROOTFS" --alias "$IMAGE_ALIAS" >/dev/null
    fi
fi

# ------------------------------------------------------------ client trust ---
install -d -m 700 "$CLIENT_DIR"
if [ ! -s "$CLIENT_DIR/client.crt" ] || [ ! -s "$CLIENT_DIR/client.key" ]; then
    log "identity: making lxgate's client certificate (ECDSA P-384)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 3650 \
        -subj "/CN=$TRUST_NAME" -keyout "$CLIENT_DIR/client.key" -out "$CLIENT_DIR/client.crt" \
        2>/dev/null || die "openssl could not make a client certificate"
    chmod 600 "$CLIENT_DIR/client.key"
fi
client_fp="$(openssl x509 -in "$CLIENT_DIR/client.crt" -outform DER | sha256sum | cut -d' ' -f1)"
if [ "$(api_status m1 "/1.0/certificates/$client_fp")" != 200 ]; then
    log "identity: trusting ${client_fp:0:12} in the cluster"
    on m1 config trust add-certificate "$CLIENT_DIR/client.crt" --name "$TRUST_NAME" >/dev/null \
        || die "incus config trust add-certificate failed"
fi
# Every member serves the cluster certificate: the one certificate to pin.
cp -f "$CLUSTER_DIR/m1/cluster.crt" "$CLIENT_DIR/server.crt"

# Each member's HTTPS API, as lxgate reaches it, knows the identity.
for address in "$M1_ADDRESS" "$M2_ADDRESS"; do
    auth="$(curl -ksS --fail --max-time 10 --cert "$CLIENT_DIR/client.crt" --key "$CLIENT_DIR/client.key" \
        "https://$address/1.0" | jq -r .metadata.auth)" || die "GET https://$address/1.0 failed"
    [ "$auth" = trusted ] || die "https://$address does not trust lxgate's test identity (auth: $auth)"
done

# ------------------------------------------------------------------- verify ---
if [ "$(cat "$VERIFIED_MARKER" 2>/dev/null)" != "$fingerprint" ]; then
    log "verify: launching $PROBE on m2"
    [ "$(api_status m1 "/1.0/instances/$PROBE")" != 200 ] || on m1 delete --force "$PROBE" >/dev/null
    out="$(on m1 launch "$IMAGE_ALIAS" "$PROBE" --target m2 2>&1)" \
        || die "incus launch --target m2 failed: $out"
    location="$(api m1 "/1.0/instances/$PROBE" | jq -r .metadata.location)"
    out="$(INCUS_DIR="$CLUSTER_DIR/m1" timeout 30 incus exec "$PROBE" -- echo ok 2>&1 || true)"
    on m1 delete --force "$PROBE" >/dev/null || die "incus delete --force $PROBE failed"
    [ "$location" = m2 ] || die "$PROBE landed on $location, not m2"
    [ "$out" = ok ] || die "incus exec $PROBE -- echo ok printed: $out"
    printf '%s' "$fingerprint" >"$VERIFIED_MARKER"
    log "verify: launch on m2 / exec / delete ok"
fi

# -------------------------------------------------------------- testbed.env ---
tmp="$ENV_FILE.tmp.$$"
{
    if [ -f "$ENV_FILE" ]; then grep -v '^export LXGATE_TEST_CLUSTER_' "$ENV_FILE" || true; fi
    printf 'export %s=%q\n' \
        LXGATE_TEST_CLUSTER_URLS "https://$M1_ADDRESS,https://$M2_ADDRESS" \
        LXGATE_TEST_CLUSTER_MEMBERS "m1,m2" \
        LXGATE_TEST_CLUSTER_DIRS "$CLUSTER_DIR/m1,$CLUSTER_DIR/m2" \
        LXGATE_TEST_CLUSTER_POOL "$POOL" \
        LXGATE_TEST_CLUSTER_CLIENT_CERT "$CLIENT_DIR/client.crt" \
        LXGATE_TEST_CLUSTER_CLIENT_KEY "$CLIENT_DIR/client.key" \
        LXGATE_TEST_CLUSTER_SERVER_CERT "$CLIENT_DIR/server.crt"
} >"$tmp"
mv -f "$tmp" "$ENV_FILE"

T1=$(date +%s%N)
log "cluster ready: m1 https://$M1_ADDRESS, m2 https://$M2_ADDRESS ($(( (T1 - T0) / 1000000 )) ms)"
