#!/usr/bin/env bash
# The embedded-driver part of the test bed: LXC and QEMU on this machine, and the
# two tiny images the embedded drivers' integration tests boot. scripts/testbed.sh
# runs it last, after testbed-incus.sh; it can also run on its own.
#
# Idempotent: on a machine where everything is in place it only checks (a fraction
# of a second). Must run as root. Every wait is bounded, and the probe container
# and probe VM are removed even when a step fails.
#
# What it provides:
#   * through scripts/host-setup.sh (what `make run` prepares): lxc (bookworm),
#     qemu-system-x86 and qemu-utils (from bookworm-backports), iproute2 and
#     dnsmasq-base (bridges, veths, DHCP and network namespaces for the NIC
#     test), uidmap, root's subordinate id range, the lxgate-qemu user; and
#     for the images here busybox-static, cpio, xz-utils    -> LXGATE_TEST_LXC=1
#   * under $LXGATE_TESTBED_DIR/embedded-image/ (built here, no image server):
#     - a container image in Incus's split format: meta.tar.xz (metadata.yaml,
#       empty templates/) + rootfs.tar.xz (busybox-static, applet symlinks,
#       /sbin/init -> ../bin/busybox, an inittab with a shell on /dev/console)
#           -> LXGATE_TEST_EMBEDDED_IMAGE_META, LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS
#     - a kernel+initrd VM: vm-meta.tar.xz (metadata.yaml, with a `boot:` map
#       naming the two files beside it and the kernel command line), vm-vmlinuz
#       (Debian's linux-image-<abi>-amd64, the one linux-image-amd64 depends on),
#       vm-initrd.gz (busybox; prints the marker on ttyS0, then a root shell on
#       ttyS0; the ACPI power button powers it off)
#           -> LXGATE_TEST_VM_META, LXGATE_TEST_VM_KERNEL, LXGATE_TEST_VM_INITRD,
#              LXGATE_TEST_VM_MARKER
#     - vm-disk.qcow2: an empty 64 MiB qcow2 (shared: tests must copy it or use
#       it as a backing file, never write to it)            -> LXGATE_TEST_VM_DISK
#   * when an image was (re)built: the VM is booted under TCG, `echo` is typed on
#     its serial console and answered, and it is powered down over QMP; a
#     container is started from the rootfs with a private lxcpath, attached to,
#     stopped and destroyed.
#
# The guest console (serial, also what `console=ttyS0` gives the kernel):
#   "LXGATE-VM-BOOTED\r\n" once per boot, then the prompt "lxgate-vm:/# ", which
#   busybox's line editor follows with "\e[6n" (a cursor-position query; nothing
#   needs to answer it). Typed input is echoed; lines end in "\r\n". So after
#   typing `echo hi-N`, the answer is the line "\r\nhi-N\r\n" (the echo of the
#   command line holds "hi-N" too). `poweroff` in the shell and QMP
#   `system_powerdown` (ACPI power button -> busybox acpid) both power it off and
#   QEMU exits (unless run with -no-shutdown). No network, no disk needed; the
#   virtio-blk and virtio-net modules are loaded, so an attached virtio disk
#   shows as /dev/vda and a virtio NIC as eth0 (busybox `ip` and `ping` are in).
#
# The kernel is downloaded once and kept in embedded-image/kernel/ (delete that
# folder to pick up a newer one). These env lines are (re)placed at the end of
# target/testbed.env; other lines are kept.
#
# Environment knobs: LXGATE_TESTBED_DIR (default /var/tmp/lxgate-testbed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TESTBED_DIR="${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}"
ENV_FILE="$ROOT/target/testbed.env"

