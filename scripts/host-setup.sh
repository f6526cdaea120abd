#!/usr/bin/env bash
# Prepares this host for lxgate's default backend (embedded: lxgate drives LXC
# and QEMU itself). `make run` runs it before starting lxgate, and
# scripts/testbed-embedded.sh runs it for the tests. Usage:
#
#   scripts/host-setup.sh [extra-debian-package...]
#
# What it provides:
#   * Debian packages: lxc, qemu-system-x86 and qemu-utils 10.x (from
#     bookworm-backports on Debian 12, whose own QEMU is 7.2), dnsmasq-base
#     (DHCP on managed bridges), iproute2 (bridges, veths, taps), uidmap, acl
#     (setfacl, for scripts/data-dir-setup.sh: `make run` runs it next), curl
#     and jq (the README's quick start), apparmor where the kernel has
#     AppArmor (LXC loads the profile it generates for each container with
#     its apparmor_parser), and the extra packages named on the command
#     line. Without recommends (lxc's pull in apparmor everywhere, PAM
#     changes, debootstrap...); no service is started by the install.
#   * a subordinate uid and gid range for root in /etc/subuid and /etc/subgid
#     (root:1000000:1000000000, the range Debian's incus package adds) unless
#     root has one already: unprivileged containers map their ids into it.
#   * the system user lxgate-qemu (no home, no login shell): QEMU switches to it
#     once it has opened a VM's disks, sockets and taps (see qemu.rs).
#
# Idempotent: where everything is in place it only checks (a fraction of a
# second). Root on Debian only; elsewhere it says what to install and exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

QEMU_USER=lxgate-qemu
SUBID_RANGE="1000000:1000000000"
BACKPORTS_SOURCES=/etc/apt/sources.list.d/lxgate-bookworm-backports.sources
LOCK=/run/lxgate-host-setup.lock
apt_log=/var/log/lxgate-host-setup-apt.log

log() { printf '[host-setup] %s\n' "$*"; }
die() { printf '[host-setup] ERROR: %s\n' "$*" >&2; exit 1; }
what_it_needs="LXC, QEMU >= 10 (qemu-system-x86_64, qemu-img), dnsmasq, iproute2, a subordinate id range for root (/etc/subuid, /etc/subgid) and a user $QEMU_USER"

[ "$(id -u)" -eq 0 ] \
    || die "must run as root (installs packages, edits /etc/subuid); the embedded backend needs $what_it_needs (SKIP_HOST_SETUP=1 make run skips this step)"
os_id="" codename=""
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    os_id="$(. /etc/os-release && printf '%s' "${ID:-}")"
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
fi
{ [ "$os_id" = debian ] && command -v apt-get >/dev/null; } \
    || die "this script prepares Debian hosts (this is ${os_id:-an unknown system}); install $what_it_needs with this system's tools, then: SKIP_HOST_SETUP=1 make run"

# One run at a time (make run and make test may overlap). Descriptor 6: the
# test bed scripts hold 7-9 while they call us.
exec 6>"$LOCK"
flock -w 300 6 || die "could not lock $LOCK"

