#!/usr/bin/env bash
# Opens the way to DATA_DIR for unprivileged containers. `make run` runs it
# after scripts/host-setup.sh (which installs setfacl and gives root its
# subordinate ids), in the directory lxgate then starts in. Usage:
#
#   scripts/data-dir-setup.sh
#
# LXC sets an unprivileged container up as its mapped root (host uid = the
# start of root's range in /etc/subuid, 1000000 on Debian), so every directory
# from / down to DATA_DIR/lxc must be searchable by that uid; lxgate answers
# 501 with the reason where one is not (lxc.rs, reachable()). A checkout under
# /root (mode 0700) is such a case. What this does:
#   * takes DATA_DIR as lxgate will: the environment's DATA_DIR if set, else
#     the first DATA_DIR= of ./.env, an empty value meaning the default
#     ./data; a relative one is taken against the current directory (lxgate
#     makes it absolute against its own, the same one under `make run`);
#   * creates it if missing;
#   * for each directory from / down to it that the mapped root (uid and gid
#     of root's first subordinate ranges, groups cleared) cannot search,
#     grants that uid search and nothing else with a POSIX ACL
#     (`setfacl -m u:<uid>:x`), saying so; modes are not touched.
#
# Containers with security.idmap.isolated=true run as other uids (further
# blocks of the range), which these ACLs do not cover: give each of those
# uids an ACL of its own on the same directories (setfacl -m u:<uid>:x).
# Idempotent: where everything is searchable it only checks (a few
# milliseconds) and changes nothing. Root only.
set -euo pipefail

log() { printf '[data-dir-setup] %s\n' "$*"; }
die() { printf '[data-dir-setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (sets ACLs on directories root owns)"
command -v setfacl >/dev/null || die "setfacl not found (Debian package acl; scripts/host-setup.sh installs it)"
command -v setpriv >/dev/null || die "setpriv not found (util-linux)"

# ------------------------------------------------------------------ DATA_DIR ---
# The first DATA_DIR= line of a dotenv file (dotenvy keeps the first one),
# unquoted; an unquoted value ends at a " #" comment.
dotenv_data_dir() {
    local line value
    line="$(grep -m1 -E '^[[:space:]]*(export[[:space:]]+)?DATA_DIR[[:space:]]*=' "$1" || true)"
    [ -n "$line" ] || return 1
    value="${line#*=}"
    value="${value#"${value%%[![:space:]]*}"}"
    case "$value" in
        \"*) value="${value#\"}"; value="${value%%\"*}" ;;
        \'*) value="${value#\'}"; value="${value%%\'*}" ;;
        *) value="${value%%[[:space:]]#*}"; value="${value%"${value##*[![:space:]]}"}" ;;
    esac
    printf '%s' "$value"
}

if [ -n "${DATA_DIR+set}" ]; then
    data_dir="$DATA_DIR" from="the environment"
elif [ -f .env ] && data_dir="$(dotenv_data_dir .env)"; then
    from="$PWD/.env"
else
    data_dir="" from="the default"
fi
[ -n "$data_dir" ] || data_dir=./data
case "$data_dir" in
    /*) ;;
    *) data_dir="$PWD/$data_dir" ;;
esac

mkdir -p -- "$data_dir" || die "cannot create DATA_DIR $data_dir ($from)"
real="$(realpath -e -- "$data_dir")" || die "cannot resolve DATA_DIR $data_dir"

# ------------------------------------------------------- the mapped root's ids ---
# Root's first range of at least 65536 ids starting at 65536 or above, as
# lxgate picks it (idmap.rs, parse_subid).
subid_base() {
    awk -F: '($1 == "root" || $1 == "0") && NF == 3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ \
        && $2 + 0 >= 65536 && $3 + 0 >= 65536 { print $2; exit }' "$1" 2>/dev/null
}
uid="$(subid_base /etc/subuid)"
gid="$(subid_base /etc/subgid)"
if [ -z "$uid" ] || [ -z "$gid" ]; then
    die "root has no subordinate id range in /etc/subuid and /etc/subgid (scripts/host-setup.sh adds one)"
fi

# ------------------------------------------------------------- the directories ---
# Top down: a directory is only reachable through its parents, each fixed first.
searchable() { setpriv --reuid="$uid" --regid="$gid" --clear-groups -- test -x "$1"; }
changed=()
dir=""
IFS=/ read -r -a parts <<<"${real#/}"
for part in "" "${parts[@]}"; do
    [ -z "$part" ] && [ -n "$dir" ] && continue
    dir="${dir%/}/$part"
    searchable "$dir" && continue
    setfacl -m "u:$uid:x" -- "$dir" \
        || die "could not add an ACL to $dir (no ACL support on its filesystem?): make it searchable by uid $uid (chmod o+x) or choose another DATA_DIR"
    searchable "$dir" || die "$dir is still not searchable by uid $uid after setfacl -m u:$uid:x"
    changed+=("$dir")
done
# A symlink on the way is searched through the directory holding it too.
searchable "$data_dir" \
    || die "uid $uid still cannot reach $data_dir (through a symlink in a closed directory?); make the path searchable by it"

if [ "${#changed[@]}" -gt 0 ]; then
    log "DATA_DIR $real ($from): the containers' root (uid $uid) could not search ${changed[*]}; granted it search with an ACL (setfacl -m u:$uid:x; no chmod: the group and others still get nothing)"
else
    log "DATA_DIR $real ($from): reachable by the containers' root (uid $uid)"
fi