IMAGE_DIR="$TESTBED_DIR/embedded-image"
IMAGE_META="$IMAGE_DIR/meta.tar.xz"
IMAGE_ROOTFS="$IMAGE_DIR/rootfs.tar.xz"
VM_META="$IMAGE_DIR/vm-meta.tar.xz"
VM_KERNEL="$IMAGE_DIR/vm-vmlinuz"
VM_INITRD="$IMAGE_DIR/vm-initrd.gz"
VM_DISK="$IMAGE_DIR/vm-disk.qcow2"
VM_CMDLINE="console=ttyS0 quiet"
VM_MARKER=LXGATE-VM-BOOTED
KERNEL_DIR="$IMAGE_DIR/kernel"          # vmlinuz, modules/*.ko, package
VERIFIED_STAMP="$IMAGE_DIR/verified"
LXC_PROBE_PATH="$TESTBED_DIR/embedded-lxc"  # a private lxcpath, probe only
LXC_PROBE=lxgate-probe

# Container rootfs applets (each a symlink to /bin/busybox).
APPLETS=(sh ash ls cat echo sleep hostname stty mkdir rm ps mount umount uname id env
    true false head tail wc grep sed dd seq yes printf test tr date kill cp mv ln
    chmod chown touch find xargs sort uniq cut awk vi ip ifconfig ping poweroff reboot
    halt init)
# Kernel modules for the initramfs (paths under the package's kernel/), in load
# order (none depends on another one outside this list): virtio-pci +
# virtio-blk for a disk, failover + virtio-net for a NIC on a managed bridge,
# button + evdev so the ACPI power button reaches acpid.
VM_MODULES=(drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
    drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci drivers/block/virtio_blk
    net/core/failover drivers/net/net_failover drivers/net/virtio_net
    drivers/acpi/button drivers/input/evdev)

T0=$(date +%s%N)
log() { printf '[testbed-embedded] %s\n' "$*"; }
die() { printf '[testbed-embedded] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts containers and VMs)"

mkdir -p "$IMAGE_DIR" "$ROOT/target"

# One run at a time (testbed.sh holds fd 9 on its own lock while it runs us).
exec 7>"$TESTBED_DIR/embedded.lock"
flock -w 120 7 || die "could not lock $TESTBED_DIR/embedded.lock"

# ------------------------------------------------------------------ cleanup ---
# One EXIT trap for everything this run may leave behind.
CLEAN_DIRS=()          # build / download / probe folders
PROBE_VM_PIDFILE=""    # a probe QEMU's pidfile
PROBE_CT=0             # a probe container may exist
cleanup() {
    local rc=$? pid d
    if [ -n "$PROBE_VM_PIDFILE" ]; then
        pid="$(cat "$PROBE_VM_PIDFILE" 2>/dev/null || true)"
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = qemu-system-x86 ]; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    if [ "$PROBE_CT" = 1 ]; then
        timeout 20 lxc-stop -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" -k >/dev/null 2>&1 || true
        timeout 20 lxc-destroy -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" >/dev/null 2>&1 || true
        rm -rf "${LXC_PROBE_PATH:?}/$LXC_PROBE"
    fi
    for d in "${CLEAN_DIRS[@]}"; do rm -rf "$d"; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- packages ---
# LXC, QEMU 10, dnsmasq-base, iproute2, root's subordinate ids and the QEMU
# user come from the script `make run` uses too; the image builds below also
# need busybox-static, cpio and xz-utils.
bash "$ROOT/scripts/host-setup.sh" busybox-static cpio xz-utils
# shellcheck source=SCRIPTDIR/lib/apt.sh
source "$ROOT/scripts/lib/apt.sh"   # pkg_version, apt_update (kernel download)
for tool in lxc-start lxc-attach lxc-stop lxc-destroy lxc-wait qemu-system-x86_64 qemu-img cpio xz python3; do
    command -v "$tool" >/dev/null || die "$tool not found after installing packages"
done
[ -x /bin/busybox ] || die "/bin/busybox missing after installing busybox-static"

busybox_version="$(pkg_version busybox-static)"
# The package's own timestamp: stable across rebuilds of the same version, used
# as every file's mtime and as creation_date so rebuilds are byte-identical.
created="$(stat -c %Y /bin/busybox)"

tar_det() { # out dir names... -> deterministic .tar.xz
    local out="$1" dir="$2"; shift 2
    tar --sort=name --mtime=@"$created" --owner=0 --group=0 --numeric-owner \
        --format=gnu -C "$dir" -cf - "$@" | xz -T1 -6 -c >"$out"
}

new_build_dir() { # name -> $build: a fresh folder, removed on exit
    build="$IMAGE_DIR/$1.$$"
    rm -rf "$build"
    mkdir -p "$build"
    CLEAN_DIRS+=("$build")
}

REBUILT=0

# --------------------------------------------------------- container image ---
# testbed-incus.sh's busybox image (incus-image/) lacks stty and poweroff and
# has no inittab, so this one is built here; same recipe, more applets, and an
# inittab: a respawning shell on /dev/console (lxc-console -t 0 / incus console),
# nothing on ttyN (where the container has no such tty, init would respawn a
# failing shell over and over).
ct_stamp="busybox-static=$busybox_version applets=${APPLETS[*]} format=1"
if [ ! -s "$IMAGE_META" ] || [ ! -s "$IMAGE_ROOTFS" ] \
    || [ "$(cat "$IMAGE_DIR/stamp-container" 2>/dev/null)" != "$ct_stamp" ]; then
    log "image: building container image (busybox-static $busybox_version)"
    new_build_dir build-ct
    r="$build/rootfs"
    mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,tmp,root,run,var,mnt} "$build/meta/templates"
    chmod 1777 "$r/tmp"
    chmod 700 "$r/root"
    cp /bin/busybox "$r/bin/busybox"
    chmod 755 "$r/bin/busybox"
    for a in "${APPLETS[@]}"; do ln -s busybox "$r/bin/$a"; done
    ln -s ../bin/busybox "$r/sbin/init"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    printf 'lxgate-busybox\n' >"$r/etc/hostname"
    cat >"$r/etc/inittab" <<'EOF'
