# lxgate container image.
#
#   docker build -t lxgate:latest .
#   docker build -t lxgate:embedded --build-arg WITH_EMBEDDED=1 .
#
# The default image is lean: the gateway plus ca-certificates and curl (for the
# health check). That is all the `incus` backend needs (Incus over its unix socket
# or over HTTPS with mTLS). The `embedded` backend drives LXC and QEMU directly; it
# needs those tools in the image (build with WITH_EMBEDDED=1) and a privileged
# container with /dev/kvm (see docker-compose.yml), or run lxgate on the host.
#
# This file is checked statically by scripts/check-dockerfile.sh.

############################################################ build stage ###
FROM rust:1-bookworm AS build
WORKDIR /app

# Dependency-caching layer: build every dependency against a dummy crate, so that
# editing src/ does not rebuild the dependency graph. Bench/test/example targets
# are dropped from this throwaway manifest (their files are not copied here and
# cargo refuses a manifest that names missing target files).
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    awk '/^\[/ { skip = ($0 ~ /^\[\[(bench|test|example)\]\]/) } !skip' Cargo.toml > Cargo.deps.toml; \
    mv Cargo.deps.toml Cargo.toml; \
    mkdir -p src; \
    echo 'fn main() {}' > src/main.rs; \
    : > src/lib.rs; \
    cargo build --release --locked; \
    rm -rf src

# The real sources. sqlx migrations are embedded into the binary at compile time.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# Pages compiled into the binary (include_str!), e.g. the browser terminal.
COPY static ./static
# Forget the dummy crate's build so the real one is compiled (COPY keeps the
# sources' old mtimes, which cargo would otherwise take as "up to date").
RUN set -eux; \
    rm -rf target/release/.fingerprint/lxgate-* target/release/deps/lxgate-* \
           target/release/deps/liblxgate-* target/release/lxgate target/release/liblxgate.*; \
    cargo build --release --locked; \
    test -x target/release/lxgate; \
    target/release/lxgate --help > /dev/null

########################################################## runtime stage ###
FROM debian:bookworm-slim AS runtime

# 1 = also install LXC and QEMU for the embedded backend (bigger image; the
# container must then run privileged, as root, with /dev/kvm passed in for KVM).
ARG WITH_EMBEDDED=0

RUN set -eux; \
    apt-get update; \
    pkgs="ca-certificates curl"; \
    if [ "$WITH_EMBEDDED" = "1" ]; then pkgs="$pkgs lxc qemu-system-x86 qemu-utils iproute2 dnsmasq-base"; fi; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*

RUN set -eux; \
    groupadd --system --gid 10001 lxgate; \
    useradd --system --uid 10001 --gid lxgate --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin lxgate; \
    install -d -m 0750 -o lxgate -g lxgate /data

COPY --from=build /app/target/release/lxgate /usr/local/bin/lxgate

# WORKDIR / makes the relative defaults of .env.example (DATA_DIR=./data,
# DATABASE_URL=sqlite://data/lxgate.db) land in /data as well.
WORKDIR /
ENV DATA_DIR=/data \
    DATABASE_URL=sqlite:///data/lxgate.db \
    APP_HOST=0.0.0.0 \
    APP_PORT=8000 \
    LOG_FORMAT=json

VOLUME ["/data"]
USER lxgate
EXPOSE 8000

# Plain HTTP on the loopback; if TLS_CERT_PATH/TLS_KEY_PATH make lxgate serve
# HTTPS, override the health check (curl -k https://...).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${APP_PORT:-8000}/health" || exit 1

ENTRYPOINT ["/usr/local/bin/lxgate"]
CMD ["serve"]
