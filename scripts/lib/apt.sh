# shellcheck shell=bash disable=SC2154
# (log, die, BACKPORTS_SOURCES and apt_log come from the sourcing script.)
# Debian package helpers shared by host-setup.sh, testbed-incus.sh and testbed-embedded.sh
# (sourced, not run). The caller defines log/die, BACKPORTS_SOURCES and, for
# apt_install, apt_log.

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# Does any enabled apt source already carry bookworm-backports?
backports_configured() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        case "$f" in
            *.sources) grep -qE '^[[:space:]]*Suites:.*[[:space:]]bookworm-backports([[:space:]]|$)' "$f" && return 0 ;;
            *) grep -qE '^[[:space:]]*deb[[:space:]].*[[:space:]]bookworm-backports[[:space:]]' "$f" && return 0 ;;
        esac
    done
    return 1
}

# Writes the backports source from the stanza of debian.sources whose Suites
# list `bookworm`: same URI and Signed-By (no host name is kept in this project).
add_backports_source() {
    local src=/etc/apt/sources.list.d/debian.sources stanza uri signed
    [ -f "$src" ] || die "$src not found: cannot tell which Debian mirror this machine uses"
    # deb822: stanzas separated by blank lines, "Field: value" lines, # comments.
    stanza="$(awk -v RS= '{
        n = split($0, line, "\n")
        for (i = 1; i <= n; i++)
            if (tolower(line[i]) ~ /^suites:/) {
                m = split(line[i], w, /[[:space:]]+/)
                for (j = 2; j <= m; j++) if (w[j] == "bookworm") { print; exit }
            }
    }' "$src")"
    uri="$(printf '%s\n' "$stanza" | awk 'tolower($1) == "uris:" { print $2; exit }')"
    signed="$(printf '%s\n' "$stanza" | awk 'tolower($1) == "signed-by:" { print $2; exit }')"
    [ -n "$uri" ] || die "no URIs: line for suite bookworm in $src"
    log "apt: adding bookworm-backports ($BACKPORTS_SOURCES)"
    {
        echo "# added by lxgate scripts (host-setup.sh, testbed-incus.sh); URI as in debian.sources"
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: bookworm-backports"
        echo "Components: main"
        [ -z "$signed" ] || echo "Signed-By: $signed"
    } >"$BACKPORTS_SOURCES.tmp"
    mv -f "$BACKPORTS_SOURCES.tmp" "$BACKPORTS_SOURCES"
}

backports_lists_present() {
    compgen -G '/var/lib/apt/lists/*_dists_bookworm-backports_main_binary-*_Packages*' >/dev/null
}

# No descriptor of ours (the scripts' locks on 6-9, a CI runner's pipes) is
# passed on, in case a maintainer script starts a service that stays.
APT_UPDATED=0
apt_update() {
    log "apt: update"
    timeout 300 apt-get update -qq </dev/null 6>&- 7>&- 8>&- 9>&- \
        || log "warning: apt-get update reported errors (continuing)"
    APT_UPDATED=1
}
# Output to $apt_log, its tail shown on failure.
apt_install() {
    if ! timeout 900 apt-get install -y -qq "$@" </dev/null >"$apt_log" 2>&1 6>&- 7>&- 8>&- 9>&-; then
        tail -n 20 "$apt_log" >&2
        return 1
    fi
}
# Install; when that fails on lists that were not refreshed by this run (the
# mirror moved on), refresh once and retry.
apt_install_retry() { # what-for apt-get-args...
    local what="$1"; shift
    apt_install "$@" && return 0
    [ "$APT_UPDATED" = 0 ] || die "apt-get install failed: $what"
    apt_update
    apt_install "$@" || die "apt-get install failed: $what"
}