# lxgate test image (scripts/testbed-embedded.sh)
console::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/umount -a -r
EOF
    printf 'export PATH=/bin:/sbin\nexport PS1='"'"'\\h:\\w# '"'"'\n' >"$r/etc/profile"
    cat >"$build/meta/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $created
properties:
  os: busybox
  release: "$busybox_version"
  architecture: x86_64
  description: busybox $busybox_version (lxgate test container image)
  variant: default
templates: {}
EOF
    find "$build" -exec touch -h -d @"$created" {} +
    tar_det "$build/meta.tar.xz" "$build/meta" metadata.yaml templates
    tar_det "$build/rootfs.tar.xz" "$r" .
    mv -f "$build/meta.tar.xz" "$IMAGE_META"
    mv -f "$build/rootfs.tar.xz" "$IMAGE_ROOTFS"
    printf '%s' "$ct_stamp" >"$IMAGE_DIR/stamp-container"
    REBUILT=1
fi

# ------------------------------------------------------------------ kernel ---
# Debian's kernel, the ABI that linux-image-amd64 currently depends on; fetched
# once (about 70 MB, a few seconds), only vmlinuz and the few modules kept.
kernel_complete() {
    [ -s "$KERNEL_DIR/vmlinuz" ] && [ -s "$KERNEL_DIR/package" ] || return 1
    local m
    for m in "${VM_MODULES[@]}"; do [ -s "$KERNEL_DIR/modules/${m##*/}.ko" ] || return 1; done
}
kernel_package() { # -> linux-image-<abi>-amd64
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}
# (Called in `if`, where set -e does not apply: each step checks itself.)
fetch_kernel() { # download dir -> 0 when downloaded + extracted into dir/kernel
    local dl="$1" pkg deb m f
    pkg="$(kernel_package)"
    [ -n "$pkg" ] || return 1
    log "kernel: apt-get download $pkg"
    rm -rf "${dl:?}"/* || return 1
    # Run as root in our folder (the _apt sandbox user cannot write it).
    (cd "$dl" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "$pkg" \
        </dev/null >"$dl/download.log" 2>&1 7>&- 8>&- 9>&-) \
        || { tail -n 5 "$dl/download.log" >&2; return 1; }
    deb="$(compgen -G "$dl/${pkg}_*.deb" | head -n 1)"
    [ -n "$deb" ] || return 1
    # dpkg-deb -x of the whole package writes ~400 MB of modules; take only
    # what is used from its data tarball.
    local want=('./boot/vmlinuz-*')
    for m in "${VM_MODULES[@]}"; do want+=("./lib/modules/*/kernel/$m.ko"); done
    mkdir -p "$dl/x" "$dl/kernel/modules" || return 1
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dl/x" --wildcards "${want[@]}" || return 1
    f="$(compgen -G "$dl/x/boot/vmlinuz-*" | head -n 1)"
    [ -n "$f" ] && mv "$f" "$dl/kernel/vmlinuz" || return 1
    for m in "${VM_MODULES[@]}"; do
        f="$(compgen -G "$dl/x/lib/modules/*/kernel/$m.ko" | head -n 1)"
        [ -n "$f" ] && mv "$f" "$dl/kernel/modules/${m##*/}.ko" || return 1
    done
    printf '%s=%s\n' "$pkg" "$(dpkg-deb -f "$deb" Version)" >"$dl/kernel/package" || return 1
}
if ! kernel_complete; then
    new_build_dir download
    dl="$build"
    if ! fetch_kernel "$dl"; then
        # No lists yet, or lists older than the mirror: refresh once and retry.
        [ "$APT_UPDATED" = 0 ] || die "could not download Debian's kernel package"
        apt_update
        fetch_kernel "$dl" || die "could not download Debian's kernel package"
    fi
    rm -rf "$KERNEL_DIR"
    mv "$dl/kernel" "$KERNEL_DIR"
    rm -rf "$dl"
    kernel_complete || die "the kernel package lacks vmlinuz or one of: ${VM_MODULES[*]}"