TEMP_POLICY_RC=0
cleanup() {
    local rc=$?
    if [ "$TEMP_POLICY_RC" = 1 ] && grep -q 'scripts/host-setup.sh' /usr/sbin/policy-rc.d 2>/dev/null; then
        rm -f /usr/sbin/policy-rc.d
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- packages ---
# shellcheck source=SCRIPTDIR/lib/apt.sh
source "$ROOT/scripts/lib/apt.sh"
# QEMU 10 (`-run-with user=` needs 9; the test bed pins what it checked).
qemu_ok() {
    is_installed "$1" && dpkg --compare-versions "$(pkg_version "$1")" ge 1:10~
}
need_main=() need_qemu=()
{ is_installed lxc && command -v lxc-start >/dev/null; } || need_main+=(lxc)
{ is_installed iproute2 && command -v ip >/dev/null; } || need_main+=(iproute2)
{ is_installed dnsmasq-base && command -v dnsmasq >/dev/null; } || need_main+=(dnsmasq-base)
{ is_installed uidmap && command -v newuidmap >/dev/null; } || need_main+=(uidmap)
{ is_installed acl && command -v setfacl >/dev/null; } || need_main+=(acl)
{ is_installed curl && command -v curl >/dev/null; } || need_main+=(curl)
{ is_installed jq && command -v jq >/dev/null; } || need_main+=(jq)
# With AppArmor in the kernel LXC confines each container with a profile it
# generates and loads through apparmor_parser; without the parser the start
# fails. A kernel without it (the test bed's) needs nothing.
if [ -d /sys/kernel/security/apparmor ]; then
    { is_installed apparmor && command -v apparmor_parser >/dev/null; } || need_main+=(apparmor)
fi
for p in "$@"; do
    is_installed "$p" || need_main+=("$p")
done
{ qemu_ok qemu-system-x86 && command -v qemu-system-x86_64 >/dev/null; } || need_qemu+=(qemu-system-x86)
{ qemu_ok qemu-utils && command -v qemu-img >/dev/null; } || need_qemu+=(qemu-utils)

if [ "$((${#need_main[@]} + ${#need_qemu[@]}))" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Debian 12 has QEMU 7.2; 10.x is in its backports suite. Later releases
    # carry 10.x themselves.
    qemu_from=()
    if [ "${#need_qemu[@]}" -gt 0 ] && [ "$codename" = bookworm ]; then
        qemu_from=(-t bookworm-backports)
        if ! backports_configured; then
            add_backports_source
            apt_update
        elif ! backports_lists_present; then
            apt_update
        fi
    fi
    if [ "$APT_UPDATED" = 0 ] && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt_update
    fi
    # lxc ships init scripts (lxc, lxc-net: a bridge + dnsmasq) that must not
    # start here. Where no policy-rc.d forbids service starts already, one
    # does for the length of the install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, scripts/host-setup.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        TEMP_POLICY_RC=1
    fi
    if [ "${#need_main[@]}" -gt 0 ]; then
        log "apt: installing ${need_main[*]}"
        apt_install_retry "${need_main[*]}" --no-install-recommends "${need_main[@]}"
    fi
    if [ "${#need_qemu[@]}" -gt 0 ]; then
        log "apt: installing ${need_qemu[*]} ${qemu_from[*]}"
        apt_install_retry "${need_qemu[*]} ${qemu_from[*]}" \
            --no-install-recommends "${qemu_from[@]}" "${need_qemu[@]}"
    fi
    if [ "$TEMP_POLICY_RC" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        TEMP_POLICY_RC=0
    fi
    qemu_ok qemu-system-x86 || die "QEMU $(pkg_version qemu-system-x86) is installed; lxgate needs 10.x"
fi
for tool in lxc-start lxc-attach lxc-stop lxc-destroy lxc-usernsexec qemu-system-x86_64 qemu-img ip dnsmasq setfacl; do
    command -v "$tool" >/dev/null || die "$tool not found after installing packages"
done

# ----------------------------------------------------- subordinate id ranges ---
# Any range root already has is kept (Debian's incus package may have added
# the same one); a file without one gets ours, on a line of its own.
for f in /etc/subuid /etc/subgid; do
    if [ -f "$f" ] && grep -qE '^(root|0):[0-9]+:[0-9]+[[:space:]]*$' "$f"; then
        continue
    fi
    if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then
        echo >>"$f"
    fi
    echo "root:$SUBID_RANGE" >>"$f"
    log "added root:$SUBID_RANGE to $f"
done

# ------------------------------------------------------------ the QEMU user ---
if ! getent passwd "$QEMU_USER" >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "lxgate QEMU (unprivileged)" "$QEMU_USER"
    log "created the system user $QEMU_USER"
fi

log "ready: lxc $(pkg_version lxc), qemu $(pkg_version qemu-system-x86), dnsmasq-base, iproute2, uidmap, acl; root's subordinate ids; user $QEMU_USER"
