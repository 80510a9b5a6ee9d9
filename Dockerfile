# fleetload container image: build the shipped binary (`dist` profile: release + thin LTO),
# ship only it on a slim Debian.
#   docker build -t fleetload .
#   docker run --rm -p 8080:8080 --env-file fleetload.env fleetload            # API (serve)
#   docker run --rm --env-file fleetload.env -e FLEETLOAD_METRICS_LISTEN=0.0.0.0:9464 fleetload worker
# No HEALTHCHECK: orchestrators probe GET /healthz and /readyz over HTTP (docs/deployment.md).

# --- build ---
# The toolchain the workspace asks for (rust-version 1.94) or newer, on the runtime's Debian
# release, so the binary links against the same glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Manifests first: the dependency build is cached until Cargo.toml / Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY entity/Cargo.toml entity/Cargo.toml
COPY migration/Cargo.toml migration/Cargo.toml
RUN mkdir -p src entity/src migration/src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs entity/src/lib.rs migration/src/lib.rs \
    && for b in $(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v '^fleetload$'); do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo fetch --locked
# Then the sources (assets/ are embedded in the binary at build time).
COPY . .
RUN cargo build --profile dist --locked --bin fleetload \
    && install -D -m 0755 target/dist/fleetload /out/fleetload

# --- runtime ---
FROM debian:bookworm-slim
# CA roots for TLS to AWS, PostgreSQL (sslmode) and the webhook receiver.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/fleetload --create-home fleetload
COPY --from=build /out/fleetload /usr/local/bin/fleetload
USER 10001:10001
WORKDIR /var/lib/fleetload
ENV FLEETLOAD_LISTEN=0.0.0.0:8080 \
    FLEETLOAD_DATA_DIR=/var/lib/fleetload \
    FLEETLOAD_LOG_JSON=1
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/fleetload"]
CMD ["serve"]
