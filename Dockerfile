# syntax=docker/dockerfile:1
# Every binary of the toolkit in one small image that runs as a non-root user:
#   monolith, strangler-proxy, catalog-service, inventory-service, and strangler (the one CLI,
#   which also serves each part: `strangler proxy`, `strangler monolith`...).
#
#   docker build -t strangler .
#   docker run --rm strangler strangler --help

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out/bin /out/share/strangler \
    && cp target/release/monolith target/release/strangler-proxy target/release/strangler \
          target/release/catalog-service target/release/inventory-service /out/bin/ \
    && cp --parents -r extracted/catalog/sync.toml extracted/catalog/contracts \
          extracted/inventory/sync.toml extracted/inventory/contracts /out/share/

# glibc and libgcc, no shell, no package manager; uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/ /usr/local/bin/
# Each carve-out's sync mapping and contracts, where the binaries look for the toolkit's own
# files (/src/strangler/../extracted/..., from the tree they were built in).
COPY --from=build /out/share/ /src/
USER 65532:65532
WORKDIR /home/nonroot
# The proxy, the proxy's admin API, the monolith, the catalog and the inventory service.
EXPOSE 9000 9001 8080 8081 8082
CMD ["strangler", "--help"]