fi
kernel_pkg="$(cat "$KERNEL_DIR/package")"

# ---------------------------------------------------------------- VM image ---
# The initramfs: busybox init as PID 1 (after /init has mounted the pseudo file
# systems and loaded the modules), a login shell respawned on ttyS0 that prints
# the marker the first time, acpid turning the power button into `poweroff`.
read -r -d '' VM_INIT <<'EOF' || true
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
for m in $(cat /lib/modules/load-order); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
hostname lxgate-vm
exec /sbin/init
EOF
read -r -d '' VM_INITTAB <<'EOF' || true
# lxgate test VM (scripts/testbed-embedded.sh)
::sysinit:/etc/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
EOF
read -r -d '' VM_RCS <<'EOF' || true
#!/bin/sh
mkdir -p /var/log /run
acpid -l /dev/null -p /run/acpid.pid
EOF
# Sourced by each login shell on ttyS0, the marker only once per boot: when it
# shows, the shell that will read the next line is already running.
read -r -d '' VM_PROFILE <<EOF || true
export PATH=/bin:/sbin
export PS1='\\h:\\w# '
if [ ! -e /run/lxgate-booted ]; then
    : >/run/lxgate-booted
    echo $VM_MARKER
fi
EOF
# busybox acpid maps the power button's input event to ./PWRF/00000080
# (relative to /etc/acpi) and runs it.
read -r -d '' VM_POWER <<'EOF' || true
#!/bin/sh
exec poweroff
EOF
vm_stamp="busybox-static=$busybox_version kernel=$kernel_pkg modules=${VM_MODULES[*]} cmdline=$VM_CMDLINE format=1 files=$(
    printf '%s\n' "$VM_INIT" "$VM_INITTAB" "$VM_RCS" "$VM_PROFILE" "$VM_POWER" | sha256sum | cut -c1-16)"
