# syntax=docker/dockerfile:1
#
# One image, every Polylogue binary: polylogue-edge-api, polylogue-auth, polylogue-thread,
# polylogue-inference-router, polylogue-summarizer, polylogue-ollama-loader, the `polylogue` admin
# CLI and `provider-sim` (a simulator of the LLM provider APIs, for tests and load tests; never
# routed to by default) in /usr/local/bin.
# The entrypoint is empty: docker-compose.yml and the Kubernetes manifests name the binary to run.
#
#   docker build -t polylogue:latest \
#     --build-arg POLYLOGUE_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" .
#
# BuildKit is required (default since Docker 23): cache mounts, COPY --chmod and the heredoc below.

# The builder must be the same Debian release as the runtime image: the default `rust:1.95` tag
# follows Debian's newest release, whose glibc is newer than bookworm's, and binaries linked
# there would not start on bookworm-slim.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

WORKDIR /src
# .dockerignore keeps target/, .tools/, .data/ and .git/ out of the context. The build needs
# deploy/catalog/models.toml from it: libs/catalog embeds that file as the default model catalog
# (include_str!), so .dockerignore must not exclude it.
COPY . .

# services/edge-api/build.rs bakes these into /api/version. Without .git in the context it
# cannot ask git, so pass the commit as a build argument. An empty POLYLOGUE_BUILD_TIME lets
# build.rs take the current time.
ARG POLYLOGUE_GIT_COMMIT=unknown
ARG POLYLOGUE_BUILD_TIME=

# rust-toolchain.toml pins the toolchain (and names clippy/rustfmt); rustup fetches whatever the
# base image lacks. Cache mounts keep the registry and target/ between builds, so the binaries
# are copied out of target/ inside the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    export POLYLOGUE_GIT_COMMIT="${POLYLOGUE_GIT_COMMIT:-unknown}"; \
    if [ -n "${POLYLOGUE_BUILD_TIME}" ]; then export POLYLOGUE_BUILD_TIME; else unset POLYLOGUE_BUILD_TIME; fi; \
    cargo build --release --locked --bins; \
    mkdir -p /out; \
    cp target/release/polylogue-edge-api target/release/polylogue-auth \
       target/release/polylogue-thread target/release/polylogue-inference-router \
       target/release/polylogue-summarizer target/release/polylogue-ollama-loader \
       target/release/polylogue target/release/provider-sim /out/

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# ca-certificates: TLS to NATS/ScyllaDB/providers when configured with tls:// or https:// URLs.
# A fixed numeric UID/GID so Kubernetes can verify runAsNonRoot.
# ca-certificates is left unpinned on purpose: it should follow Debian's security updates.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 polylogue; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/polylogue --no-create-home \
        --shell /usr/sbin/nologin polylogue; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/polylogue

COPY --from=builder /out/ /usr/local/bin/

# Health check helper for docker-compose (the image carries no curl or wget):
#   polylogue-healthz PORT [PATH]   exits 0 when http://127.0.0.1:PORT/PATH (default /healthz)
#                                   answers 200. Kubernetes uses its own httpGet probes instead.
COPY --chmod=0755 <<"EOF" /usr/local/bin/polylogue-healthz
#!/bin/bash
set -euo pipefail
port="${1:?usage: polylogue-healthz PORT [PATH]}"
path="${2:-/healthz}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "${path}" "${port}" >&3
IFS=' ' read -r -t 5 _version status _reason <&3
[[ "${status}" == "200" ]]
EOF

# Embedded engines (SQLite files, key files) go to data_dir. It is deliberately not set here
# with POLYLOGUE__DATA_DIR: an environment variable would silently override `data_dir` in a
# mounted config file. Compose and the k8s manifests set it to this directory.
WORKDIR /var/lib/polylogue
USER 10001:10001

# edge-api HTTP, edge-api ops, auth ops, thread ops, inference-router ops, ollama-loader ops,
# summarizer ops (the defaults bind 127.0.0.1; deployments set 0.0.0.0). provider-sim listens
# where SIM_LISTEN says.
EXPOSE 8080 9180 9181 9182 9183 9184 9185

LABEL org.opencontainers.image.title="polylogue" \
      org.opencontainers.image.description="Polylogue multi-LLM chat backend: edge-api, auth, thread, inference-router, summarizer, ollama-loader, the polylogue admin CLI and provider-sim" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT []
CMD ["polylogue", "--help"]