if [ ! -s "$VM_META" ] || [ ! -s "$VM_KERNEL" ] || [ ! -s "$VM_INITRD" ] \
    || [ "$(cat "$IMAGE_DIR/stamp-vm" 2>/dev/null)" != "$vm_stamp" ]; then
    log "image: building VM image ($kernel_pkg, busybox-static $busybox_version)"
    new_build_dir build-vm
    r="$build/initrd"
    mkdir -p "$r"/{bin,sbin,etc/acpi/PWRF,proc,sys,dev,tmp,root,run,var,lib/modules}
    chmod 1777 "$r/tmp"
    chmod 700 "$r/root"
    cp /bin/busybox "$r/bin/busybox"
    chmod 755 "$r/bin/busybox"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
    done
    ln -s ../bin/busybox "$r/sbin/init"
    for m in "${VM_MODULES[@]}"; do
        cp "$KERNEL_DIR/modules/${m##*/}.ko" "$r/lib/modules/"
        printf '%s\n' "${m##*/}" >>"$r/lib/modules/load-order"
    done
    printf '%s\n' "$VM_INIT" >"$r/init"
    printf '%s\n' "$VM_INITTAB" >"$r/etc/inittab"
    printf '%s\n' "$VM_RCS" >"$r/etc/rcS"
    printf '%s\n' "$VM_PROFILE" >"$r/etc/profile"
    printf '%s\n' "$VM_POWER" >"$r/etc/acpi/PWRF/00000080"
    chmod 755 "$r/init" "$r/etc/rcS" "$r/etc/acpi/PWRF/00000080"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    find "$r" -exec touch -h -d @"$created" {} +
    (cd "$r" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$build/initrd.gz"

    kernel_version="${kernel_pkg%%=*}"; kernel_version="${kernel_version#linux-image-}"
    mkdir -p "$build/meta"
    cat >"$build/meta/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $created
properties:
  os: busybox
  release: "$busybox_version"
  architecture: x86_64
  description: busybox $busybox_version initramfs on Debian's $kernel_version kernel (lxgate test VM)
  variant: initramfs
  type: virtual-machine
boot:
  kernel: vm-vmlinuz
  initrd: vm-initrd.gz
  cmdline: "$VM_CMDLINE"
  console: ttyS0
  marker: $VM_MARKER
EOF
    touch -d @"$created" "$build/meta/metadata.yaml"
    tar_det "$build/vm-meta.tar.xz" "$build/meta" metadata.yaml
    cp "$KERNEL_DIR/vmlinuz" "$build/vm-vmlinuz"
    mv -f "$build/vm-vmlinuz" "$VM_KERNEL"
    mv -f "$build/initrd.gz" "$VM_INITRD"
    mv -f "$build/vm-meta.tar.xz" "$VM_META"
    printf '%s' "$vm_stamp" >"$IMAGE_DIR/stamp-vm"
    REBUILT=1
fi

# An empty qcow2 (checked by its magic, not by qemu-img: that is the warm path).
if [ "$(head -c 4 "$VM_DISK" 2>/dev/null | od -An -tx1 | tr -d ' \n')" != 514649fb ]; then
    log "image: creating $VM_DISK (qcow2, 64 MiB)"
    rm -f "$VM_DISK" "$VM_DISK.tmp"
    qemu-img create -q -f qcow2 "$VM_DISK.tmp" 64M 7>&- 8>&- 9>&- || die "qemu-img create failed"
    mv -f "$VM_DISK.tmp" "$VM_DISK"
fi

# ------------------------------------------------------------------ verify ---
# The VM: booted under TCG (KVM does not run guests on these machines, see
# TESTBED.md) with the qcow2 attached read-only. Through the serial socket:
# wait for the marker and the prompt, type two commands, read their answers;
# then QMP system_powerdown must make QEMU exit (ACPI power button -> acpid ->
# poweroff), else QMP quit; else the pidfile's process is killed.
verify_vm() {
    local dir="$IMAGE_DIR/probe-vm.$$" t0 out
    rm -rf "$dir"
    mkdir -p "$dir"
    CLEAN_DIRS+=("$dir")
    PROBE_VM_PIDFILE="$dir/qemu.pid"
    t0=$(date +%s%N)
    log "verify: booting the VM (TCG)"
    timeout 60 qemu-system-x86_64 -accel tcg -m 256 -nodefaults -display none \
        -kernel "$VM_KERNEL" -initrd "$VM_INITRD" -append "$VM_CMDLINE" \
        -drive "file=$VM_DISK,format=qcow2,if=virtio,readonly=on" \
        -serial "unix:$dir/serial.sock,server,nowait" \
        -qmp "unix:$dir/qmp.sock,server,nowait" \
        -daemonize -pidfile "$dir/qemu.pid" \
        </dev/null >"$dir/qemu.log" 2>&1 7>&- 8>&- 9>&- \
        || { cat "$dir/qemu.log" >&2; die "qemu-system-x86_64 did not start"; }
    if ! out="$(timeout 150 python3 - "$dir" "$VM_MARKER" "hi-$$" 2>&1 <<'EOF'
import json, os, socket, sys, time

d, marker, token = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
pid = int(open(os.path.join(d, "qemu.pid")).read().strip())
transcript = b""

def alive():
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False

def fail(msg):
    print(msg)
    print("serial transcript:", repr(transcript[-2000:]))
    sys.exit(1)

ser = socket.socket(socket.AF_UNIX)
ser.connect(os.path.join(d, "serial.sock"))
ser.settimeout(0.2)

def read_until(pattern, timeout, start=0):
    """Reads the serial console until `pattern` shows after offset `start`."""
    global transcript
    end = time.monotonic() + timeout
    while pattern not in transcript[start:]:
        if time.monotonic() > end or not alive():
            return False
        try:
            chunk = ser.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            return False
        transcript += chunk
    return True

t0 = time.monotonic()
if not read_until(marker, 60):
    fail("no %s on the serial console within 60 s" % marker.decode())
booted = time.monotonic() - t0
prompt = b"lxgate-vm:/# "
if not read_until(prompt, 10, transcript.index(marker)):
    fail("no shell prompt after the marker")

def run(cmd, answer):
    start = len(transcript)
    ser.sendall(cmd.encode() + b"\n")
    # The command line is echoed; its answer is a line of its own.
    if not read_until(b"\n" + answer.encode() + b"\r\n", 15, start):
        fail("typed %r, no answer line %r" % (cmd, answer))
    read_until(prompt, 5, start)

run("echo " + token, token)
run("ls /dev/vda", "/dev/vda")
print("serial: marker after %.1f s, shell answers" % booted)

qmp = socket.socket(socket.AF_UNIX)
qmp.connect(os.path.join(d, "qmp.sock"))
qmp.settimeout(10)
qf = qmp.makefile("rwb")
if b'"QMP"' not in qf.readline():
    fail("no QMP greeting")

def execute(cmd):
    qf.write(json.dumps({"execute": cmd}).encode() + b"\n")
    qf.flush()
    while True:  # events may come first
        line = qf.readline()
        if not line:
            return None
        msg = json.loads(line)
        if "return" in msg or "error" in msg:
            return msg

if "return" not in (execute("qmp_capabilities") or {}):
    fail("qmp_capabilities refused")
if "return" not in (execute("system_powerdown") or {}):
    fail("system_powerdown refused")
end = time.monotonic() + 30
while alive() and time.monotonic() < end:
    time.sleep(0.2)
if not alive():
    print("qmp: system_powerdown -> guest powered off, QEMU exited")
else:
    print("qmp: WARNING system_powerdown did not power the guest off in 30 s; quit")
    try:
        execute("quit")
    except (OSError, ValueError):
        pass  # QEMU closes the socket as it exits
    end = time.monotonic() + 10
    while alive() and time.monotonic() < end:
        time.sleep(0.2)
    if alive():
        fail("QEMU still running after QMP quit")
EOF
    )"; then
        printf '%s\n' "$out" >&2
        tail -n 20 "$dir/qemu.log" >&2 || true
        die "VM probe failed"
    fi
    while read -r line; do log "verify: $line"; done <<<"$out"
    # Normally gone already; the EXIT trap kills it otherwise.
    [ "$(cat "/proc/$(cat "$dir/qemu.pid" 2>/dev/null)/comm" 2>/dev/null)" != qemu-system-x86 ] \
        || die "the probe VM is still running"
    PROBE_VM_PIDFILE=""
    rm -rf "$dir"
    log "verify: VM ok ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"
}

# The container: LXC 5.0.2 with a private lxcpath and a config written by hand,
# as the embedded LXC driver writes it. What this kernel (cgroup v1 hybrid, no
# AppArmor) needs, as found here:
#   lxc.rootfs.path = dir:<rootfs>, lxc.uts.name, lxc.init.cmd = /sbin/init
#   lxc.mount.auto = proc:mixed sys:mixed
#       without it the container has no /proc and /sys (ps lists nothing,
#       mount says "no /proc/mounts"). `cgroup:mixed` adds nothing here (LXC
#       skips it for a container with CAP_SYS_ADMIN and a cgroup namespace);
#       `cgroup:mixed:force` mounts the v1 hierarchies under /sys/fs/cgroup.
#   lxc.pty.max = 16
#       gives the container its own devpts; without it `lxc-attach` from a
#       terminal runs the command on no tty inside (`tty` says "not a tty").
#   lxc.tty.max = 0 and `lxc-console -t 0`
#       the image runs its shell on /dev/console (LXC's console pty, which
#       exists without any lxc.console.* key); plain `lxc-console` (no -t)
#       with no ttys fails: "lxc_cmd_get_tty_fd: Bad file descriptor - Denied
#       access to tty".
#   lxc.console.logfile = <file>   records the console output (optional).
#   lxc.net.0.type = empty         a network namespace with only lo. Leaving
#       lxc.net.* out gives the same; /etc/lxc/default.conf's veth on lxcbr0
#       (what lxc-create copies) fails: 'Failed to attach "vethXXXX" to
#       bridge "lxcbr0", bridge interface doesn't exist'.
#   lxc.apparmor.profile = unconfined   explicit; the kernel has no AppArmor
#       and unset or `generated` start as well here.
#   Limits, cgroup v1 keys (checked with lxc-cgroup): lxc.cgroup.memory.limit_in_bytes,
#   lxc.cgroup.memory.memsw.limit_in_bytes, lxc.cgroup.cpuset.cpus,
#   lxc.cgroup.cpu.shares, lxc.cgroup.cpu.cfs_quota_us/cfs_period_us,
#   lxc.cgroup.pids.max, lxc.cgroup.blkio.bfq.weight,
#   lxc.cgroup.blkio.throttle.read_bps_device = 254:0 1048576 all apply.
#   Failures: lxc.cgroup.memory.max / lxc.cgroup.blkio.weight -> lxc-start
#   fails ('Failed to set "memory.max" to "64M"'); lxc.cgroup2.memory.max ->
#   starts, limit NOT applied (WARN "Ignoring cgroup2 limits on legacy cgroup
#   system"): the driver must use the v1 keys on such a host.
# lxc-stop (SIGPWR to busybox init: clean halt) takes about 2 s; freeze and
# unfreeze work without extra keys.
verify_lxc() {
    local ct="$LXC_PROBE_PATH/$LXC_PROBE" logf="$LXC_PROBE_PATH/$LXC_PROBE.log" t0 out k v
    t0=$(date +%s%N)
    mkdir -p "$LXC_PROBE_PATH"
    if [ -e "$ct" ]; then  # left by a killed run
        timeout 20 lxc-stop -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" -k >/dev/null 2>&1 || true
        timeout 20 lxc-destroy -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" >/dev/null 2>&1 || true
        rm -rf "$ct"
    fi
    PROBE_CT=1
    mkdir -p "$ct/rootfs"
    tar -xJf "$IMAGE_ROOTFS" -C "$ct/rootfs"
    cat >"$ct/config" <<EOF
lxc.uts.name = $LXC_PROBE
lxc.rootfs.path = dir:$ct/rootfs
lxc.init.cmd = /sbin/init
lxc.net.0.type = empty
lxc.apparmor.profile = unconfined
lxc.mount.auto = proc:mixed sys:mixed
lxc.pty.max = 16
lxc.tty.max = 0
lxc.console.logfile = $ct/console.log
lxc.cgroup.memory.limit_in_bytes = 64M
lxc.cgroup.cpuset.cpus = 0
lxc.cgroup.pids.max = 64
lxc.cgroup.cpu.shares = 512
EOF
    rm -f "$logf"
    log "verify: starting container $LXC_PROBE (lxcpath $LXC_PROBE_PATH)"
    timeout 30 lxc-start -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" -d -o "$logf" -l INFO \
        </dev/null >/dev/null 2>&1 7>&- 8>&- 9>&- \
        || { grep -E 'ERROR|WARN' "$logf" >&2 || true; die "lxc-start $LXC_PROBE failed (log: $logf)"; }
    timeout 15 lxc-wait -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" -s RUNNING -t 10 \
        || die "container $LXC_PROBE is not RUNNING (log: $logf)"
    out="$(timeout 20 lxc-attach -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" -- /bin/echo ok 2>&1 </dev/null || true)"
    [ "$out" = ok ] || die "lxc-attach $LXC_PROBE -- /bin/echo ok printed: $out"
    out="$(timeout 20 lxc-attach -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" -- /bin/cat /proc/1/comm 2>&1 </dev/null || true)"
    [ "$out" = init ] || die "no /proc with busybox init as PID 1 in $LXC_PROBE: $out"
    for k in memory.limit_in_bytes=67108864 cpuset.cpus=0 pids.max=64 cpu.shares=512; do
        v="$(timeout 10 lxc-cgroup -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" "${k%%=*}" 2>&1 || true)"
        [ "$v" = "${k#*=}" ] || die "cgroup ${k%%=*} of $LXC_PROBE is '$v', expected ${k#*=}"
    done
    # The console shell prints its prompt into the console log.
    for _ in $(seq 1 50); do
        grep -q "$LXC_PROBE:/# " "$ct/console.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "$LXC_PROBE:/# " "$ct/console.log" 2>/dev/null \
        || die "no shell prompt on the console of $LXC_PROBE ($ct/console.log)"
    timeout 30 lxc-stop -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" -t 15 >/dev/null 2>&1 \
        || die "lxc-stop $LXC_PROBE failed"
    timeout 20 lxc-destroy -P "$LXC_PROBE_PATH" -n "$LXC_PROBE" >/dev/null 2>&1 \
        || die "lxc-destroy $LXC_PROBE failed"
    [ ! -e "$ct" ] || die "lxc-destroy left $ct"
    PROBE_CT=0
    log "verify: container start / attach / limits / console / stop / destroy ok ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"
}

verify_key="$(cat "$IMAGE_DIR/stamp-container" "$IMAGE_DIR/stamp-vm") qemu=$(pkg_version qemu-system-x86) lxc=$(pkg_version lxc)"
if [ "$REBUILT" = 1 ] || [ "$(cat "$VERIFIED_STAMP" 2>/dev/null)" != "$verify_key" ]; then
    rm -f "$VERIFIED_STAMP"
    verify_lxc
    verify_vm
    printf '%s' "$verify_key" >"$VERIFIED_STAMP"
fi

# ------------------------------------------------------------ testbed.env ---
tmp="$ENV_FILE.tmp.$$"
{
    if [ -f "$ENV_FILE" ]; then
        grep -vE '^export (LXGATE_TEST_LXC|LXGATE_TEST_EMBEDDED_|LXGATE_TEST_VM_)' "$ENV_FILE" || true
    fi
    printf 'export %s=%q\n' \
        LXGATE_TEST_LXC 1 \
        LXGATE_TEST_EMBEDDED_IMAGE_META "$IMAGE_META" \
        LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS "$IMAGE_ROOTFS" \
        LXGATE_TEST_VM_META "$VM_META" \
        LXGATE_TEST_VM_KERNEL "$VM_KERNEL" \
        LXGATE_TEST_VM_INITRD "$VM_INITRD" \
        LXGATE_TEST_VM_DISK "$VM_DISK" \
        LXGATE_TEST_VM_MARKER "$VM_MARKER"
} >"$tmp"
mv -f "$tmp" "$ENV_FILE"

T1=$(date +%s%N)
log "ready: images in $IMAGE_DIR ($(( (T1 - T0) / 1000000 )) ms)"
